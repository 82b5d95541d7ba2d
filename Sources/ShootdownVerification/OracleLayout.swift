/// Where things are in a kernel child: the mappings it started with (never touched by an
/// operation), and the scratch window below them where operations play.
public struct OracleLayout: Sendable, Hashable {
    /// Top of the window: the bottom of the child's guard filler page. The kernel's top-down search
    /// places the next non-fixed mapping directly below it.
    public var windowTop: UInt64
    /// Size of the window generated addresses fall in.
    public var windowSize: UInt64
    /// `mm->start_brk`.
    public var programBreakStart: UInt64
    /// The child's mappings after its setup (loader, C library, executable, stack, fillers…).
    public var initialMappings: [SmapsEntry]

    public var windowBottom: UInt64 { windowTop - windowSize }

    public init(windowTop: UInt64, windowSize: UInt64, programBreakStart: UInt64, initialMappings: [SmapsEntry]) {
        self.windowTop = windowTop
        self.windowSize = windowSize
        self.programBreakStart = programBreakStart
        self.initialMappings = initialMappings
        initialRanges = Set(initialMappings.map { InitialRange(start: $0.start, end: $0.end) })
        // Adjacent initial mappings merged into spans (the child's top cluster is one span).
        var spans: [InitialRange] = []
        for mapping in initialMappings.sorted(by: { $0.start < $1.start }) {
            if let last = spans.last, last.end == mapping.start {
                spans[spans.count - 1].end = mapping.end
            } else {
                spans.append(InitialRange(start: mapping.start, end: mapping.end))
            }
        }
        initialSpans = spans
    }

    private struct InitialRange: Hashable, Sendable {
        var start: UInt64
        var end: UInt64
    }

    private let initialRanges: Set<InitialRange>
    private let initialSpans: [InitialRange]

    /// Whether `[start, end)` is exactly one of the initial mappings.
    public func isInitial(start: UInt64, end: UInt64) -> Bool {
        initialRanges.contains(InitialRange(start: start, end: end))
    }

    /// The one initial mapping inside `[start, end)`, if `[start, end)` is that mapping extended
    /// at either end by a merge (the heap growing into the executable's bss does that) and
    /// overlaps no other initial mapping.
    public func initialMapping(extendedTo start: UInt64, _ end: UInt64) -> SmapsEntry? {
        let overlapping = initialMappings.filter { $0.start < end && start < $0.end }
        guard overlapping.count == 1, let initial = overlapping.first, start <= initial.start, initial.end <= end
        else { return nil }
        return initial
    }

    /// Whether `[start, end)` overlaps an initial mapping (`end` may be 0 meaning 2^64).
    public func overlapsInitial(start: UInt64, end: UInt64) -> Bool {
        let end = end == 0 ? UInt64.max : end
        for span in initialSpans where span.start < end && start < span.end { return true }
        return false
    }
}
