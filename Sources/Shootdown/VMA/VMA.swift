import Synchronization

/// Memory protection of a mapping (`PROT_READ`, `PROT_WRITE`, `PROT_EXEC`), as the raw Linux
/// bits: any value can be built, so a caller can pass what a program passed (mprotect rejects
/// unknown bits with `EINVAL`; mmap ignores them, as Linux does).
public struct Protection: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// `PROT_READ`.
    public static let read = Protection(rawValue: 1)
    /// `PROT_WRITE`.
    public static let write = Protection(rawValue: 2)
    /// `PROT_EXEC`.
    public static let exec = Protection(rawValue: 4)
    /// `PROT_SEM` (x86 accepts it and ignores it).
    public static let sem = Protection(rawValue: 8)
    /// `PROT_GROWSDOWN`: mprotect applies the protection down to the start of a growsdown VMA.
    public static let growsDown = Protection(rawValue: 0x0100_0000)
    /// `PROT_GROWSUP`: no growsup VMAs exist on x86, so mprotect rejects it.
    public static let growsUp = Protection(rawValue: 0x0200_0000)
    /// `PROT_NONE`: no access.
    public static let none: Protection = []
    /// `PROT_READ | PROT_WRITE`.
    public static let readWrite: Protection = [.read, .write]

    /// Only the access bits (read, write, exec): what a VMA stores.
    @inlinable public var access: Protection { Protection(rawValue: rawValue & 7) }

    /// `rwx` letters as in `/proc/self/maps`.
    public var description: String {
        (contains(.read) ? "r" : "-") + (contains(.write) ? "w" : "-") + (contains(.exec) ? "x" : "-")
    }
}

/// A virtual memory area: `[start, end)` with one protection, flags and backing.
///
/// Fields readers use without the mmap lock (bounds, protection, flags) are atomics read with
/// relaxed ordering inside a ``SeqCount`` read section (`vm_sequence`): every change is made
/// between `writeBegin` and `writeEnd`, and a removed VMA's count stays odd forever, so a
/// speculative reader that found it through an old index version aborts.
///
/// Lifetime: owned by the ``VMAIndex``; after removal it is retired and released after an RCU
/// grace period, so a reader in a memb read section may hold it unretained.
@usableFromInline
final class VMA: @unchecked Sendable {
    // Layout: the fields a speculative fault reads sit alone on one cache line, between two
    // paddings: writers retaining the VMA (header), linking neighbours (`previous`/`next`) or
    // changing an adjacent allocation never invalidate the line a faulting CPU keeps.
    private let headerPadding = CacheLinePadding()
    @usableFromInline let sequence = SeqCount()
    @usableFromInline let startWord: Atomic<UInt64>
    @usableFromInline let endWord: Atomic<UInt64>
    /// Protection (bits 0–7) and ``VMFlags`` without the access bits (bits 8–63).
    @usableFromInline let attributeWord: Atomic<UInt64>
    /// The VMA's `anon_vma` identity (0: none yet; see ``AnonVMA``). Set once by the first fault
    /// that allocates an anonymous page (classic path, mmap read lock plus the space's anon lock),
    /// copied by splits and moves, adopted by merges. Read by the speculative path, which
    /// leaves a first anonymous allocation to the classic one.
    @usableFromInline let anonVMAWord = Atomic<UInt64>(0)

    private let writerPadding = CacheLinePadding()

    /// Backing object: shmem of a shared anonymous mapping, or the pages of a file mapping
    /// (private or shared; such VMAs carry ``VMFlags/fileBacked``); `nil` for private anonymous
    /// memory. Set once, at creation.
    @usableFromInline let sharedObject: SharedMemoryObject?
    /// Page offset of `start` (`vm_pgoff`): within `sharedObject` for shared and file memory; for private
    /// memory the start page number at mmap, kept by splits and by moves of VMAs that have
    /// anonymous pages (merging needs contiguous offsets). Writer-owned.
    @usableFromInline var pageOffset: UInt64

    /// Neighbours in address order (writer-owned; read under the mmap lock).
    unowned(unsafe) var previous: VMA?
    unowned(unsafe) var next: VMA?

    /// Write-section nesting depth (writer-owned) and the lock serialising writers that hold only
    /// the mmap read lock (zaps by madvise, reclaim, migration).
    private var writeDepth = 0
    private var removed = false
    /// A sleeping lock: its holder runs blockable notifier callbacks (DONTNEED, reclaim), which
    /// may sleep.
    let writerLock = FutexMutex()

    /// - Parameter pageOffset: `nil` for private memory means `start`'s page number.
    init(start: UInt64, end: UInt64, protection: Protection, flags: VMFlags,
         sharedObject: SharedMemoryObject? = nil, pageOffset: UInt64? = nil, anonVMA: UInt64 = 0) {
        startWord = Atomic(start)
        endWord = Atomic(end)
        attributeWord = Atomic(Self.pack(protection, flags))
        self.sharedObject = sharedObject
        self.pageOffset = pageOffset ?? (sharedObject == nil ? start / PageTable.pageSize : 0)
        anonVMAWord.store(anonVMA, ordering: .relaxed)
    }

    @inlinable static func pack(_ protection: Protection, _ flags: VMFlags) -> UInt64 {
        UInt64(protection.rawValue & 0xFF) | (flags.rawValue & ~VMFlags.access.rawValue) << 8
    }

    // MARK: Reading (relaxed; validate with `sequence` when not holding the mmap lock)

    @inlinable var start: UInt64 { startWord.load(ordering: .relaxed) }
    @inlinable var end: UInt64 { endWord.load(ordering: .relaxed) }
    @inlinable var protection: Protection {
        Protection(rawValue: UInt32(truncatingIfNeeded: attributeWord.load(ordering: .relaxed) & 0xFF))
    }
    /// The flags without the access bits (those are ``protection``).
    @inlinable var flags: VMFlags {
        VMFlags(rawValue: attributeWord.load(ordering: .relaxed) >> 8)
    }
    /// The `anon_vma` identity (0: none).
    @inlinable var anonVMA: UInt64 { anonVMAWord.load(ordering: .relaxed) }
    @inlinable var isShared: Bool { flags.contains(.shared) }
    @inlinable var isLocked: Bool { flags.contains(.locked) }
    @inlinable var isSealed: Bool { flags.contains(.sealed) }
    @inlinable var isAnonymousPrivate: Bool { !flags.contains(.shared) }

    /// Whether a huge mapping may cover `[hugeStart, hugeStart + 2 MiB)`.
    @inlinable
    func allowsHuge(at hugeStart: UInt64) -> Bool {
        let flags = self.flags
        return flags.contains(.hugePage) && !flags.contains(.noHugePage) && flags.isDisjoint(with: .objectBacked)
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
    func setAttributes(protection: Protection, flags: VMFlags) {
        checkInvariant(writeDepth > 0, "VMA change outside its write section")
        attributeWord.store(Self.pack(protection, flags), ordering: .relaxed)
    }
}
