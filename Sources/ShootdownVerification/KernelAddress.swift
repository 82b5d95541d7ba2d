/// An address argument of a ``KernelOp``, relative to a landmark of the oracle's layout so that a
/// reproducer replays the same way in any binary (the test runner and the CLI load different
/// libraries, so their windows sit at different absolute addresses).
public enum KernelAddress: Hashable, Sendable, Codable, CustomStringConvertible {
    /// `window top + offset` (offset usually negative): the scratch window lies directly below the
    /// child's guard page, where the kernel places non-fixed mappings top-down.
    case window(Int64)
    /// `start of the program break + offset` (`mm->start_brk`).
    case programBreak(Int64)
    /// An absolute address (low addresses, `TASK_SIZE`, overflowing values).
    case absolute(UInt64)

    /// Swift literal syntax, as reproducers print it.
    public var description: String {
        switch self {
        case .window(let offset): ".window(\(signedHex(offset)))"
        case .programBreak(let offset): ".programBreak(\(signedHex(offset)))"
        case .absolute(let value): ".absolute(\(hex(value)))"
        }
    }

    /// The absolute address in `layout`.
    public func resolved(in layout: OracleLayout) -> UInt64 {
        switch self {
        case .window(let offset): layout.windowTop &+ UInt64(bitPattern: offset)
        case .programBreak(let offset): layout.programBreakStart &+ UInt64(bitPattern: offset)
        case .absolute(let value): value
        }
    }

    /// The portable form of `address` in `layout`: window-relative inside the window (and just
    /// above it), break-relative around the heap, absolute elsewhere.
    public static func describing(_ address: UInt64, in layout: OracleLayout) -> KernelAddress {
        if address >= layout.windowBottom && address <= layout.windowTop + LinuxABI.hugePageSize {
            return .window(Int64(bitPattern: address &- layout.windowTop))
        }
        if address >= layout.programBreakStart &- (64 << 20) && address <= layout.programBreakStart &+ (1 << 30) {
            return .programBreak(Int64(bitPattern: address &- layout.programBreakStart))
        }
        return .absolute(address)
    }
}
