import Shootdown

/// One line of `/proc/PID/maps`: `start-end perms offset dev inode [path]`.
public struct MapsLine: Sendable, Hashable, CustomStringConvertible {
    public var start: UInt64
    public var end: UInt64
    /// `rwxp` / `r--s`.
    public var permissions: String
    public var offset: UInt64
    /// The path or pseudo-name (`[heap]`, `[stack]`); `nil` for anonymous memory.
    public var path: String?

    public init(start: UInt64, end: UInt64, permissions: String, offset: UInt64 = 0, path: String? = nil) {
        self.start = start
        self.end = end
        self.permissions = permissions
        self.offset = offset
        self.path = path
    }

    public var description: String {
        String(start, radix: 16) + "-" + String(end, radix: 16) + " " + permissions
            + (path.map { " " + String(offset, radix: 16) + " " + $0 } ?? "")
    }

    /// The lines of a `/proc/PID/maps` text.
    public static func parse(_ text: String) throws(MapsError) -> [MapsLine] {
        var result: [MapsLine] = []
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingWhitespace
            if line.isEmpty { continue }
            let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
            guard fields.count >= 5 else { throw .malformedLine(line: index + 1, reason: "fewer than 5 fields") }
            let bounds = fields[0].split(separator: "-")
            guard bounds.count == 2, let start = UInt64(bounds[0], radix: 16), let end = UInt64(bounds[1], radix: 16),
                start < end
            else { throw .malformedLine(line: index + 1, reason: "no start-end range") }
            let permissions = String(fields[1])
            guard permissions.count == 4 else { throw .malformedLine(line: index + 1, reason: "permissions are 4 letters") }
            guard let offset = UInt64(fields[2], radix: 16) else {
                throw .malformedLine(line: index + 1, reason: "the offset is not hexadecimal")
            }
            let path = fields.count > 5 ? fields[5].trimmingWhitespace : ""
            result.append(MapsLine(start: start, end: end, permissions: permissions, offset: offset, path: path.isEmpty ? nil : path))
        }
        return result
    }
}

/// Why a maps file could not be read.
public enum MapsError: Error, Hashable, Sendable, CustomStringConvertible {
    case malformedLine(line: Int, reason: String)

    public var description: String {
        switch self {
        case .malformedLine(let line, let reason): return "line \(line) is not a /proc/PID/maps line: \(reason)"
        }
    }
}

/// Compares a replayed space's mappings with the `/proc/PID/maps` Linux had at the same point.
///
/// The rule: only the address ranges the log defined are compared (``ReplayReport/SpaceResult/known``:
/// every range a replayed call mapped, unmapped, protected, moved or grew as the heap), because
/// the rest is what the log cannot know: mappings made before it began (the binary, the loader,
/// the stack, the vDSO, anything inherited) and the protection of mappings the replay had to
/// imply. Inside those ranges both sides are cut to the ranges and must agree piece for piece:
/// the same boundaries (so a merge one side made and the other did not is a difference), the
/// same permissions (`rwx` and `p`/`s`), and, where the engine maps a file, the same path and
/// offset. Boundaries at the edge of a known range are not compared (the mapping may go on
/// outside it), nor names of anonymous memory (`[heap]`).
public struct MapsComparison: Sendable {
    /// A piece of a mapping inside a known range.
    public struct Piece: Sendable, Hashable, CustomStringConvertible {
        public var start: UInt64
        public var end: UInt64
        public var permissions: String
        public var path: String?
        public var offset: UInt64

        public var description: String {
            String(start, radix: 16) + "-" + String(end, radix: 16) + " " + permissions
                + (path.map { " \(String(offset, radix: 16)) \($0)" } ?? "")
        }
    }

    /// The engine's pieces and Linux's.
    public var engine: [Piece]
    public var linux: [Piece]
    /// Bytes compared (the size of the known ranges).
    public var comparedBytes: UInt64
    /// Human-readable differences, in address order (empty: they agree).
    public var differences: [String]

    public var matches: Bool { differences.isEmpty }

    public init(engine mappings: [Mapping], linux lines: [MapsLine], known: AddressRanges) {
        comparedBytes = known.ranges.reduce(0) { $0 &+ ($1.upperBound - $1.lowerBound) }
        engine = Self.pieces(
            mappings.map { ($0.start, $0.end, $0.protection.description + ($0.vmFlags.contains(.mayShare) ? "s" : "p"), $0.path, $0.offset) },
            known: known)
        linux = Self.pieces(lines.map { ($0.start, $0.end, $0.permissions, $0.path, $0.offset) }, known: known)
        var differences: [String] = []
        var engineIndex = 0
        var linuxIndex = 0
        while engineIndex < engine.count || linuxIndex < linux.count {
            let mine = engineIndex < engine.count ? engine[engineIndex] : nil
            let theirs = linuxIndex < linux.count ? linux[linuxIndex] : nil
            if let mine, let theirs, mine.start == theirs.start {
                if mine.end != theirs.end || mine.permissions != theirs.permissions
                    || (mine.path != nil && (mine.path != theirs.path || mine.offset != theirs.offset))
                {
                    differences.append("engine \(mine), Linux \(theirs)")
                }
                engineIndex += 1
                linuxIndex += 1
            } else if let mine, theirs == nil || mine.start < theirs!.start {
                differences.append("engine \(mine), Linux has no mapping starting there")
                engineIndex += 1
            } else if let theirs {
                differences.append("Linux \(theirs), the engine has no mapping starting there")
                linuxIndex += 1
            }
        }
        self.differences = differences
    }

    /// The parts of `mappings` inside `known`, in address order.
    static func pieces(
        _ mappings: [(start: UInt64, end: UInt64, permissions: String, path: String?, offset: UInt64)], known: AddressRanges
    ) -> [Piece] {
        var result: [Piece] = []
        for mapping in mappings.sorted(by: { $0.start < $1.start }) where mapping.start < mapping.end {
            // Pseudo-names (`[heap]`, `[stack]`, `[anon:x]`) are anonymous memory.
            let path = mapping.path.flatMap { $0.hasPrefix("[") ? nil : $0 }
            for gapless in known.ranges where gapless.lowerBound < mapping.end && gapless.upperBound > mapping.start {
                let start = max(gapless.lowerBound, mapping.start)
                let end = min(gapless.upperBound, mapping.end)
                result.append(Piece(
                    start: start, end: end, permissions: mapping.permissions, path: path,
                    offset: path == nil ? 0 : mapping.offset &+ (start - mapping.start)))
            }
        }
        return result
    }
}
