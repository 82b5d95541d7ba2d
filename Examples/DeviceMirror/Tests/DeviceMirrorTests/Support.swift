import Foundation
import Shootdown
import Synchronization

let page = AddressSpace.pageSize

/// SplitMix64: a seeded generator, so a failing run can be replayed (`DEVMIRROR_SEED`).
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 &+ 0xD1B5_4A32_D192_ED03 }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
}

/// Seed and step count, from the environment when set.
func environmentNumber(_ name: String, default value: Int) -> Int {
    ProcessInfo.processInfo.environment[name].flatMap(Int.init) ?? value
}

/// A classic subscriber that records the ranges of invalidation starts.
final class RangeLog: MMUNotifier {
    let ranges = Mutex<[InvalidationRange]>([])
    var callbacks: NotifierCallbacks { .invalidateRangeStart }
    func invalidateRangeStart(_ range: InvalidationRange) -> Bool {
        ranges.withLock { $0.append(range) }
        return true
    }
    /// The ranges recorded since the last call.
    func drain() -> [InvalidationRange] { ranges.withLock { ranges in defer { ranges.removeAll() }; return ranges } }
}

/// Runs `body` on a new thread; `join()` waits for it.
final class TestThread: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    init(_ body: @escaping @Sendable () -> Void) {
        let thread = Thread { [done] in
            body()
            done.signal()
        }
        thread.start()
    }
    func join() { done.wait() }
}
