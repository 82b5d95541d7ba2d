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
    /// Protection (bits 0–7) and ``VMFlags`` without the access bits (bits 8–63).
    @usableFromInline let attributeWord: Atomic<UInt64>
    /// The VMA's `anon_vma` identity (0: none yet; see ``AnonVMA``). Set once by the first fault
    /// that allocates an anonymous page (classic path, mmap read lock plus the space's anon lock),
    /// copied by splits and moves, adopted by merges. Read by the speculative path, which
    /// leaves a first anonymous allocation to the classic one.
    @usableFromInline let anonVMAWord = Atomic<UInt64>(0)

    private let writerPadding = CacheLinePadding()

    // The per-VMA lock (VMA+Lock.swift) on a line of its own: every fault on the per-VMA-lock path
    // writes `vmRefcount`, so it must not share a line with the fields above (which lookups and
    // speculative faults of other CPUs keep cached) nor with the writer-owned fields below.
    /// `vm_lock_seq`: equal to the space's `mm_lock_seq` while a writer holds this VMA write-locked.
    @usableFromInline let vmLockSequence = Atomic<UInt64>(VMA.neverLocked)
    /// `vm_refcnt`: 0 detached, 1 attached, +1 per reader, +``lockOffset`` while a writer drains.
    @usableFromInline let vmRefcount = Atomic<UInt32>(1)
    private let lockPadding = CacheLinePadding()

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

    /// Write-section nesting depth (writer-owned: the mmap write lock, or `writerLock`).
    private var writeDepth = 0
    private var removed = false
    /// Zaps inside the shared zap section (``enterZapSection()``); guarded by `writerLock`.
    private var zappers = 0
    /// Whether a writer holds `writerLock` through ``lockExclusively()``; changed only by that
    /// holder. A zapper inside the shared section reads `false` without the lock: nobody can take
    /// the VMA exclusively while a zap is inside.
    private(set) var heldExclusively = false
    /// Writers waiting in ``lockExclusively()`` for the zaps inside to leave; guarded by
    /// `writerLock`. While non-zero, no new zap enters.
    private var exclusiveWaiters = 0
    /// Zaps waiting in ``enterZapSection()`` for such a writer; guarded by `writerLock`.
    private var zapsWaitingForWriter = 0
    /// Guards `zappers` and the write section of writers that hold only the mmap read lock: zaps
    /// (madvise, reclaim, migration) hold it only to enter and leave the shared zap section; an
    /// attribute change under the mmap read lock (``lockExclusively()``) holds it throughout. A
    /// sleeping lock.
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

    // MARK: Writing (mmap write lock, or mmap read lock plus `writerLock` or the zap section)

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

    // MARK: Writers under the mmap read lock

    /// Enters the shared zap section: the VMA's write section, shared by every zap (madvise
    /// DONTNEED/FREE/PAGEOUT/REMOVE, reclaim, migration) that holds the mmap read lock, as Linux's
    /// zaps of one VMA run in parallel. The sequence count turns odd when the first zap enters and
    /// even again when the last one leaves, so a speculative fault that took its snapshot before
    /// or during any of them fails its validation under the split lock (the zaps take the split
    /// locks inside the section); the split locks order the zaps' entry changes against each
    /// other and against faults. Zaps change entries only, never the VMA's fields: a change of
    /// those under the mmap read lock needs ``lockExclusively()``, which waits for the zaps.
    ///
    /// A writer waiting in ``lockExclusively()`` has priority: a zap that is not yet inside waits
    /// until that writer is done (with back-off), so a stream of overlapping zaps cannot starve
    /// it (the zaps already inside finish without waiting for anything here). An edit that enters
    /// several VMAs' sections enters them in address order (``VMAEdit/touch(_:)``), and a writer
    /// holds one VMA at a time, so no ring of waits can form (docs/protocols.md, "Zap sections
    /// and exclusive VMA writers").
    ///
    /// Caller: the mmap read lock. Pair with ``leaveZapSection()``.
    func enterZapSection() {
        writerLock.lock()
        if exclusiveWaiters > 0 {
            zapsWaitingForWriter += 1
            waitHoldingWriterLock { exclusiveWaiters > 0 }
            zapsWaitingForWriter -= 1
        }
        if zappers == 0 { beginWrite() }
        zappers += 1
        writerLock.unlock()
    }

    /// Leaves the shared zap section; the last zap out makes the sequence count even.
    func leaveZapSection() {
        writerLock.lock()
        checkInvariant(zappers > 0, "leaveZapSection without enterZapSection")
        zappers -= 1
        if zappers == 0 { endWrite() }
        writerLock.unlock()
    }

    /// Takes `writerLock` once no zap is inside the VMA (waits with back-off: a zap may run
    /// blockable callbacks), excluding zaps and other such writers until
    /// ``unlockExclusively()``. For changes of the VMA's fields under the mmap read lock (guard
    /// installation's flag); the caller enters the write section itself (``beginWrite()``).
    func lockExclusively() {
        writerLock.lock()
        if zappers > 0 {
            // Announced under the lock: no zap enters from here on (see `enterZapSection`).
            exclusiveWaiters += 1
            waitHoldingWriterLock { zappers > 0 }
            exclusiveWaiters -= 1
        }
        heldExclusively = true
    }

    /// With `writerLock` held: drops it, backs off and retakes it until `condition` (read under
    /// the lock) is false. Returns with the lock held.
    private func waitHoldingWriterLock(while condition: () -> Bool) {
        var backoff = Backoff()
        while condition() {
            writerLock.unlock()
            backoff.wait()
            writerLock.lock()
        }
    }

    /// Zaps waiting for a writer that wants the VMA exclusively (tests).
    var zapsWaitingForWriterCount: Int { writerLock.withLock { zapsWaitingForWriter } }
    /// Writers waiting in ``lockExclusively()`` (tests).
    var exclusiveWaitersCount: Int { writerLock.withLock { exclusiveWaiters } }
    /// Writers waiting in ``lockExclusively()``, or 0 while the writer lock is held (tests that
    /// must not block on a VMA another thread holds exclusively).
    var exclusiveWaitersIfUnlocked: Int {
        guard writerLock.tryLock() else { return 0 }
        defer { writerLock.unlock() }
        return exclusiveWaiters
    }

    /// ``lockExclusively()`` if that needs no wait; `false` otherwise (an OOM reap never blocks).
    func tryLockExclusively() -> Bool {
        guard writerLock.tryLock() else { return false }
        if zappers == 0 {
            heldExclusively = true
            return true
        }
        writerLock.unlock()
        return false
    }

    /// Releases ``lockExclusively()``.
    func unlockExclusively() {
        checkInvariant(heldExclusively, "unlockExclusively without lockExclusively")
        heldExclusively = false
        writerLock.unlock()
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
        checkInvariant(zappers == 0, "VMA change inside the shared zap section")
        startWord.store(start, ordering: .relaxed)
        endWord.store(end, ordering: .relaxed)
    }

    /// Sets protection and flags. Inside a write section.
    func setAttributes(protection: Protection, flags: VMFlags) {
        checkInvariant(writeDepth > 0, "VMA change outside its write section")
        checkInvariant(zappers == 0, "VMA change inside the shared zap section")
        attributeWord.store(Self.pack(protection, flags), ordering: .relaxed)
    }
}
