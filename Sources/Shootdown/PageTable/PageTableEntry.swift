import Synchronization
/// One 8-byte page-table entry, x86-64 style.
///
/// A present leaf entry maps a frame; a non-present entry is empty (all zero), a PROT_NONE entry
/// (the frame stays mapped but inaccessible, like `_PAGE_PROTNONE`), or a swap entry naming the
/// slot that holds an evicted page. A PMD entry is either a pointer to a PTE table or, with the
/// ``huge`` bit, a 2 MiB mapping of a compound frame. Upper-level entries hold the address of the
/// next table block.
@frozen
public struct PageTableEntry: Hashable, Sendable, CustomStringConvertible {
    /// The 64 bits of the entry.
    public let rawValue: UInt64

    /// The entry with bits `rawValue`.
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

    // MARK: Bits

    /// The entry maps a frame (or a table) and may be used.
    public static let present: UInt64 = 1 << 0
    /// Writes are allowed.
    public static let writable: UInt64 = 1 << 1
    /// User-accessible (set on every entry of this model).
    public static let user: UInt64 = 1 << 2
    /// The page was accessed since the bit was last cleared (aging).
    public static let accessed: UInt64 = 1 << 5
    /// The page was written since it was mapped or cleaned.
    public static let dirty: UInt64 = 1 << 6
    /// A PMD entry mapping 2 MiB directly.
    public static let huge: UInt64 = 1 << 7
    /// Not present, frame still mapped, access denied (mprotect PROT_NONE).
    public static let protNone: UInt64 = 1 << 8
    /// Not present, the number is a swap slot.
    public static let swap: UInt64 = 1 << 9
    /// With ``swap`` and no slot: a guard-region marker (`MADV_GUARD_INSTALL`'s PTE marker). Any
    /// access faults with SIGSEGV; zaps by madvise keep it, munmap and `MADV_GUARD_REMOVE` clear
    /// it, fork and mremap carry it.
    public static let guardMarker: UInt64 = 1 << 10
    /// Written since soft-dirty tracking was last re-armed (``AddressSpace/clearSoftDirty(address:length:)``).
    public static let softDirty: UInt64 = 1 << 11
    /// Bits 12–51: frame number, table address, or swap slot.
    public static let numberMask: UInt64 = ((1 << 40) - 1) << 12

    /// The guard-region marker entry.
    public static let guardEntry = PageTableEntry(rawValue: swap | guardMarker)

    /// The empty entry.
    public static let none = PageTableEntry(rawValue: 0)

    // MARK: Construction

    /// A present leaf entry mapping `frame`.
    @inlinable
    static func leaf(frame: UInt64, writable: Bool, dirty: Bool, softDirty: Bool, huge: Bool = false) -> PageTableEntry {
        var raw = frame << 12 | present | user | accessed
        if writable { raw |= Self.writable }
        if dirty { raw |= Self.dirty }
        if softDirty { raw |= Self.softDirty }
        if huge { raw |= Self.huge }
        return PageTableEntry(rawValue: raw)
    }

    /// An entry pointing to the table block at `address`.
    @inlinable
    static func table(at address: UInt64) -> PageTableEntry {
        PageTableEntry(rawValue: address | present | writable | user)
    }

    /// A swap entry for `slot`.
    @inlinable
    static func swapEntry(slot: UInt32, softDirty: Bool) -> PageTableEntry {
        PageTableEntry(rawValue: UInt64(slot) << 12 | swap | (softDirty ? Self.softDirty : 0))
    }

    // MARK: Queries

    /// Whether the entry is empty.
    @inlinable public var isNone: Bool { rawValue == 0 }
    /// Whether the ``present`` bit is set.
    @inlinable public var isPresent: Bool { rawValue & Self.present != 0 }
    /// Whether the ``writable`` bit is set.
    @inlinable public var isWritable: Bool { rawValue & Self.writable != 0 }
    /// Whether the ``accessed`` bit is set.
    @inlinable public var isAccessed: Bool { rawValue & Self.accessed != 0 }
    /// Whether the ``dirty`` bit is set.
    @inlinable public var isDirty: Bool { rawValue & Self.dirty != 0 }
    /// Whether the ``softDirty`` bit is set.
    @inlinable public var isSoftDirty: Bool { rawValue & Self.softDirty != 0 }
    /// Whether the entry maps 2 MiB (``huge``).
    @inlinable public var isHuge: Bool { rawValue & Self.huge != 0 }
    /// Whether the entry is a PROT_NONE entry: frame mapped, access denied.
    @inlinable public var isProtNone: Bool { rawValue & (Self.present | Self.protNone) == Self.protNone }
    /// Whether the entry is a swap entry (``swapSlot``).
    @inlinable public var isSwap: Bool { rawValue & (Self.present | Self.swap | Self.guardMarker) == Self.swap }
    /// A guard-region marker.
    @inlinable public var isGuard: Bool {
        rawValue & (Self.present | Self.swap | Self.guardMarker) == Self.swap | Self.guardMarker
    }

    /// The number field: a frame, a table address >> 12, or a swap slot.
    @inlinable var number: UInt64 { (rawValue & Self.numberMask) >> 12 }

    /// The mapped frame of a present or PROT_NONE leaf entry.
    @inlinable
    public var frame: UInt64? { isPresent || isProtNone ? number : nil }

    /// The swap slot of a swap entry.
    @inlinable
    public var swapSlot: UInt32? { isSwap ? UInt32(truncatingIfNeeded: number) : nil }

    /// The table address of an upper-level (or non-huge PMD) entry.
    @inlinable var tableAddress: UInt64 { rawValue & Self.numberMask }

    @inlinable
    func with(_ bits: UInt64) -> PageTableEntry { PageTableEntry(rawValue: rawValue | bits) }

    @inlinable
    func without(_ bits: UInt64) -> PageTableEntry { PageTableEntry(rawValue: rawValue & ~bits) }

    /// The same entry (bits, protection) pointing at frame `number` instead.
    @inlinable
    func with(number: UInt64) -> PageTableEntry {
        PageTableEntry(rawValue: number << 12 | (rawValue & ~Self.numberMask))
    }

    public var description: String {
        if isNone { return "none" }
        if isGuard { return "guard" }
        if isSwap { return "swap(slot: \(number)\(isSoftDirty ? ", soft-dirty" : ""))" }
        var parts: [String] = []
        parts.append(isProtNone ? "protnone" : "present")
        parts.append("frame: \(number)")
        if isWritable { parts.append("writable") }
        if isAccessed { parts.append("young") }
        if isDirty { parts.append("dirty") }
        if isSoftDirty { parts.append("soft-dirty") }
        if isHuge { parts.append("huge") }
        return "PageTableEntry(" + parts.joined(separator: ", ") + ")"
    }
}
