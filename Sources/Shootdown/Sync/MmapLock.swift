import CInterop
import Synchronization

/// The per-space reader-writer lock (the kernel's `mmap_lock`). Structural changes take it for
/// writing, the classic fault path for reading; the speculative path never takes it.
///
/// One 32-bit state word: bits 0–29 count readers, bit 30 says a writer waits, bit 31 says a writer
/// holds the lock. Writers are preferred (new readers wait while a writer waits), like rwsem.
/// Waiters spin briefly, then sleep on the state word's futex.
///
/// Not recursive, in either mode: a thread that holds it must not take it again (a second read
/// acquisition waits behind any queued writer). Debug builds record the holder per thread and trap
/// on re-entry (``LockContext/mmapLockAcquiring(_:write:)``).
@usableFromInline
final class MmapLock: @unchecked Sendable {
    @usableFromInline static let writerHeld: UInt32 = 1 << 31
    @usableFromInline static let writerWaiting: UInt32 = 1 << 30
    @usableFromInline static let readerMask: UInt32 = (1 << 30) - 1

    /// The state word, then, one ``cacheLineSize`` further, the sleepers word.
    @usableFromInline let words: UnsafeMutablePointer<Atomic<UInt32>>
    @usableFromInline static let sleepersOffset = cacheLineSize / MemoryLayout<UInt32>.stride
    @usableFromInline var state: UnsafeMutablePointer<Atomic<UInt32>> { words }
    @usableFromInline var sleepers: UnsafeMutablePointer<Atomic<UInt32>> { words + Self.sleepersOffset }

    /// Times a reader or writer had to wait (statistics).
    let contended = Atomic<UInt64>(0)

    init() { words = RawMemory.allocateAtomics(UInt32.self, count: 2 * Self.sleepersOffset, initial: 0) }
    deinit { RawMemory.deallocateAtomics(words, count: 2 * Self.sleepersOffset) }

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

    @inlinable @inline(__always)
    func writeLock() {
        LockContext.mightSleep("taking the mmap lock for writing")
        LockContext.mmapLockAcquiring(words, write: true)
        defer { LockContext.mmapLockAcquired(words, write: true) }
        if state.pointee.compareExchange(expected: 0, desired: Self.writerHeld, ordering: .acquiring).exchanged {
            return
        }
        writeLockSlow()
    }

    @inlinable @inline(__always)
    func writeUnlock() {
        checkInvariant(state.pointee.load(ordering: .relaxed) & Self.writerHeld != 0, "mmap write unlock without lock")
        LockContext.mmapLockReleased(words)
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
