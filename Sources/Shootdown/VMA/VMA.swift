import Synchronization

/// Memory protection of a mapping (`PROT_READ`, `PROT_WRITE`, `PROT_EXEC`).
public struct Protection: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let read = Protection(rawValue: 1)
    public static let write = Protection(rawValue: 2)
    public static let exec = Protection(rawValue: 4)
    public static let none: Protection = []
    public static let readWrite: Protection = [.read, .write]

    /// `rwx` letters as in `/proc/self/maps`.
    public var description: String {
        (contains(.read) ? "r" : "-") + (contains(.write) ? "w" : "-") + (contains(.exec) ? "x" : "-")
    }
}

/// Flags of a mapping that are not protection.
public struct MappingFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// `MAP_SHARED`: pages are shared with forks, no copy-on-write.
    public static let shared = MappingFlags(rawValue: 1 << 0)
    /// `MADV_HUGEPAGE`: faults may install 2 MiB mappings.
    public static let hugePage = MappingFlags(rawValue: 1 << 1)
    /// `MADV_NOHUGEPAGE`.
    public static let noHugePage = MappingFlags(rawValue: 1 << 2)
    /// `VM_LOCKED` (`MAP_LOCKED` / mlock): never paged out or reaped.
    public static let locked = MappingFlags(rawValue: 1 << 3)
    /// `VM_SOFTDIRTY`: every page of the mapping reads as soft-dirty until the next
    /// `clearSoftDirty`.
    public static let softDirty = MappingFlags(rawValue: 1 << 4)
}

/// A virtual memory area: `[start, end)` with one protection, flags and backing.
///
/// Fields readers use without the mmap lock (bounds, protection, flags) are atomics read with
/// relaxed ordering inside a ``SeqCount`` read section (`vm_sequence`): every change is made
/// between `writeBegin` and `writeEnd`, and a removed VMA's count stays odd forever, so a
/// speculative reader that found it through an old index version aborts.
///
/// Lifetime: owned by the ``VMAIndex``; after removal it is retired and released after an RCU
/// grace period, so a reader in a memb read section may hold it unretained. A reader holding the
/// VMA's read lock (VMA+Lock.swift) may keep it past its read section: removal waits for it.
///
/// Layout: three groups on separate lines: the fields lookups and speculative faults read, the
/// per-VMA lock (written by every fault on the per-VMA-lock path), the writer-owned fields.
@usableFromInline
final class VMA: @unchecked Sendable {
    // Layout: the fields a speculative fault reads sit alone on one cache line, between two
    // paddings: writers retaining the VMA (header), linking neighbours (`previous`/`next`) or
    // changing an adjacent allocation never invalidate the line a faulting CPU keeps.
    private let headerPadding = CacheLinePadding()
    @usableFromInline let sequence = SeqCount()
    @usableFromInline let startWord: Atomic<UInt64>
    @usableFromInline let endWord: Atomic<UInt64>
    /// Protection (bits 0–7) and flags (bits 8–23).
    @usableFromInline let attributeWord: Atomic<UInt64>

    private let writerPadding = CacheLinePadding()

    // The per-VMA lock (VMA+Lock.swift) on a line of its own: every fault on the per-VMA-lock path
    // writes `vmRefcount`, so it must not share a line with the fields above (which lookups and
    // speculative faults of other CPUs keep cached) nor with the writer-owned fields below.
    /// `vm_lock_seq`: equal to the space's `mm_lock_seq` while a writer holds this VMA write-locked.
    @usableFromInline let vmLockSequence = Atomic<UInt64>(VMA.neverLocked)
    /// `vm_refcnt`: 0 detached, 1 attached, +1 per reader, +``lockOffset`` while a writer drains.
    @usableFromInline let vmRefcount = Atomic<UInt32>(1)
    private let lockPadding = CacheLinePadding()

    /// Backing of a shared mapping; `nil` for private anonymous memory. Writer-owned.
    var sharedObject: SharedMemoryObject?
    /// Page offset of `start` within `sharedObject`. Writer-owned.
    var pageOffset: UInt64

    /// Neighbours in address order (writer-owned; read under the mmap lock).
    unowned(unsafe) var previous: VMA?
    unowned(unsafe) var next: VMA?

    /// Write-section nesting depth (writer-owned) and the lock serialising writers that hold only
    /// the mmap read lock (zaps by madvise, reclaim, migration).
    private var writeDepth = 0
    private var removed = false
    let writerLock = SpinLock()

    init(start: UInt64, end: UInt64, protection: Protection, flags: MappingFlags,
         sharedObject: SharedMemoryObject? = nil, pageOffset: UInt64 = 0) {
        startWord = Atomic(start)
        endWord = Atomic(end)
        attributeWord = Atomic(Self.pack(protection, flags))
        self.sharedObject = sharedObject
        self.pageOffset = pageOffset
    }

    @inlinable static func pack(_ protection: Protection, _ flags: MappingFlags) -> UInt64 {
        UInt64(protection.rawValue) | UInt64(flags.rawValue) << 8
    }

    // MARK: Reading (relaxed; validate with `sequence` when not holding the mmap lock)

    @inlinable var start: UInt64 { startWord.load(ordering: .relaxed) }
    @inlinable var end: UInt64 { endWord.load(ordering: .relaxed) }
    @inlinable var protection: Protection {
        Protection(rawValue: UInt8(truncatingIfNeeded: attributeWord.load(ordering: .relaxed)))
    }
    @inlinable var flags: MappingFlags {
        MappingFlags(rawValue: UInt16(truncatingIfNeeded: attributeWord.load(ordering: .relaxed) >> 8))
    }
    @inlinable var isShared: Bool { flags.contains(.shared) }
    @inlinable var isAnonymousPrivate: Bool { !flags.contains(.shared) }

    /// Whether a huge mapping may cover `[hugeStart, hugeStart + 2 MiB)`.
    @inlinable
    func allowsHuge(at hugeStart: UInt64) -> Bool {
        let flags = self.flags
        return flags.contains(.hugePage) && !flags.contains(.noHugePage) && !flags.contains(.shared)
            && hugeStart >= start && hugeStart &+ PageTable.hugePageSize <= end
    }

    // MARK: Writing (mmap write lock, or mmap read lock plus `writerLock`)

    /// Enters the VMA's write section (nestable on one thread).
    func beginWrite() {
        checkInvariant(!removed, "writing a removed VMA")
        if writeDepth == 0 { sequence.writeBegin() }
        writeDepth += 1
    }

    /// Leaves the VMA's write section.
    func endWrite() {
        checkInvariant(writeDepth > 0, "endWrite without beginWrite")
        writeDepth -= 1
        if writeDepth == 0 && !removed { sequence.writeEnd() }
    }

    /// Marks the VMA removed: its sequence count becomes (and stays) odd, so speculative readers
    /// that still find it abort.
    func markRemoved() {
        if removed { return }
        if writeDepth == 0 { sequence.rawWriteBegin() }
        removed = true
    }

    var isRemoved: Bool { removed }

    /// Sets the bounds. Inside a write section.
    func setBounds(start: UInt64, end: UInt64) {
        checkInvariant(writeDepth > 0, "VMA change outside its write section")
        startWord.store(start, ordering: .relaxed)
        endWord.store(end, ordering: .relaxed)
    }

    /// Sets protection and flags. Inside a write section.
    func setAttributes(protection: Protection, flags: MappingFlags) {
        checkInvariant(writeDepth > 0, "VMA change outside its write section")
        attributeWord.store(Self.pack(protection, flags), ordering: .relaxed)
    }
}
