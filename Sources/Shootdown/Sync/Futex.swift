import CInterop
import Synchronization

/// Futex wait and wake on a 32-bit atomic word (Linux `futex(2)`, private).
@usableFromInline
enum Futex {
    /// Sleeps while `word` holds `expected`; may return spuriously.
    @usableFromInline
    static func wait(_ word: UnsafeMutablePointer<Atomic<UInt32>>, expected: UInt32) {
        cinterop_futex_wait(UnsafeMutableRawPointer(word).assumingMemoryBound(to: UInt32.self), expected)
    }

    /// Wakes up to `count` waiters on `word`.
    @usableFromInline
    static func wake(_ word: UnsafeMutablePointer<Atomic<UInt32>>, count: Int32) {
        cinterop_futex_wake(UnsafeMutableRawPointer(word).assumingMemoryBound(to: UInt32.self), count)
    }

    /// Wakes every waiter on `word`.
    @usableFromInline
    static func wakeAll(_ word: UnsafeMutablePointer<Atomic<UInt32>>) {
        cinterop_futex_wake(UnsafeMutableRawPointer(word).assumingMemoryBound(to: UInt32.self), Int32.max)
    }
}

/// A wait queue (the kernel's `wait_queue_head_t` + `wait_event`): waiters sleep until a
/// condition they re-check becomes true; wakers bump an epoch and wake everyone.
@usableFromInline
final class WaitQueue: @unchecked Sendable {
    private let words: WaitQueueWords

    init() { words = WaitQueueWords(RawMemory.allocateAtomics(UInt32.self, count: cacheLineSize / 4, initial: 0)) }
    deinit { RawMemory.deallocateAtomics(words.words, count: cacheLineSize / 4) }

    /// Sleeps until `condition()` returns true. `condition` is evaluated before every sleep.
    func wait(until condition: () -> Bool) { words.wait(until: condition) }

    /// Wakes every waiter so it re-checks its condition.
    func wakeAll() { words.wakeAll() }
}

/// The protocol of ``WaitQueue`` over two words someone else owns (an object that embeds a wait
/// queue in its own allocation).
struct WaitQueueWords {
    /// [0]: epoch, [1]: number of sleepers (on separate words of one line).
    let words: UnsafeMutablePointer<Atomic<UInt32>>

    init(_ words: UnsafeMutablePointer<Atomic<UInt32>>) { self.words = words }

    /// Sleeps until `condition()` returns true. `condition` is evaluated before every sleep.
    func wait(until condition: () -> Bool) {
        LockContext.mightSleep("waiting on a wait queue")
        while true {
            // Acquiring epoch read before the condition: a wake-up after this read changes the
            // epoch, so the futex wait below cannot sleep through it.
            let epoch = words[0].load(ordering: .acquiring)
            if condition() { return }
            words[1].wrappingAdd(1, ordering: .sequentiallyConsistent)  // pairs with wakeAll's load
            if !condition() { Futex.wait(words, expected: epoch) }
            words[1].wrappingSubtract(1, ordering: .relaxed)
        }
    }

    /// Wakes every waiter so it re-checks its condition.
    func wakeAll() {
        // Sequentially consistent: the condition change made before this call and the sleeper
        // count read below must not reorder with a sleeper's increment-then-recheck.
        words[0].wrappingAdd(1, ordering: .sequentiallyConsistent)
        if words[1].load(ordering: .sequentiallyConsistent) != 0 { Futex.wakeAll(words) }
    }
}
