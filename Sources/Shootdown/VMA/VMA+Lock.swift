import CInterop
import Synchronization

/// How ``VMA/startRead(_:)`` ended.
@usableFromInline
enum VMAReadLock: UInt8 {
    /// The caller holds the read lock: pair with ``VMA/endRead(_:)``.
    case locked
    /// A writer holds (or is taking) the VMA's write lock: give up (`VMA_LOCK_ABORT`).
    case writeLocked
    /// The VMA was removed from the index: look the address up again (`VMA_LOCK_MISS`).
    case detached
}

/// The per-VMA lock (the kernel's `vm_lock_seq` + `vm_refcnt`, Linux 6.4+): a reader-writer lock
/// whose readers are page faults and whose writers hold the mmap write lock.
///
/// State: `vmRefcount` is 0 for a detached (removed) VMA, 1 for an attached one, plus one per
/// reader, plus ``VMA/lockOffset`` while a writer waits for readers to drain. `vmLockSequence`
/// equals the space's `mm_lock_seq` (``MmapLock/sequence``) while the VMA is write-locked. Since
/// `mm_lock_seq` changes (becomes even) when the mmap write lock is released, releasing the mmap
/// write lock unlocks every VMA write-locked during that hold at once, with no per-VMA store (the
/// kernel's bulk unlock, `vma_end_write_all`).
///
/// What each side writes to shared memory: a reader one RMW of `vmRefcount` to lock and one to
/// unlock; a writer one store of `vmLockSequence` and two RMWs of `vmRefcount` per VMA per hold.
///
/// Ordering (the argument for "no reader runs on a VMA that a writer changes"):
/// - A reader's increment and a writer's addition of the offset are RMWs of one word, so they are
///   totally ordered: a writer that added the offset first makes the reader fail (the limit); a
///   reader that incremented first is waited for (the writer reads the count with acquire, the
///   reader drops it with release, so the reader's accesses happen before the writer's changes).
/// - A reader that increments after the writer removed the offset synchronises with that
///   releasing subtraction (acquiring increment), so it sees `vmLockSequence == mm_lock_seq` in
///   its re-check and backs off.
/// - A reader that sees `mm_lock_seq` made even by the write unlock (acquiring load in the re-check)
///   sees every change made during that hold (the unlock stores it with release).
extension VMA {
    /// `VMA_LOCK_OFFSET`: what a writer adds to the reference count while it drains readers.
    @usableFromInline static let lockOffset: UInt32 = 1 << 30
    /// `VMA_REF_LIMIT`: readers fail to increment a count at or above this (a writer is draining).
    @usableFromInline static let referenceLimit: UInt32 = lockOffset - 1
    /// The initial `vm_lock_seq`: equal to no `mm_lock_seq` (those count up from 0 and are 64-bit).
    @usableFromInline static let neverLocked: UInt64 = .max

    // MARK: Readers (no mmap lock; inside an RCU read section until locked)

    /// `vma_start_read`: takes the VMA's read lock if no writer holds it and it is attached.
    ///
    /// - Precondition: inside an RCU read section (the VMA may have been removed since it was
    ///   found; the section keeps its memory alive).
    @inlinable @inline(__always)
    func startRead(_ mmapLock: MmapLock) -> VMAReadLock {
        // Lock-free pre-check: write-locked in the current mmap write hold. (Relaxed: a stale value
        // here only sends the reader on to the count and the re-check, which are ordered.)
        if vmLockSequence.load(ordering: .relaxed) == mmapLock.sequence { return .writeLocked }
        return startReadAfterPreCheck(mmapLock)
    }

    /// The part of ``startRead(_:)`` after the lock-free pre-check: the counted increment and the
    /// re-check. Separate so a test can let a writer lock the VMA between the two.
    @inlinable @inline(__always)
    func startReadAfterPreCheck(_ mmapLock: MmapLock) -> VMAReadLock {
        // Increment unless detached (0) or a writer is draining readers (at or above the limit).
        // Acquiring on success: pairs with the releasing subtraction of a writer that just
        // write-locked the VMA (`startWrite`), so the re-check below sees its `vmLockSequence`.
        // Acquiring when it fails on 0: pairs with the releasing detach, which follows the index
        // commit that unlinked the VMA, so the retried lookup cannot find it again.
        var current = vmRefcount.load(ordering: .acquiring)
        while true {
            if current == 0 { return .detached }
            if current >= Self.referenceLimit { return .writeLocked }
            let (exchanged, original) = vmRefcount.compareExchange(
                expected: current, desired: current &+ 1, successOrdering: .acquiring, failureOrdering: .acquiring)
            if exchanged { break }
            current = original
        }
        // Re-check with the count held (no writer can change `vmLockSequence` now). Acquiring:
        // pairs with the releasing store of the write unlock, so a reader that sees the hold ended
        // sees everything the hold changed.
        if mmapLock.sequenceAcquiring() == vmLockSequence.load(ordering: .relaxed) {
            endRead(mmapLock)
            return .writeLocked
        }
        return .locked
    }

    /// `vma_end_read`: drops the read lock and wakes a writer waiting for the last reader.
    @inlinable @inline(__always)
    func endRead(_ mmapLock: MmapLock) {
        // Releasing: everything done under the read lock happens before a writer that sees the
        // count drop (it loads it with acquire).
        let remaining = vmRefcount.wrappingSubtract(1, ordering: .releasing).newValue
        checkInvariant(remaining != UInt32.max, "VMA read unlock underflow")
        // `is_vma_writer_only`: a writer waits and no other reader is left.
        if remaining & Self.lockOffset != 0 && remaining <= Self.lockOffset &+ 1 {
            mmapLock.wakeVMAWriter()
        }
    }

    // MARK: Writers (mmap write lock held)

    /// Whether the VMA is write-locked in the current mmap write hold.
    @inlinable
    func isWriteLocked(_ mmapLock: MmapLock) -> Bool {
        vmLockSequence.load(ordering: .relaxed) == mmapLock.sequence
    }

    /// `vma_start_write`: write-locks the VMA until the mmap write lock is released: waits for
    /// every reader to leave, and makes later readers fail. Free when already write-locked in this
    /// hold.
    ///
    /// - Precondition: the mmap write lock (`mm_lock_seq` odd); the VMA attached.
    @inline(never)  // keeps the waiting out of its callers (and their reference counting)
    func startWrite(_ mmapLock: MmapLock) {
        let sequence = mmapLock.sequence
        checkInvariant(sequence & 1 == 1, "vma_start_write without the mmap write lock")
        if vmLockSequence.load(ordering: .relaxed) == sequence { return }
        let entered = enterLocked(mmapLock, detaching: false)
        checkInvariant(entered, "write-locking a detached VMA")
        // Relaxed: published by the releasing subtraction below (readers acquire the count).
        vmLockSequence.store(sequence, ordering: .relaxed)
        exitLocked()
    }

    /// `vma_mark_detached`: drops the index's reference; if readers hold transient references (they
    /// found the VMA before it was write-locked and are about to fail their re-check), waits for
    /// them, so the count ends at 0 and later readers retry their lookup. Idempotent.
    ///
    /// - Precondition: the mmap write lock; the VMA write-locked and already unlinked from the
    ///   published index.
    func markDetached(_ mmapLock: MmapLock) {
        checkInvariant(isWriteLocked(mmapLock), "detaching a VMA that is not write-locked")
        if vmRefcount.load(ordering: .relaxed) == 0 { return }
        // Releasing: a reader that sees 0 (acquiring) also sees the index commit that unlinked it.
        if vmRefcount.wrappingSubtract(1, ordering: .releasing).newValue == 0 { return }
        if enterLocked(mmapLock, detaching: true) { exitLocked() }
        checkInvariant(vmRefcount.load(ordering: .relaxed) == 0, "detached VMA still referenced")
    }

    /// `__vma_enter_locked`: adds the writer offset (unless the count is 0) and waits until only
    /// the writer (and, unless detaching, the index's reference) remain. Returns `false` if the
    /// count was 0.
    private func enterLocked(_ mmapLock: MmapLock, detaching: Bool) -> Bool {
        var current = vmRefcount.load(ordering: .relaxed)
        while true {
            if current == 0 { return false }
            // Relaxed: the RMW orders this against readers' increments (same word); the waits below
            // acquire what drained readers released.
            let (exchanged, original) = vmRefcount.compareExchange(
                expected: current, desired: current &+ Self.lockOffset, ordering: .relaxed)
            if exchanged { break }
            current = original
        }
        let target = Self.lockOffset &+ (detaching ? 0 : 1)
        if vmRefcount.load(ordering: .acquiring) == target { return true }
        // A reader holds it: spin briefly (faults hold the lock for well under a microsecond), then
        // sleep until the last reader wakes us (`rcuwait_wait_event`).
        for _ in 0..<128 {
            cinterop_cpu_relax()
            if vmRefcount.load(ordering: .acquiring) == target { return true }
        }
        mmapLock.waitForVMAReaders { vmRefcount.load(ordering: .acquiring) == target }
        return true
    }

    /// `__vma_exit_locked`: removes the writer offset.
    private func exitLocked() {
        // Releasing: `vmLockSequence` (and, for a detach, the index commit) is visible to a reader
        // whose increment or failed increment reads the result.
        vmRefcount.wrappingSubtract(Self.lockOffset, ordering: .releasing)
    }

    /// The raw reference count (`vm_refcnt`), for tests and invariant checks.
    var referenceCount: UInt32 { vmRefcount.load(ordering: .relaxed) }
}
