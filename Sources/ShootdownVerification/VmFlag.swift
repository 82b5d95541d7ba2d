/// One `VmFlags:` code of smaps (`rd`, `wr`, `hg`, `lo`, …): two letters, stored as two bytes.
public struct VmFlag: Hashable, Comparable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    public let rawValue: UInt16

    public init(_ first: UInt8, _ second: UInt8) { rawValue = UInt16(first) << 8 | UInt16(second) }

    /// `code` must be two ASCII letters.
    public init(_ code: String) {
        let bytes = Array(code.utf8)
        precondition(bytes.count == 2, "a VmFlags code has two letters: \(code)")
        self.init(bytes[0], bytes[1])
    }

    public init(stringLiteral value: String) { self.init(value) }

    public var description: String {
        String(decoding: [UInt8(rawValue >> 8), UInt8(rawValue & 0xFF)], as: UTF8.self)
    }

    public static func < (lhs: VmFlag, rhs: VmFlag) -> Bool { lhs.rawValue < rhs.rawValue }
}
