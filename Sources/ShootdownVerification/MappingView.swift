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
            permissions: mapping.protection.description + (mapping.vmFlags.contains(.shared) ? "s" : "p"),
            flags: ModelledVmFlags.flags(of: mapping).filter(ModelledVmFlags.letters.contains).sorted())
    }

    public var readable: Bool { permissions.hasPrefix("r") }

    public var description: String {
        hex(start) + "-" + hex(end) + " " + permissions + " " + flags.map(\.description).joined(separator: " ")
    }
}
