import Shootdown

/// A mapping as the oracle compares it: range, `rwx` + `p`/`s`, and the `VmFlags` codes the engine
/// models (``ModelledVmFlags``), sorted.
public struct MappingView: Hashable, Sendable, CustomStringConvertible {
    public var start: UInt64
    public var end: UInt64
    public var permissions: String
    public var flags: [VmFlag]

    public init(start: UInt64, end: UInt64, permissions: String, flags: [VmFlag]) {
        self.start = start
        self.end = end
        self.permissions = permissions
        self.flags = flags
    }

    /// Linux's mapping, restricted to the modelled flags.
    init(_ entry: SmapsEntry) {
        self.init(
            start: entry.start, end: entry.end, permissions: entry.permissions,
            flags: entry.vmFlags.filter(ModelledVmFlags.letters.contains).sorted())
    }

    /// The engine's mapping.
    init(_ mapping: Mapping) {
        self.init(
            start: mapping.start, end: mapping.end,
            permissions: mapping.protection.description + (mapping.flags.contains(.shared) ? "s" : "p"),
            flags: ModelledVmFlags.flags(of: mapping).filter(ModelledVmFlags.letters.contains).sorted())
    }

    public var readable: Bool { permissions.hasPrefix("r") }

    public var description: String {
        hex(start) + "-" + hex(end) + " " + permissions + " " + flags.map(\.description).joined(separator: " ")
    }
}

/// The `VmFlags` codes the engine models, in one place: only these are compared. Everything else
/// smaps prints (`mr`, `mw`, `me`, `ac`, `sd`, …) is outside the engine's model until it says
/// otherwise.
public enum ModelledVmFlags {
    /// Compared codes.
    public static let letters: Set<VmFlag> = ["rd", "wr", "ex", "sh", "hg", "nh", "lo"]

    /// The codes the engine reports for `mapping` (derived from its protection and flags until the
    /// engine prints its own).
    static func flags(of mapping: Mapping) -> [VmFlag] {
        var flags: [VmFlag] = []
        if mapping.protection.contains(.read) { flags.append("rd") }
        if mapping.protection.contains(.write) { flags.append("wr") }
        if mapping.protection.contains(.exec) { flags.append("ex") }
        if mapping.flags.contains(.shared) { flags.append("sh") }
        if mapping.flags.contains(.hugePage) { flags.append("hg") }
        if mapping.flags.contains(.noHugePage) { flags.append("nh") }
        if mapping.flags.contains(.locked) { flags.append("lo") }
        return flags
    }
}
