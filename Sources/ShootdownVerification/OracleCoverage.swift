/// What a run exercised: per syscall (per advice for madvise), how often it ran, how often Linux
/// succeeded, every errno Linux returned, and how often the engine disagreed.
public struct OracleCoverage: Sendable, Hashable, Codable {
    public struct Row: Sendable, Hashable, Codable {
        public var calls = 0
        public var successes = 0
        /// errno (or signal, for touches) → count, as Linux returned them.
        public var errors: [Int32: Int] = [:]
        public var mismatches = 0
    }

    public private(set) var rows: [String: Row] = [:]

    public init() {}

    mutating func record(_ step: OracleStep) {
        var row = rows[step.op.coverageKey, default: Row()]
        row.calls += 1
        switch step.linux {
        case .error(let errno): row.errors[errno, default: 0] += 1
        case .signal(let signal): row.errors[-signal, default: 0] += 1
        default: if step.linux.succeeded { row.successes += 1 }
        }
        if !step.differences.isEmpty { row.mismatches += 1 }
        rows[step.op.coverageKey] = row
    }

    public mutating func merge(_ other: OracleCoverage) {
        for (key, row) in other.rows {
            var mine = rows[key, default: Row()]
            mine.calls += row.calls
            mine.successes += row.successes
            mine.mismatches += row.mismatches
            for (errno, count) in row.errors { mine.errors[errno, default: 0] += count }
            rows[key] = mine
        }
    }

    public var totalCalls: Int { rows.values.reduce(0) { $0 + $1.calls } }
    public var totalMismatches: Int { rows.values.reduce(0) { $0 + $1.mismatches } }

    /// Name of an error key: errno names, negative keys are signals.
    public static func errorName(_ key: Int32) -> String {
        key < 0 ? LinuxABI.signalName(-key) : LinuxABI.errnoName(key)
    }

    /// The table, one row per key (syscalls in a fixed order, then advice, touches, process steps).
    public var table: String {
        let keys = rows.keys.sorted { Self.order($0) < Self.order($1) || (Self.order($0) == Self.order($1) && $0 < $1) }
        var lines = [pad("operation", 31) + pad("calls", 8) + pad("ok", 8) + pad("mismatch", 10) + "errors (Linux)"]
        for key in keys {
            let row = rows[key]!
            let errors = row.errors.sorted { $0.key < $1.key }.map { "\(Self.errorName($0.key)) \($0.value)" }
            lines.append(
                pad(key, 31) + pad("\(row.calls)", 8) + pad("\(row.successes)", 8) + pad("\(row.mismatches)", 10)
                    + errors.joined(separator: ", "))
        }
        lines.append(pad("total", 31) + pad("\(totalCalls)", 8) + pad("", 8) + pad("\(totalMismatches)", 10))
        return lines.joined(separator: "\n")
    }

    private static func order(_ key: String) -> Int {
        let prefixes = ["mmap", "munmap", "mprotect", "mremap", "madvise", "mlock", "mlock2", "munlock", "mlockall",
                        "munlockall", "brk", "msync", "mseal", "mincore", "read", "write", "fork", "switch"]
        let name = key.split(separator: "(").first.map(String.init) ?? key
        return prefixes.firstIndex(of: name) ?? prefixes.count
    }

    private func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
    }
}
