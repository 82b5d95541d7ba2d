import Synchronization

/// A sleeping mutex (the classic three-state futex mutex) for the engine's slow-path critical
/// sections: registration, grace periods, the swap free list, the shared-memory page cache, mirror
/// tables. Uncontended lock and unlock are one atomic each; contended waiters spin briefly, then
/// sleep on a futex.
///
/// Why not `Synchronization.Mutex`: on Linux its contended path hands the lock over inside an
/// uninstrumented priority-inheritance futex, so ThreadSanitizer reports races on the data it
/// protects (reproduced with two threads and a counter). Every ordering here is an `Atomic`
/// operation TSan sees.
///
/// States of the word: 0 unlocked, 1 locked, 2 locked with (possible) waiters.
final class FutexMutex: @unchecked Sendable {
    private let word: UnsafeMutablePointer<Atomic<UInt32>>

    init() { word = RawMemory.allocateAtomics(UInt32.self, count: 1, initial: 0) }

    deinit { RawMemory.deallocateAtomics(word, count: 1) }

    /// Runs `body` with the lock held.
    func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        lock()
        defer { unlock() }
        return try body()
    }

    /// Takes the lock if it is free right now.
    func tryLock() -> Bool {
        // Acquiring: the previous holder's writes are visible.
        word.pointee.compareExchange(expected: 0, desired: 1, ordering: .acquiring).exchanged
    }

    func lock() {
        LockContext.mightSleep("taking a sleeping mutex")
        if word.pointee.compareExchange(expected: 0, desired: 1, ordering: .acquiring).exchanged { return }
        var spins = 0
        while true {
            // Spin briefly on a read before sleeping: most holds are short.
            if spins < 64, word.pointee.load(ordering: .relaxed) != 0 {
                spins += 1
                continue
            }
            // Acquiring: taking the lock (the exchange returned 0) must see the holder's writes.
            if word.pointee.exchange(2, ordering: .acquiring) == 0 { return }
            Futex.wait(word, expected: 2)
        }
    }

    func unlock() {
        // Releasing: the critical section's writes happen before the next holder's acquire.
        if word.pointee.exchange(0, ordering: .releasing) == 2 {
            Futex.wake(word, count: 1)
        }
    }
}

/// A ``FutexMutex`` with the value it protects (the shape of `Synchronization.Mutex`).
final class FutexLock<Value>: @unchecked Sendable {
    private let mutex = FutexMutex()
    private var value: Value

    init(_ value: Value) { self.value = value }

    /// Runs `body` with the lock held and the value borrowed mutably.
    func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        mutex.lock()
        defer { mutex.unlock() }
        return try body(&value)
    }

    /// Runs `body` if the lock is free right now; `nil` otherwise (never waits).
    func withLockIfAvailable<R>(_ body: (inout Value) -> R) -> R? {
        guard mutex.tryLock() else { return nil }
        defer { mutex.unlock() }
        return body(&value)
    }
}
