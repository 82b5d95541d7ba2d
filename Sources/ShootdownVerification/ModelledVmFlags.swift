import Shootdown

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
