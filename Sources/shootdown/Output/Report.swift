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

    mutating func set(_ name: String, _ value: Double) {
        if let index = metrics.firstIndex(where: { $0.0 == name }) {
            metrics[index].1 = value
        } else {
            metrics.append((name, value))
        }
    }
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
        let interesting = run.counters.filter { $0.1 != 0 }
        if !interesting.isEmpty {
            lines.append("counters  " + interesting.map { "\($0.0)=\($0.1)" }.joined(separator: " "))
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
