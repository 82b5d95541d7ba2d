import CInterop
import Synchronization

/// The per-space reader-writer lock (the kernel's `mmap_lock`). Structural changes take it for
/// writing, the classic fault path for reading; the speculative path never takes it.
///
/// One 32-bit state word: bits 0–29 count readers, bit 30 says a writer waits, bit 31 says a writer
/// holds the lock. Writers are preferred (new readers wait while a writer waits), like rwsem.
/// Waiters spin briefly, then sleep on the state word's futex.
///
/// It also carries what the per-VMA locks (VMA+Lock.swift) need from the space, as the kernel's
/// `mm_struct` does: `mm_lock_seq` (``sequence``), odd while a writer holds the lock, and the wait
/// queue a VMA writer sleeps on while readers drain (`mm->vma_writer_wait`). Spaces whose faults do
/// not use per-VMA locks keep the sequence too (two stores per write hold) and never wait on it.
///
/// Not recursive, in either mode: a thread that holds it must not take it again (a second read
/// acquisition waits behind any queued writer). Debug builds record the holder per thread and trap
/// on re-entry (``LockContext/mmapLockAcquiring(_:write:)``).
@usableFromInline
final class MmapLock: @unchecked Sendable {
    @usableFromInline static let writerHeld: UInt32 = 1 << 31
    @usableFromInline static let writerWaiting: UInt32 = 1 << 30
    @usableFromInline static let readerMask: UInt32 = (1 << 30) - 1

    /// Four lines, ``cacheLineSize`` apart: the state word, the sleepers word, `mm_lock_seq`
    /// (64-bit, ``sequenceWord``) and the VMA writers' wait queue (``vmaWriterWaitWords``).
    @usableFromInline let words: UnsafeMutablePointer<Atomic<UInt32>>
    @usableFromInline static let sleepersOffset = cacheLineSize / MemoryLayout<UInt32>.stride
    static let lines = 4
    @usableFromInline var state: UnsafeMutablePointer<Atomic<UInt32>> { words }
    @usableFromInline var sleepers: UnsafeMutablePointer<Atomic<UInt32>> { words + Self.sleepersOffset }

    /// `mm_lock_seq`, alone on its line: per-VMA-lock faults read it on every fault, and neither
    /// the state word (written by every mmap read lock) nor anything else may share it. Even when
    /// no writer holds the lock; made odd by ``writeLock()`` and even again by ``writeUnlock()``,
    /// which unlocks every VMA write-locked during the hold. 64 bits: it never wraps (a wrapped
    /// count could make a writer take a VMA it never locked for locked, and skip draining readers).
    @usableFromInline let sequenceWord: UnsafeMutablePointer<Atomic<UInt64>>
    /// Where a VMA writer sleeps until the last reader of the VMA leaves (`vma_writer_wait`): the
    /// words of a ``WaitQueue``.
    let vmaWriterWaitWords: UnsafeMutablePointer<Atomic<UInt32>>

    /// Times a reader or writer had to wait (statistics).
    let contended = Atomic<UInt64>(0)

    init() {
        words = RawMemory.allocateAtomics(UInt32.self, count: Self.lines * Self.sleepersOffset, initial: 0)
        // The third line holds one 64-bit word (zero, like the 32-bit words it replaces).
        sequenceWord = UnsafeMutableRawPointer(words + 2 * Self.sleepersOffset)
            .bindMemory(to: Atomic<UInt64>.self, capacity: cacheLineSize / 8)
        vmaWriterWaitWords = words + 3 * Self.sleepersOffset
    }

    deinit {
        UnsafeMutableRawPointer(sequenceWord).bindMemory(to: Atomic<UInt32>.self, capacity: Self.sleepersOffset)
        RawMemory.deallocateAtomics(words, count: Self.lines * Self.sleepersOffset)
    }

    // MARK: mm_lock_seq

    /// `mm_lock_seq`, loaded relaxed: odd while a writer holds the lock. A VMA whose `vm_lock_seq`
    /// equals it is write-locked.
    @inlinable @inline(__always)
    var sequence: UInt64 { sequenceWord.pointee.load(ordering: .relaxed) }

    /// `mm_lock_seq`, loaded with acquire (`raw_read_seqcount`): pairs with the releasing store of
    /// ``writeUnlock()``, so a reader that sees a hold ended sees what it changed.
    @inlinable @inline(__always)
    func sequenceAcquiring() -> UInt64 { sequenceWord.pointee.load(ordering: .acquiring) }

    /// `mm_lock_seqcount_begin`: makes the sequence odd. Writer only.
    @inlinable @inline(__always)
    func beginWriteSequence() {
        let word = sequenceWord
        let value = word.pointee.load(ordering: .relaxed)
        checkInvariant(value & 1 == 0, "mm_lock_seq odd at mmap write lock")
        // Releasing (free on x86, a plain store there): a reader that loads this odd value with
        // acquire and finds its VMA unlocked must also see every change of the previous hold; the
        // previous hold's releasing even store alone does not give that in the language's memory
        // model once this store overwrites it (found by an outside review; no hardware failure).
        word.pointee.store(value &+ 1, ordering: .releasing)
    }

    /// `vma_end_write_all` (`mm_lock_seqcount_end`): makes the sequence even, which write-unlocks
    /// every VMA write-locked in this hold. Writer only, before the lock itself is released.
    @inlinable @inline(__always)
    func endWriteSequence() {
        let word = sequenceWord
        let value = word.pointee.load(ordering: .relaxed)
        checkInvariant(value & 1 == 1, "mm_lock_seq even at mmap write unlock")
        // Releasing: a per-VMA-lock reader that sees the new value (acquiring re-check) sees every
        // change of the hold.
        word.pointee.store(value &+ 1, ordering: .releasing)
    }

    /// Sleeps until `drained()` holds (a VMA writer waiting for its readers).
    func waitForVMAReaders(until drained: () -> Bool) {
        WaitQueueWords(vmaWriterWaitWords).wait(until: drained)
    }

    /// Wakes the VMA writer (the last reader of the VMA it waits for just left).
    @usableFromInline
    func wakeVMAWriter() {
        WaitQueueWords(vmaWriterWaitWords).wakeAll()
    }

    // MARK: Readers

    @inlinable @inline(__always)
    func readLock() {
        LockContext.mightSleep("taking the mmap lock for reading")
        LockContext.mmapLockAcquiring(words, write: false)
        defer { LockContext.mmapLockAcquired(words, write: false) }
        let current = state.pointee.load(ordering: .relaxed)
        if current & (Self.writerHeld | Self.writerWaiting) == 0,
            state.pointee.compareExchange(expected: current, desired: current &+ 1, ordering: .acquiring).exchanged
        {
            return
        }
        readLockSlow()
    }

    @inlinable @inline(__always)
    func readUnlock() {
        LockContext.mmapLockReleased(words)
        // Sequentially consistent (a locked xadd on x86 either way): the rare wake-up path below
        // must not miss a writer that registered as a sleeper (see `sleep(expecting:)`).
        let new = state.pointee.wrappingSubtract(1, ordering: .sequentiallyConsistent).newValue
        checkInvariant(new & Self.readerMask != Self.readerMask, "mmap read unlock underflow")
        if new & Self.readerMask == 0 && new & Self.writerWaiting != 0 { wake() }
    }

    /// Tries to take the lock for reading without waiting (OOM reaper).
    func tryReadLock() -> Bool {
        var current = state.pointee.load(ordering: .relaxed)
        while current & (Self.writerHeld | Self.writerWaiting) == 0 {
            let result = state.pointee.compareExchange(
                expected: current, desired: current &+ 1, ordering: .acquiring)
            if result.exchanged {
                LockContext.mmapLockAcquired(words, write: false)
                return true
            }
            current = result.original
        }
        return false
    }

    @usableFromInline
    func readLockSlow() {
        contended.wrappingAdd(1, ordering: .relaxed)
        var spins = 0
        while true {
            let current = state.pointee.load(ordering: .relaxed)
            if current & (Self.writerHeld | Self.writerWaiting) == 0 {
                if state.pointee.compareExchange(expected: current, desired: current &+ 1, ordering: .acquiring)
                    .exchanged
                {
                    return
                }
                continue
            }
            if spins < 100 {
                spins += 1
                cinterop_cpu_relax()
                continue
            }
            sleep(expecting: current)
        }
    }

    // MARK: Writers

    /// Takes the lock for writing and makes `mm_lock_seq` odd.
    @inlinable @inline(__always)
    func writeLock() {
        LockContext.mightSleep("taking the mmap lock for writing")
        LockContext.mmapLockAcquiring(words, write: true)
        defer { LockContext.mmapLockAcquired(words, write: true) }
        if !state.pointee.compareExchange(expected: 0, desired: Self.writerHeld, ordering: .acquiring).exchanged {
            writeLockSlow()
        }
        beginWriteSequence()
    }

    /// Makes `mm_lock_seq` even (unlocking every VMA write-locked in this hold) and releases the lock.
    @inlinable @inline(__always)
    func writeUnlock() {
        checkInvariant(state.pointee.load(ordering: .relaxed) & Self.writerHeld != 0, "mmap write unlock without lock")
        LockContext.mmapLockReleased(words)
        endWriteSequence()
        // Sequentially consistent (xchg is locked on x86 either way): pairs with the sleeper's
        // increment-then-recheck in `sleep(expecting:)`, so a sleeping reader or writer is woken.
        state.pointee.store(0, ordering: .sequentiallyConsistent)
        wake()
    }

    @usableFromInline
    func writeLockSlow() {
        contended.wrappingAdd(1, ordering: .relaxed)
        var spins = 0
        while true {
            let current = state.pointee.load(ordering: .relaxed)
            if current & ~Self.writerWaiting == 0 {
                // Free (perhaps with other writers waiting): take it. Keep the waiting bit if other
                // sleepers may be writers; they re-assert it anyway, so clearing is safe.
                if state.pointee.compareExchange(expected: current, desired: Self.writerHeld, ordering: .acquiring)
                    .exchanged
                {
                    return
                }
                continue
            }
            if current & Self.writerWaiting == 0 {
                _ = state.pointee.compareExchange(
                    expected: current, desired: current | Self.writerWaiting, ordering: .relaxed)
                continue
            }
            if spins < 100 {
                spins += 1
                cinterop_cpu_relax()
                continue
            }
            sleep(expecting: current)
        }
    }

    // MARK: Sleeping

    private func sleep(expecting value: UInt32) {
        // Sequentially consistent: a waker that changes the state and then reads `sleepers` must
        // see this increment, or this thread must see the changed state in the futex check.
        sleepers.pointee.wrappingAdd(1, ordering: .sequentiallyConsistent)
        if state.pointee.load(ordering: .sequentiallyConsistent) == value {
            Futex.wait(state, expected: value)
        }
        sleepers.pointee.wrappingSubtract(1, ordering: .relaxed)
    }

    @usableFromInline
    func wake() {
        if sleepers.pointee.load(ordering: .sequentiallyConsistent) != 0 { Futex.wakeAll(state) }
    }

    // MARK: Scoped helpers

    @inlinable
    func withReadLock<R: ~Copyable, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        readLock()
        defer { readUnlock() }
        return try body()
    }

    @inlinable
    func withWriteLock<R: ~Copyable, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        writeLock()
        defer { writeUnlock() }
        return try body()
    }
}
