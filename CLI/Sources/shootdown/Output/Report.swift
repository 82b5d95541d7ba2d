import Foundation

/// One benchmark run: the shape every output format renders.
/// `{"workload": ..., "config": {...}, "metrics": {...}, "counters": {...}}`.
struct RunResult: Sendable {
    var workload: String
    var config: [(String, String)] = []
    var metrics: [(String, Double)] = []
    var counters: [(String, Int64)] = []
    /// Short notes shown under the table (not in JSON/CSV).
    var notes: [String] = []

    func metric(_ name: String) -> Double? { metrics.first { $0.0 == name }?.1 }
}

/// The metrics of a workload timed per operation, from one ns-per-op figure per repetition:
/// `ns_per_op` (their median) and `ops_per_sec`; `p50_ns` and `p99_ns` of `latency` (operations
/// timed individually) or, without it, over the repetitions; `min_ns_per_op` and `max_ns_per_op`;
/// then `extra`; then `repeats`.
func timedMetrics(
    nsPerOp samples: [Double], latency: LatencyRecorder? = nil, extra: [(String, Double)] = []
) -> [(String, Double)] {
    let median = Summary(samples).median
    var metrics: [(String, Double)] = [
        ("ns_per_op", median), ("ops_per_sec", median > 0 ? 1e9 / median : 0),
        ("p50_ns", latency?.percentile(50) ?? Summary.percentile(samples, 50)),
        ("p99_ns", latency?.percentile(99) ?? Summary.percentile(samples, 99)),
    ]
    metrics += rangeMetrics("ns_per_op", samples)
    metrics += extra
    metrics.append(("repeats", Double(samples.count)))
    return metrics
}

/// `min_NAME` and `max_NAME`: the best and the worst repetition of a workload's key metric (what
/// `--repeat` reports beside the median).
func rangeMetrics(_ name: String, _ samples: [Double]) -> [(String, Double)] {
    let summary = Summary(samples)
    return [("min_\(name)", summary.minimum), ("max_\(name)", summary.maximum)]
}

enum OutputFormat: String, CaseIterable {
    case table, json, csv
}

enum Render {
    static func json(_ run: RunResult) -> String {
        func object<V>(_ pairs: [(String, V)], _ value: (V) -> String) -> String {
            "{" + pairs.map { "\"\(escape($0.0))\": \(value($0.1))" }.joined(separator: ", ") + "}"
        }
        return "{\"workload\": \"\(escape(run.workload))\", \"config\": "
            + object(run.config) { "\"\(escape($0))\"" } + ", \"metrics\": "
            + object(run.metrics) { number($0) } + ", \"counters\": "
            + object(run.counters) { String($0) } + "}"
    }

    static func csvHeader(_ run: RunResult) -> String {
        (["workload"] + run.config.map(\.0) + run.metrics.map(\.0)).joined(separator: ",")
    }

    static func csvRow(_ run: RunResult) -> String {
        ([run.workload] + run.config.map { csvField($0.1) } + run.metrics.map { number($0.1) }).joined(separator: ",")
    }

    static func table(_ run: RunResult) -> String {
        var lines: [String] = []
        lines.append("workload  \(run.workload)")
        if !run.config.isEmpty {
            lines.append("config    " + run.config.map { "\($0.0)=\($0.1)" }.joined(separator: " "))
        }
        let width = max(run.metrics.map(\.0.count).max() ?? 0, 10)
        for (name, value) in run.metrics {
            lines.append("  " + name.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + human(value, name))
        }
        // One line per group: a comparison prefixes each value's counters with `VALUE.`.
        var groups: [(prefix: String, pairs: [String])] = []
        for (name, value) in run.counters where value != 0 {
            let parts = name.split(separator: ".", maxSplits: 1).map(String.init)
            let (prefix, counter) = parts.count == 2 ? (parts[0], parts[1]) : ("", name)
            if groups.last?.prefix != prefix { groups.append((prefix, [])) }
            groups[groups.count - 1].pairs.append("\(counter)=\(value)")
        }
        for group in groups {
            lines.append("counters  " + (group.prefix.isEmpty ? "" : "[\(group.prefix)] ") + group.pairs.joined(separator: " "))
        }
        for note in run.notes { lines.append("note      " + note) }
        return lines.joined(separator: "\n")
    }

    static func number(_ value: Double) -> String {
        if value.isNaN || value.isInfinite { return "null" }
        if value == value.rounded() && abs(value) < 1e15 { return String(Int64(value)) }
        return String(format: "%.4g", value)
    }

    static func human(_ value: Double, _ name: String) -> String {
        if name.hasSuffix("per_sec") {
            if value >= 1e9 { return String(format: "%.2f G/s", value / 1e9) }
            if value >= 1e6 { return String(format: "%.2f M/s", value / 1e6) }
            if value >= 1e3 { return String(format: "%.2f k/s", value / 1e3) }
            return String(format: "%.1f /s", value)
        }
        if name.hasSuffix("_ns") { return String(format: "%.2f ns", value) }
        if name.hasSuffix("_us") { return String(format: "%.2f µs", value) }
        if name.hasSuffix("_ms") { return String(format: "%.2f ms", value) }
        return String(format: value == value.rounded() ? "%.0f" : "%.3f", value)
    }

    private static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
    }

    private static func csvField(_ text: String) -> String {
        text.contains(",") || text.contains("\"") ? "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : text
    }
}
