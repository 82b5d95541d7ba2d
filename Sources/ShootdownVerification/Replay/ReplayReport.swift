import Shootdown

/// What a replay found: how many calls matched Linux's results, where they did not, what it did
/// not model, and the mappings each address space ended with.
public struct ReplayReport: Sendable {
    /// One call whose engine outcome differs from the one in the log.
    public struct Mismatch: Sendable, Hashable, CustomStringConvertible {
        /// The line of the call's result (``TraceEvent/line``).
        public var line: Int
        public var pid: Int?
        /// The call as the log has it.
        public var call: SystemCall
        /// Linux's outcome, as the log prints it (`0x7f12000`, `-1 ENOMEM`).
        public var linux: String
        /// The engine's outcome in the same form.
        public var engine: String

        public var description: String {
            "line \(line)\(pid.map { " (pid \($0))" } ?? ""): \(call.name)(\(call.arguments.joined(separator: ", "))): "
                + "Linux \(linux), engine \(engine)"
        }
    }

    /// The end state of one address space of the replay.
    public struct SpaceResult: Sendable {
        /// The pids (processes and threads) that ran in it, in order of arrival.
        public var pids: [Int?]
        /// Its mappings when its last process ended (or when the log ended).
        public var mappings: [Mapping]
        /// The address ranges the log's calls defined in it (mapped, unmapped, protected,
        /// moved, or grown as the heap): the part of the space the log knows. Mappings outside,
        /// which the process had before the log began (an exec's binary, loader, stack, vDSO),
        /// and parts the replay had to imply (see ``ReplayReport/impliedMappings``), are not
        /// known.
        public var known: AddressRanges
        /// Whether its last process ended in the log (`+++ exited`, `+++ killed`, an execve).
        public var ended: Bool
        /// Whether this is the space the caller supplied.
        public var isCallerSpace: Bool
    }

    /// Every system call in the log (`.call` events).
    public var calls = 0
    /// Memory calls replayed against an engine space and compared.
    public var replayed = 0
    /// Replayed calls whose engine outcome matched Linux's.
    public var matched = 0
    public var mismatches: [Mismatch] = []
    /// Replayed calls by name.
    public var replayedByName: [String: Int] = [:]
    /// Process calls that the replay modelled (`clone`, `clone3`, `fork`, `vfork`, `execve`,
    /// `exit`, `exit_group`) and calls with no effect on memory (`wait4`, `kill`, …), by name.
    public var processCallsByName: [String: Int] = [:]
    /// Calls the replay does not model, by name: counted, never silently skipped.
    public var unmodelled: [String: Int] = [:]
    /// Memory calls whose result the log does not have (cut off by the end of the log or of
    /// their process), by name: not replayed.
    public var unresolved: [String: Int] = [:]
    /// `brk(NULL)` calls that told the replay where a program break starts (not compared).
    public var breakQueriesLearned = 0
    /// Calls that found no mapping where Linux had one (mapped before the log began: at exec,
    /// or inherited): the replay mapped the missing range (anonymous, read-write) and replayed
    /// the call again.
    public var impliedMappings = 0
    /// Address spaces created: the caller's, fresh ones (exec), forks.
    public var addressSpaces = 0
    /// Time spent in engine operations, in nanoseconds.
    public var engineNanoseconds: UInt64 = 0
    /// Every address space, in order of creation.
    public var spaces: [SpaceResult] = []
    /// The first pid of the log (the traced program).
    public var rootPID: Int?
    /// For each pid, the index in ``spaces`` of the last space it ran in.
    public var lastSpaceOfPID: [Int: Int] = [:]

    /// Number of unmodelled calls.
    public var unmodelledCount: Int { unmodelled.values.reduce(0, +) }

    /// The last space `pid` ran in (`nil`: the root process).
    public func space(ofPID pid: Int? = nil) -> SpaceResult? {
        guard let pid = pid ?? rootPID else { return spaces.first }
        return lastSpaceOfPID[pid].map { spaces[$0] }
    }

    /// A few lines: the counts, the unmodelled and unresolved calls by name, the first
    /// mismatches.
    public func summary(mismatchLimit: Int = 10) -> String {
        var lines = [
            "\(calls) calls: \(replayed) memory calls replayed, \(matched) matched, \(mismatches.count) mismatched, "
                + "\(unmodelledCount) unmodelled"
        ]
        if !unmodelled.isEmpty {
            lines.append("unmodelled: " + unmodelled.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
        if !unresolved.isEmpty {
            lines.append("without a result in the log: " + unresolved.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
        lines += mismatches.prefix(mismatchLimit).map(\.description)
        return lines.joined(separator: "\n")
    }
}
