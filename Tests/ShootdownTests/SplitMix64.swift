/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough for test generation.
///
/// The one seeded generator of the test suites (differential runs, randomised notifier tests, and,
/// wrapped by `ConcurrentRandom`, the stress threads): the same seed replays the same run.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in `0..<bound` (bound > 0; the tiny modulo bias is irrelevant here).
    mutating func below(_ bound: UInt64) -> UInt64 { next() % bound }

    mutating func int(_ range: ClosedRange<Int>) -> Int {
        range.lowerBound + Int(below(UInt64(range.upperBound - range.lowerBound + 1)))
    }

    mutating func chance(_ percent: UInt64) -> Bool { below(100) < percent }

    mutating func pick<T>(_ values: [T]) -> T { values[Int(below(UInt64(values.count)))] }
}
