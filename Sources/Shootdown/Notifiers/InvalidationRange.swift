import Synchronization
/// Why translations in a range are being removed or weakened (the kernel's
/// `enum mmu_notifier_event`). Every operation passes the event that fits it
/// (never a default).
public enum InvalidationEvent: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// munmap, or mremap moving the range away: the addresses are going away.
    case unmap
    /// Entries cleared for another reason: madvise, reclaim, pageout, huge-page split and collapse,
    /// copy-on-write replacement.
    case clear
    /// mprotect: the VMA's new protection (in ``InvalidationRange/vma``) describes the whole range.
    case protectionVMA
    /// Write access removed from individual pages (fork's copy-on-write): inspect the entries.
    case protectionPage
    /// Soft-dirty tracking re-armed (clear_refs): same pages, write-protected.
    case softDirty
    /// The address space is being torn down.
    case release
    /// Pages move to new frames; ``InvalidationRange/owner`` names who asked.
    case migrate
    /// Pages become exclusive to a device; ``InvalidationRange/owner`` names the device. Part of
    /// the kernel's set; no operation of this model raises it (device-exclusive access is not
    /// modelled), but subscribers must treat it like `clear`.
    case exclusive

    /// The case name.
    public var description: String {
        switch self {
        case .unmap: "unmap"
        case .clear: "clear"
        case .protectionVMA: "protectionVMA"
        case .protectionPage: "protectionPage"
        case .softDirty: "softDirty"
        case .release: "release"
        case .migrate: "migrate"
        case .exclusive: "exclusive"
        }
    }
}

/// Flags of an invalidation.
public struct InvalidationFlags: OptionSet, Hashable, Sendable {
    /// The bits.
    public let rawValue: UInt8
    /// The flags with bits `rawValue`.
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Subscribers may sleep. Without it (OOM reaping) a subscriber may refuse instead.
    public static let blockable = InvalidationFlags(rawValue: 1)
}

/// An opaque tag naming who caused an invalidation (migration, device exclusivity), so a mirror
/// can skip invalidations it caused itself. `0` means nobody in particular.
public struct InvalidationOwner: Hashable, Sendable {
    /// The tag (`0`: nobody in particular).
    public let rawValue: UInt64
    /// The tag `rawValue`.
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// Nobody in particular.
    public static let none = InvalidationOwner(rawValue: 0)
}

/// A snapshot of the VMA an invalidation concerns: its bounds and, for mprotect, the *new*
/// protection and flags.
public struct VMASnapshot: Hashable, Sendable {
    /// First address of the VMA.
    public var start: UInt64
    /// End of the VMA (exclusive).
    public var end: UInt64
    /// The VMA's protection (for mprotect: the new one).
    public var protection: Protection
    /// The VMA's flags; their access bits (`rd wr ex`) always mirror ``protection``.
    public var flags: MappingFlags

    /// A snapshot with these fields.
    ///
    /// - Parameters:
    ///   - start: the VMA's first address.
    ///   - end: the VMA's end address (exclusive).
    ///   - protection: its protection (for mprotect, the new one).
    ///   - flags: the VMA's flags; the access bits are taken from `protection`, as in
    ///     ``Mapping/init(start:end:protection:flags:)``.
    public init(start: UInt64, end: UInt64, protection: Protection, flags: MappingFlags) {
        self.start = start
        self.end = end
        self.protection = protection
        self.flags = flags.with(protection)
    }
}

/// One invalidation, fixed once when it begins and passed unchanged to every callback (the
/// kernel's `struct mmu_notifier_range`): which space, `[start, end)`, why, whether subscribers may
/// sleep, the VMA it concerns, and who caused it.
@frozen
public struct InvalidationRange: Hashable, Sendable, CustomStringConvertible {
    /// Identifier of the address space (``AddressSpace/id``).
    public let space: UInt64
    /// First address of the range (page-aligned).
    public let start: UInt64
    /// End of the range (exclusive, page-aligned).
    public let end: UInt64
    /// Why the translations are removed or weakened.
    public let event: InvalidationEvent
    /// Whether subscribers may sleep (``InvalidationFlags/blockable``).
    public let flags: InvalidationFlags
    /// The VMA concerned, if the change concerns one (mprotect: with the new protection).
    public let vma: VMASnapshot?
    /// Who caused the invalidation (migrations), else ``InvalidationOwner/none``.
    public let owner: InvalidationOwner

    /// A range as the engine builds it (for tests and for subscribers that replay ranges).
    public init(
        space: UInt64, start: UInt64, end: UInt64, event: InvalidationEvent,
        flags: InvalidationFlags = .blockable, vma: VMASnapshot? = nil, owner: InvalidationOwner = .none
    ) {
        self.space = space
        self.start = start
        self.end = end
        self.event = event
        self.flags = flags
        self.vma = vma
        self.owner = owner
    }

    /// Whether subscribers may sleep.
    @inlinable public var isBlockable: Bool { flags.contains(.blockable) }

    /// Whether the change can only take write access away, leaving pages readable: a mirror may
    /// downgrade its translations to read-only instead of dropping them (the kernel's former
    /// `mmu_notifier_range_update_to_read_only`).
    public var onlyDowngradesToReadOnly: Bool {
        switch event {
        case .protectionVMA: vma?.protection.contains(.read) ?? false
        case .protectionPage, .softDirty: true
        default: false
        }
    }

    /// Whether `[start, end)` intersects this range.
    @inlinable
    public func intersects(_ otherStart: UInt64, _ otherEnd: UInt64) -> Bool {
        otherStart < end && start < otherEnd
    }

    /// `InvalidationRange(event, 0xstart-0xend)`, with `, non-blockable` when it is not blockable.
    public var description: String {
        let bounds = "0x" + String(start, radix: 16) + "-0x" + String(end, radix: 16)
        return "InvalidationRange(\(event), \(bounds)\(isBlockable ? "" : ", non-blockable"))"
    }
}
