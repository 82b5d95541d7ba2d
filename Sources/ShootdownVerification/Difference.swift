/// One way the engine's state after an operation differs from the kernel's.
public enum Difference: Hashable, Sendable, CustomStringConvertible {
    /// The operation's result or errno (or a touch's value or signal) differs.
    case outcome(linux: KernelOutcome, engine: KernelOutcome)
    /// The mappings (outside the child's initial ones) differ.
    case mappings(linux: [MappingView], engine: [MappingView])
    /// Page residency differs on `pages` pages; `address` is the first.
    case residency(address: UInt64, linux: Bool, engine: Bool, pages: Int)
    /// Whether a page-table entry maps a page of shared memory (`/proc/PID/pagemap`) differs on
    /// `pages` pages; `address` is the first. Residency of shared memory is the object's, so this
    /// is what shows the mappings a fault or a move made.
    case mapped(address: UInt64, linux: Bool, engine: Bool, pages: Int)
    /// A touched page that is resident and readable on both sides has different contents.
    case content(address: UInt64, linux: KernelOutcome, engine: KernelOutcome)
    /// The engine cannot express the operation.
    case inexpressible(String)

    /// A short name of the kind of difference (part of a divergence's signature).
    public var category: String {
        switch self {
        case .outcome: "outcome"
        case .mappings: "mappings"
        case .residency: "residency"
        case .mapped: "mapped"
        case .content: "content"
        case .inexpressible: "inexpressible"
        }
    }

    public var description: String {
        switch self {
        case .outcome(let linux, let engine): "result: Linux \(linux), engine \(engine)"
        case .mappings(let linux, let engine):
            "mappings differ:\n" + Self.mappingDiff(linux: linux, engine: engine)
        case .residency(let address, let linux, let engine, let pages):
            "residency differs on \(pages) page(s), first \(hex(address)): Linux \(linux ? "resident" : "not resident"), "
                + "engine \(engine ? "resident" : "not resident")"
        case .mapped(let address, let linux, let engine, let pages):
            "page-table entries differ on \(pages) page(s) of shared memory, first \(hex(address)): Linux "
                + "\(linux ? "maps it" : "does not map it"), engine \(engine ? "maps it" : "does not map it")"
        case .content(let address, let linux, let engine):
            "contents of \(hex(address)): Linux \(linux), engine \(engine)"
        case .inexpressible(let what): "the engine cannot express \(what)"
        }
    }

    /// Both lists, the differing lines marked.
    static func mappingDiff(linux: [MappingView], engine: [MappingView]) -> String {
        let linuxSet = Set(linux)
        let engineSet = Set(engine)
        var lines = ["    Linux:"]
        lines += linux.map { (engineSet.contains($0) ? "      " : "    * ") + $0.description }
        if linux.isEmpty { lines.append("      (none)") }
        lines.append("    engine:")
        lines += engine.map { (linuxSet.contains($0) ? "      " : "    * ") + $0.description }
        if engine.isEmpty { lines.append("      (none)") }
        return lines.joined(separator: "\n")
    }
}
