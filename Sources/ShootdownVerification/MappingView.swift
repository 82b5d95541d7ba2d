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

/// The `VmFlags` codes the engine models, in one place: only these are compared. They are the
/// letters the engine can print at all (every flag bit it has, asked through
/// ``Mapping/smapsFlags``); anything else smaps prints (`sd`, `um`, `pf`, …) is outside its model.
public enum ModelledVmFlags {
    /// Compared codes.
    public static let letters: Set<VmFlag> = Set(codes(VMFlags(rawValue: ~0).smapsLetters))

    /// The codes the engine reports for `mapping`.
    static func flags(of mapping: Mapping) -> [VmFlag] { codes(mapping.smapsFlags) }

    /// Codes of a `VmFlags:` text (`"rd wr mr "`).
    static func codes(_ text: String) -> [VmFlag] {
        text.split(separator: " ").map { VmFlag(String($0)) }
    }
}
