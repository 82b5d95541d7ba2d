import CInterop
import Synchronization

/// A test-and-test-and-set spin lock over one 32-bit word that someone else owns (a page-table
/// block's descriptor, an address space's lock block). This is the kernel's split page-table lock
/// (`ptlock`): held only around short, non-sleeping critical sections.
///
/// The handle is non-owning: the memory it points into must outlive every use, which page-table
/// blocks guarantee by being freed only after an RCU grace period. Acquire costs one CAS; release
/// is a plain releasing store. Contended waiters spin, then yield, then sleep briefly.
@frozen @usableFromInline
struct SpinLockHandle {
    @usableFromInline let word: UnsafeMutablePointer<Atomic<UInt32>>

    @inlinable @inline(__always)
    init(_ word: UnsafeMutablePointer<Atomic<UInt32>>) { self.word = word }

    /// Acquires the lock.
    @inlinable @inline(__always)
    func lock() {
        LockContext.spinLockAcquired()
        // Acquiring: the critical section cannot move above the acquisition.
        if word.pointee.compareExchange(expected: 0, desired: 1, ordering: .acquiring).exchanged { return }
        lockSlow()
    }

    /// Tries to acquire the lock without waiting.
    @inlinable @inline(__always)
    func tryLock() -> Bool {
        let acquired = word.pointee.load(ordering: .relaxed) == 0
            && word.pointee.compareExchange(expected: 0, desired: 1, ordering: .acquiring).exchanged
        if acquired { LockContext.spinLockAcquired() }
        return acquired
    }

    /// Releases the lock.
    @inlinable @inline(__always)
    func unlock() {
        checkInvariant(word.pointee.load(ordering: .relaxed) == 1, "unlocking a spin lock that is not held")
        // Releasing: the critical section's writes are visible to the next holder.
        word.pointee.store(0, ordering: .releasing)
        LockContext.spinLockReleased()
    }

    /// Whether the lock is held by someone (diagnostics and invariant checks only).
    @inlinable
    var isLocked: Bool { word.pointee.load(ordering: .relaxed) != 0 }

    @usableFromInline
    func lockSlow() {
        var backoff = Backoff()
        while true {
            // Test before test-and-set: spin on a shared read, not on a bouncing write.
            while word.pointee.load(ordering: .relaxed) != 0 { backoff.wait() }
            if word.pointee.compareExchange(expected: 0, desired: 1, ordering: .acquiring).exchanged { return }
        }
    }

    /// Runs `body` with the lock held.
    @inlinable @inline(__always)
    func withLock<R: ~Copyable, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        lock()
        defer { unlock() }
        return try body()
    }
}

/// An owned spin lock on its own cache line.
@usableFromInline
final class SpinLock: @unchecked Sendable {
    @usableFromInline let handle: SpinLockHandle

    init() {
        handle = SpinLockHandle(RawMemory.allocateAtomics(UInt32.self, count: cacheLineSize / 4, initial: 0))
    }

    deinit { RawMemory.deallocateAtomics(handle.word, count: cacheLineSize / 4) }

    @inlinable @inline(__always)
    func withLock<R: ~Copyable, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        try handle.withLock(body)
    }
}
