/// The flags of a VMA that `/proc/PID/smaps` prints on its `VmFlags:` line (`vm_flags`), as far as
/// the engine models them for anonymous memory.
///
/// Bits are the engine's own, declared in the order this kernel prints their two-letter names, so
/// ``smapsLetters`` is a walk over the bits. ``read``, ``write`` and ``exec`` mirror a mapping's
/// ``Protection``: a VMA stores its protection separately, and ``Mapping/vmFlags`` adds them back.
///
/// What sets each flag on this kernel (measured, anonymous memory):
/// - `mr mw me` (``mayRead``, ``mayWrite``, ``mayExec``) on every anonymous mapping; `ms`
///   (``mayShare``) and `sh` (``shared``) on shared ones.
/// - `ac` (``account``, `VM_ACCOUNT`): a private mapping that is or becomes writable without
///   `MAP_NORESERVE`; mprotect to a non-writable protection drops it only while the VMA has no
///   anonymous pages yet (no `anon_vma`). Shared anonymous memory is charged by its object and
///   never carries it. It takes part in merging.
/// - `nr` (``noReserve``): `MAP_NORESERVE`, on private or shared mappings.
/// - `gd` (``growsDown``): `MAP_GROWSDOWN`.
/// - `lo` (``locked``) and `lf` (``lockOnFault``): mlock, mlock2(`MLOCK_ONFAULT`), mlockall,
///   `MAP_LOCKED`.
/// - `gu` (``maybeGuard``): a guard region was installed in the VMA at some point; it stays after
///   `MADV_GUARD_REMOVE`, and survives merges (it does not block them).
/// - `sr rr dc wf dd hg nh mg` from madvise; `sl` (``sealed``) from mseal.
/// - `sd` (``softDirty``) is tracked but not printed: this kernel has no `CONFIG_MEM_SOFT_DIRTY`.
public struct VMFlags: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// `rd` (`VM_READ`).
    public static let read = VMFlags(rawValue: 1 << 0)
    /// `wr` (`VM_WRITE`).
    public static let write = VMFlags(rawValue: 1 << 1)
    /// `ex` (`VM_EXEC`).
    public static let exec = VMFlags(rawValue: 1 << 2)
    /// `sh` (`VM_SHARED`): `MAP_SHARED`; pages are shared with forks, never copied on write.
    public static let shared = VMFlags(rawValue: 1 << 3)
    /// `mr` (`VM_MAYREAD`).
    public static let mayRead = VMFlags(rawValue: 1 << 4)
    /// `mw` (`VM_MAYWRITE`).
    public static let mayWrite = VMFlags(rawValue: 1 << 5)
    /// `me` (`VM_MAYEXEC`).
    public static let mayExec = VMFlags(rawValue: 1 << 6)
    /// `ms` (`VM_MAYSHARE`).
    public static let mayShare = VMFlags(rawValue: 1 << 7)
    /// `gd` (`VM_GROWSDOWN`): a stack that grows down on faults below it.
    public static let growsDown = VMFlags(rawValue: 1 << 8)
    /// `gu` (`VM_MAYBE_GUARD`): guard regions may be installed.
    public static let maybeGuard = VMFlags(rawValue: 1 << 9)
    /// `lo` (`VM_LOCKED`): never paged out or reaped; populated when set.
    public static let locked = VMFlags(rawValue: 1 << 10)
    /// `sr` (`VM_SEQ_READ`, `MADV_SEQUENTIAL`).
    public static let sequentialRead = VMFlags(rawValue: 1 << 11)
    /// `rr` (`VM_RAND_READ`, `MADV_RANDOM`).
    public static let randomRead = VMFlags(rawValue: 1 << 12)
    /// `dc` (`VM_DONTCOPY`, `MADV_DONTFORK`): not copied into a fork's child.
    public static let dontCopy = VMFlags(rawValue: 1 << 13)
    /// `de` (`VM_DONTEXPAND`): never set on anonymous memory by a syscall (mirroring aid).
    public static let dontExpand = VMFlags(rawValue: 1 << 14)
    /// `lf` (`VM_LOCKONFAULT`): locked pages are populated as they fault, not up front.
    public static let lockOnFault = VMFlags(rawValue: 1 << 15)
    /// `ac` (`VM_ACCOUNT`): charged against the commit limit.
    public static let account = VMFlags(rawValue: 1 << 16)
    /// `nr` (`VM_NORESERVE`, `MAP_NORESERVE`).
    public static let noReserve = VMFlags(rawValue: 1 << 17)
    /// `wf` (`VM_WIPEONFORK`): the child of a fork gets the VMA empty.
    public static let wipeOnFork = VMFlags(rawValue: 1 << 18)
    /// `dd` (`VM_DONTDUMP`).
    public static let dontDump = VMFlags(rawValue: 1 << 19)
    /// `VM_SOFTDIRTY`: every page of the VMA reads as soft-dirty until the next `clearSoftDirty`
    /// (not printed by this kernel).
    public static let softDirty = VMFlags(rawValue: 1 << 20)
    /// `hg` (`VM_HUGEPAGE`, `MADV_HUGEPAGE`): faults may install 2 MiB mappings.
    public static let hugePage = VMFlags(rawValue: 1 << 21)
    /// `nh` (`VM_NOHUGEPAGE`).
    public static let noHugePage = VMFlags(rawValue: 1 << 22)
    /// `mg` (`VM_MERGEABLE`, `MADV_MERGEABLE`).
    public static let mergeable = VMFlags(rawValue: 1 << 23)
    /// `sl` (`VM_SEALED`, mseal): munmap, mprotect, mremap and discarding madvise fail with `EPERM`.
    public static let sealed = VMFlags(rawValue: 1 << 24)

    /// A file-backed VMA (an internal marker, never printed and never part of a ``Mapping``):
    /// faults map the object's pages, so the speculative path leaves it to the classic one.
    @usableFromInline static let fileBacked = VMFlags(rawValue: 1 << 40)
    /// VMAs whose pages come from an object (shared memory or a file): no anonymous huge pages,
    /// no speculative faults.
    @usableFromInline static let objectBacked: VMFlags = [.shared, .fileBacked]

    /// The protection bits.
    public static let access: VMFlags = [.read, .write, .exec]
    /// Flags that never prevent a merge and are kept by the merged VMA when either side had them
    /// (`VM_IGNORE_MERGE`-like: soft-dirty and the guard hint).
    public static let ignoredByMerge: VMFlags = [.softDirty, .maybeGuard]

    /// The two-letter names, by bit (nil: not printed).
    static let names: [String?] = [
        "rd", "wr", "ex", "sh", "mr", "mw", "me", "ms", "gd", "gu", "lo", "sr", "rr", "dc", "de", "lf", "ac", "nr",
        "wf", "dd", nil, "hg", "nh", "mg", "sl",
    ]

    /// The letters `/proc/PID/smaps` prints for these flags, in its order, each followed by a
    /// space (as the kernel prints them), e.g. `"rd wr mr mw me ac "`.
    public var smapsLetters: String {
        var text = ""
        for (bit, name) in Self.names.enumerated() where rawValue & (1 << UInt64(bit)) != 0 {
            if let name { text += name + " " }
        }
        return text
    }

    /// The flags with the protection bits of `protection` set.
    @inlinable
    public func with(_ protection: Protection) -> VMFlags {
        VMFlags(rawValue: (rawValue & ~VMFlags.access.rawValue) | UInt64(protection.rawValue & 7))
    }

    /// The protection bits as a ``Protection``.
    @inlinable
    public var protection: Protection { Protection(rawValue: UInt32(truncatingIfNeeded: rawValue & 7)) }

    public var description: String { smapsLetters.isEmpty ? "[]" : smapsLetters.trimmingSuffixSpace }
}

extension String {
    var trimmingSuffixSpace: String { hasSuffix(" ") ? String(dropLast()) : self }
}

/// The former name of ``VMFlags``.
public typealias MappingFlags = VMFlags
