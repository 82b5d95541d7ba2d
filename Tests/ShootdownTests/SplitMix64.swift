/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough for test generation.
///
/// The one seeded generator of the test suites (differential runs, randomised notifier tests, and
/// one per stress thread, made with ``init(spreading:)``): the same seed replays the same run.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    /// A generator whose stream is unrelated to those of neighbouring seeds (threads seeded 0, 1,
    /// 2 … must not draw shifted copies of one stream).
    init(spreading seed: UInt64) { self.init(seed: seed &* 0x9E37_79B9_7F4A_7C15 &+ 0xD1B5_4A32_D192_ED03) }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in `0..<bound` (bound > 0; the tiny modulo bias is irrelevant here).
    mutating func below(_ bound: UInt64) -> UInt64 { next() % bound }

    /// Uniform in `0..<bound`, as an `Int` (an index into `bound` elements).
    mutating func index(below bound: Int) -> Int { Int(below(UInt64(bound))) }

    /// Uniform in `range`.
    mutating func int(_ range: ClosedRange<Int>) -> Int {
        range.lowerBound + Int(below(UInt64(range.upperBound - range.lowerBound + 1)))
    }

    /// True with probability `percent` / 100.
    mutating func chance(_ percent: UInt64) -> Bool { below(100) < percent }

    mutating func pick<T>(_ values: [T]) -> T { values[index(below: values.count)] }
}
