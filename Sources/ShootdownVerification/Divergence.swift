/// A difference between the kernel and the engine found by a run, with everything needed to
/// reproduce it.
public struct Divergence: Sendable {
    /// The seed of the run (nil for a replayed list).
    public var seed: UInt64?
    /// The operations of the session, up to and including the one that diverged.
    public var operations: [KernelOp]
    /// The step that diverged.
    public var step: OracleStep
    /// The shortest operation list found that still diverges the same way (see ``signature``);
    /// equal to ``operations`` if shrinking was skipped.
    public var reproducer: [KernelOp]
    /// How the reproducer's last step diverged.
    public var reproducerStep: OracleStep

    /// The kind of divergence: the operation (with the advice), what differed, and for a result
    /// difference what each side returned. Shrinking keeps it, and known divergences are matched
    /// by it.
    public var signature: String { Self.signature(step) }

    static func signature(_ step: OracleStep) -> String {
        guard let first = step.differences.first else { return "\(step.op.coverageKey) none" }
        var text = "\(step.op.coverageKey) \(first.category)"
        switch first {
        case .mappings, .residency, .mapped, .content: text += " after " + kind(step.linux)
        default: break
        }
        if case .outcome(let linux, let engine) = first {
            text += kind(linux) == kind(engine)
                ? ": both \(kind(linux)), different values" : ": Linux \(kind(linux)), engine \(kind(engine))"
        } else if case .inexpressible(let what) = first {
            text += ": " + what
        } else if case .mappings(let linux, let engine) = first {
            text += ": " + mappingDifference(linux: linux, engine: engine)
        } else if case .residency(_, let linux, _, _) = first {
            text += linux ? ": Linux resident, engine not" : ": engine resident, Linux not"
        } else if case .mapped(_, let linux, _, _) = first {
            text += linux ? ": Linux maps, engine not" : ": engine maps, Linux not"
        }
        return text
    }

    /// What kind of mapping difference: flags or permissions of a mapping with the same range on
    /// both sides (flags named), else the layout (bounds, splits, merges, placement).
    static func mappingDifference(linux: [MappingView], engine: [MappingView]) -> String {
        let engineByRange = Dictionary(engine.map { ("\($0.start)-\($0.end)", $0) }, uniquingKeysWith: { a, _ in a })
        for mapping in linux {
            guard let twin = engineByRange["\(mapping.start)-\(mapping.end)"] else { continue }
            if twin.permissions != mapping.permissions { return "permissions" }
            if twin.flags != mapping.flags {
                let onlyLinux = Set(mapping.flags).subtracting(twin.flags).map(\.description).sorted()
                let onlyEngine = Set(twin.flags).subtracting(mapping.flags).map(\.description).sorted()
                return "flags"
                    + (onlyLinux.isEmpty ? "" : " Linux +" + onlyLinux.joined(separator: " +"))
                    + (onlyEngine.isEmpty ? "" : " engine +" + onlyEngine.joined(separator: " +"))
            }
        }
        return "layout"
    }

    private static func kind(_ outcome: KernelOutcome) -> String {
        switch outcome {
        case .value: "success"
        case .error(let errno): LinuxABI.errnoName(errno)
        case .residency: "vector"
        case .loaded: "loaded"
        case .stored: "stored"
        case .signal(let signal): LinuxABI.signalName(signal)
        case .forked: "forked"
        case .switched: "switched"
        case .skipped: "skipped"
        case .inexpressible: "inexpressible"
        }
    }

    /// A report: the seed and step, both sides' outcome and mappings, and the reproducer as Swift
    /// literals.
    public var report: String {
        var lines: [String] = []
        lines.append("divergence [\(signature)]")
        if let seed { lines.append("  seed \(seed), step \(operations.count - 1) of its session") }
        lines.append("  operation: \(step.op)  (process \(step.process))")
        lines.append("  Linux:  \(step.linux)")
        lines.append("  engine: \(step.engine)")
        for difference in step.differences { lines.append("  " + difference.description) }
        if !step.differences.contains(where: { $0.category == "mappings" }) {
            lines.append("  mappings (both):")
            lines += step.linuxMappings.map { "      " + $0.description }
        }
        lines.append("  reproducer (\(reproducer.count) of \(operations.count) operations):")
        lines.append(reproducer.swiftLiteral.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n"))
        if reproducerStep.op != step.op || reproducerStep.differences != step.differences {
            lines.append("  the reproducer's last step: Linux \(reproducerStep.linux), engine \(reproducerStep.engine)")
            for difference in reproducerStep.differences { lines.append("    " + difference.description) }
        }
        return lines.joined(separator: "\n")
    }
}
