import Histogram

/// Latency percentiles from an HDR histogram of individually timed operations. The cost of
/// reading the clock itself (measured once) is subtracted from every sample.
struct LatencyRecorder {
    private(set) var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
    let timerOverhead: UInt64

    init() { timerOverhead = LatencyRecorder.measureTimerOverhead() }

    mutating func record(_ nanoseconds: UInt64) {
        _ = histogram.record(nanoseconds > timerOverhead ? nanoseconds - timerOverhead : 0)
    }

    var count: UInt64 { histogram.totalCount }
    func percentile(_ value: Double) -> Double { Double(histogram.valueAtPercentile(value)) }

    static func measureTimerOverhead() -> UInt64 {
        var samples: [UInt64] = []
        samples.reserveCapacity(1000)
        for _ in 0..<1000 {
            let start = nowNanoseconds()
            let end = nowNanoseconds()
            samples.append(end - start)
        }
        samples.sort()
        return samples[samples.count / 2]
    }
}

/// Median, minimum and maximum of repeated measurements.
struct Summary {
    var median: Double
    var minimum: Double
    var maximum: Double

    init(_ values: [Double]) {
        let sorted = values.sorted()
        median = sorted.isEmpty ? 0 : (sorted.count % 2 == 1
            ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2)
        minimum = sorted.first ?? 0
        maximum = sorted.last ?? 0
    }

    /// The `percent` percentile of `values` (nearest rank).
    static func percentile(_ values: [Double], _ percent: Double) -> Double {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted()
        let rank = Int((percent / 100 * Double(sorted.count)).rounded(.up)) - 1
        return sorted[min(max(rank, 0), sorted.count - 1)]
    }
}
