import Synchronization

/// How PTE tables are locked: one split lock per table (the kernel's split `ptlock`, default), or
/// one lock for the whole space (the kernel without `USE_SPLIT_PTE_PTLOCKS`). A design knob for
/// honest comparisons; chosen when the space is created.
public enum PageTableLocking: String, Sendable, CaseIterable {
    /// One lock per PTE table (default).
    case split
    /// One lock for every PTE table of the space.
    case single
}

/// A 4-level, x86-64-style page table for 48-bit user addresses: PGD → PUD → PMD → PTE, 512
/// entries per level, 4 KiB pages, and 2 MiB huge mappings in PMD entries.
///
/// Concurrency:
/// - Lockless walkers (``lookup(_:)``, the speculative fault path) descend with acquiring loads
///   inside an RCU (memb) read section. Blocks are freed only after a grace period.
/// - Missing tables are installed by a CAS on the parent entry, only by paths that hold the mmap
///   lock (classic faults, fork, mremap); the loser frees its never-published block. The
///   speculative path never installs a table: one it put in a range an munmap had just emptied
///   would stay there.
/// - Leaf entries of a PTE table change only under that table's split lock; a huge PMD entry only
///   under its PMD table's lock (`pmd_lock`).
/// - Tables are detached only under the mmap write lock and the space lock (`page_table_lock`).
@usableFromInline
final class PageTable: @unchecked Sendable {
    @usableFromInline static let pageSize: UInt64 = 4096
    @usableFromInline static let hugePageSize: UInt64 = 2 << 20
    /// `TASK_SIZE` with 4-level paging: one page below 2^47.
    @usableFromInline static let userLimit: UInt64 = (1 << 47) - 4096

    /// Keeps the fields every walk reads off the line of the object header (writers retain it).
    private let headerPadding = CacheLinePadding()
    @usableFromInline let root: TableBlock
    @usableFromInline let locking: PageTableLocking
    /// The per-space `page_table_lock`: serialises detaching tables, and is the only PTE/PMD lock
    /// in ``PageTableLocking/single`` mode.
    @usableFromInline let spaceLock: SpinLock

    init?(locking: PageTableLocking) {
        guard let root = TableAllocator.shared.allocate() else { return nil }
        self.root = root
        self.locking = locking
        spaceLock = SpinLock()
    }

    // MARK: - Addressing

    /// The slot of `address` in a table of `level` (3 = PGD, 2 = PUD, 1 = PMD, 0 = PTE).
    @inlinable @inline(__always)
    static func index(_ address: UInt64, level: Int) -> Int {
        Int(truncatingIfNeeded: (address &>> UInt64(12 &+ 9 &* level)) & 511)
    }

    /// Bytes covered by one entry at `level`.
    @inlinable @inline(__always)
    static func span(level: Int) -> UInt64 { 1 &<< UInt64(12 &+ 9 &* level) }

    /// The first address after `address` that starts a new entry at `level`.
    @inlinable @inline(__always)
    static func nextBoundary(_ address: UInt64, level: Int) -> UInt64 {
        (address | (span(level: level) &- 1)) &+ 1
    }

    // MARK: - Locks

    /// The lock protecting the leaf entries of PTE table `table`.
    @inlinable @inline(__always)
    func pteLock(_ table: TableBlock) -> SpinLockHandle {
        locking == .split ? table.splitLock : spaceLock.handle
    }

    /// The lock protecting huge entries of PMD table `table` (`pmd_lock`).
    @inlinable @inline(__always)
    func pmdLock(_ table: TableBlock) -> SpinLockHandle {
        locking == .split ? table.splitLock : spaceLock.handle
    }

    // MARK: - Lockless lookup

    /// The leaf entry that maps `address`, if any tables lead there.
    ///
    /// - Precondition: inside an RCU read section, or with the mmap lock held.
    @inlinable @inline(__always)
    func lookup(_ address: UInt64) -> LeafLookup? {
        var table = root
        for level in stride(from: 3, to: 1, by: -1) {
            let entry = table.load(Self.index(address, level: level))
            if entry.isNone { return nil }
            table = TableBlock(entry: entry)
        }
        let pmdIndex = Self.index(address, level: 1)
        let pmdEntry = table.load(pmdIndex)
        if pmdEntry.isNone { return nil }
        if pmdEntry.isHuge {
            return LeafLookup(table: table, index: pmdIndex, entry: pmdEntry, isHuge: true)
        }
        let pte = TableBlock(entry: pmdEntry)
        let pteIndex = Self.index(address, level: 0)
        return LeafLookup(table: pte, index: pteIndex, entry: pte.load(pteIndex), isHuge: false)
    }

    // MARK: - Walk with allocation

    /// Descends from the PGD to the PMD table covering `address`, installing missing PUD and PMD
    /// tables by CAS. Returns `nil` if a table block cannot be allocated.
    ///
    /// - Precondition: inside an RCU read section, or with the mmap lock held.
    @inlinable @inline(__always)
    func pmdTable(for address: UInt64) -> TableBlock? {
        var table = root
        for level in stride(from: 3, to: 1, by: -1) {
            let index = Self.index(address, level: level)
            let entry = table.load(index)
            if entry.isNone {
                guard let installed = installTable(in: table, at: index) else { return nil }
                table = installed
            } else {
                table = TableBlock(entry: entry)
            }
        }
        return table
    }

    /// Descends from the PGD to the PMD table covering `address` without allocating; `nil` when an
    /// upper table is missing (the speculative fault path: it must not install tables).
    ///
    /// - Precondition: inside an RCU read section, or with the mmap lock held.
    @inlinable @inline(__always)
    func existingPMDTable(for address: UInt64) -> TableBlock? {
        let pgdEntry = root.load(Self.index(address, level: 3))
        if pgdEntry.isNone { return nil }
        let pudEntry = TableBlock(entry: pgdEntry).load(Self.index(address, level: 2))
        if pudEntry.isNone { return nil }
        return TableBlock(entry: pudEntry)
    }

    /// Installs a fresh table in the empty slot `index` of `parent` by CAS and returns whatever
    /// table the slot holds afterwards (ours, or a concurrent winner's). Returns `nil` when no block
    /// can be allocated, or when the slot turned out to hold a huge mapping. Out of line: the
    /// walks that call it find the table present almost always, and inlined allocation would
    /// make them save registers on every call.
    @usableFromInline @inline(never)
    func installTable(in parent: TableBlock, at index: Int) -> TableBlock? {
        guard let fresh = TableAllocator.shared.allocate() else { return nil }
        // Acquiring and releasing: releases the zeroed block to lockless walkers that load the
        // entry; acquires a winner's block when we lose.
        let result = parent[index].pointee.compareExchange(
            expected: 0, desired: PageTableEntry.table(at: fresh.address).rawValue,
            ordering: .acquiringAndReleasing)
        if result.exchanged { return fresh }
        TableAllocator.shared.free(fresh)  // never published: no grace period needed
        let winner = PageTableEntry(rawValue: result.original)
        return winner.isHuge ? nil : TableBlock(entry: winner)
    }

    /// The PTE table under PMD slot `index` of `pmd`, installed by CAS if missing. Returns `nil` if
    /// the slot holds a huge mapping or no block can be allocated.
    @inlinable
    func pteTable(in pmd: TableBlock, at index: Int) -> TableBlock? {
        pteTable(in: pmd, at: index, entry: pmd.load(index))
    }

    /// ``pteTable(in:at:)`` for a caller that has just loaded the slot's `entry`.
    @inlinable @inline(__always)
    func pteTable(in pmd: TableBlock, at index: Int, entry: PageTableEntry) -> TableBlock? {
        if entry.isNone { return installTable(in: pmd, at: index) }
        if entry.isHuge { return nil }
        return TableBlock(entry: entry)
    }

    // MARK: - Range walk

    /// Calls `body(pmdTable, pmdIndex, chunkStart, chunkEnd)` for every PMD slot that intersects
    /// `[start, end)` and is reachable through existing upper tables. `[chunkStart, chunkEnd)` is the
    /// part of the range inside that slot's 2 MiB. Does not allocate.
    ///
    /// - Precondition: RCU read section or mmap lock; `body` takes whatever locks it needs.
    @inlinable
    func forEachPMDSlot<E: Error>(
        from start: UInt64, to end: UInt64,
        _ body: (TableBlock, Int, UInt64, UInt64) throws(E) -> Void
    ) throws(E) {
        var address = start
        while address < end {
            let pgdEntry = root.load(Self.index(address, level: 3))
            if pgdEntry.isNone {
                address = Self.nextBoundary(address, level: 3)
                continue
            }
            let pud = TableBlock(entry: pgdEntry)
            let pudEntry = pud.load(Self.index(address, level: 2))
            if pudEntry.isNone {
                address = Self.nextBoundary(address, level: 2)
                continue
            }
            let pmd = TableBlock(entry: pudEntry)
            let pmdEnd = min(end, Self.nextBoundary(address, level: 2))
            while address < pmdEnd {
                let chunkEnd = min(pmdEnd, Self.nextBoundary(address, level: 1))
                try body(pmd, Self.index(address, level: 1), address, chunkEnd)
                address = chunkEnd
            }
        }
    }
}

/// Where a lockless lookup ended: a PTE slot, or a huge PMD slot.
@frozen @usableFromInline
struct LeafLookup {
    @usableFromInline let table: TableBlock
    @usableFromInline let index: Int
    @usableFromInline let entry: PageTableEntry
    @usableFromInline let isHuge: Bool

    @inlinable
    init(table: TableBlock, index: Int, entry: PageTableEntry, isHuge: Bool) {
        self.table = table
        self.index = index
        self.entry = entry
        self.isHuge = isHuge
    }
}
