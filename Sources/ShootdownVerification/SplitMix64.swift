/// SplitMix64 (Steele, Lea, Flood 2014): the oracle generator's seeded source; the same seed makes
/// the same operations (given the same kernel).
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    /// The state starts at the seed's image under the output mix: neighbouring seeds must not
    /// start on one stream a few steps apart (the state only ever advances by the golden-ratio
    /// increment, so seeds scaled by it would give shifted copies of one stream).
    public init(seed: UInt64) { state = Self.mix(seed ^ 0xD1B5_4A32_D192_ED03) }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return Self.mix(state)
    }

    private static func mix(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in `0..<bound` (bound > 0).
    mutating func below(_ bound: UInt64) -> UInt64 { next() % bound }

    /// Uniform in `range`.
    mutating func int(_ range: ClosedRange<Int>) -> Int {
        range.lowerBound + Int(below(UInt64(range.upperBound - range.lowerBound + 1)))
    }

    /// True with probability `percent` / 100.
    mutating func chance(_ percent: UInt64) -> Bool { below(100) < percent }

    mutating func pick<T>(_ values: [T]) -> T { values[Int(below(UInt64(values.count)))] }

    /// One of `choices`, with probability proportional to its weight.
    mutating func weighted<T>(_ choices: [(T, Int)]) -> T {
        let total = choices.reduce(0) { $0 + $1.1 }
        var roll = Int(below(UInt64(total)))
        for (value, weight) in choices {
            if roll < weight { return value }
            roll -= weight
        }
        return choices[choices.count - 1].0
    }
}
