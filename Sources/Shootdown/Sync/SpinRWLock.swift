import CInterop
import Synchronization

/// A reader-preferring reader-writer spin lock: readers never sleep and never wait for a writer
/// that is only waiting, so a reader may re-enter (take the read side again while holding it), even
/// from under a split lock; writers wait, with back-off, until no reader holds it.
///
/// Used for the notifier list in ``NotifierListProtection/rwlock`` mode, where a callback running
/// under the read side may call back into the list (aging queries) while an unregistration waits:
/// a writer-preferring lock deadlocks there. Writers can starve while readers overlap without a
/// gap; that is the price of re-entrant readers, acceptable for a comparison knob.
///
/// One 32-bit word: bit 31 says a writer holds the lock, bits 0–30 count readers.
final class SpinRWLock: @unchecked Sendable {
    private static let writerHeld: UInt32 = 1 << 31

    private let word: UnsafeMutablePointer<Atomic<UInt32>>
    /// Writers waiting for readers to leave (diagnostics and tests).
    private let waiting = Atomic<Int>(0)

    init() { word = RawMemory.allocateAtomics(UInt32.self, count: cacheLineSize / 4, initial: 0) }
    deinit { RawMemory.deallocateAtomics(word, count: cacheLineSize / 4) }

    /// Takes the read side; spins only while a writer holds the lock.
    func readLock() {
        var current = word.pointee.load(ordering: .relaxed)
        while true {
            if current & Self.writerHeld == 0 {
                // Acquiring: the writer's publication is visible to this reader.
                let result = word.pointee.compareExchange(
                    expected: current, desired: current &+ 1, ordering: .acquiring)
                if result.exchanged { return }
                current = result.original
            } else {
                cinterop_cpu_relax()
                current = word.pointee.load(ordering: .relaxed)
            }
        }
    }

    func readUnlock() {
        // Releasing: the reader's loads happen before a writer that sees the count drop.
        word.pointee.subtract(1, ordering: .releasing)
    }

    /// Takes the write side once no reader holds the lock. Must not be called holding the read
    /// side.
    func writeLock() {
        LockContext.mightSleep("waiting for readers of a reader-writer lock")
        if word.pointee.compareExchange(expected: 0, desired: Self.writerHeld, ordering: .acquiring).exchanged {
            return
        }
        waiting.add(1, ordering: .relaxed)
        var backoff = Backoff()
        // Acquiring: every reader's section happens before the writer's.
        while !word.pointee.compareExchange(expected: 0, desired: Self.writerHeld, ordering: .acquiring).exchanged {
            backoff.wait()
        }
        waiting.subtract(1, ordering: .relaxed)
    }

    func writeUnlock() {
        // Releasing: the writer's changes are visible to the next reader.
        word.pointee.store(0, ordering: .releasing)
    }

    /// Whether a writer is waiting for readers to leave.
    var writerIsWaiting: Bool { waiting.load(ordering: .relaxed) != 0 }
}
