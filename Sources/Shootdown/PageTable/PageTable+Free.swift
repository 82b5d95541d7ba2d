import Synchronization
extension PageTable {
    /// Detaches every page table among those intersecting `[start, end)` whose whole coverage lies
    /// in `[floor, ceiling)` (the kernel's `free_pgtables`): `floor` is the end of the VMA below the
    /// hole and `ceiling` the start of the VMA above it. Detached tables are retired to `retire`
    /// and freed after a grace period; the root is never detached.
    ///
    /// - Precondition: mmap write lock held; `[start, end)` zapped.
    /// - Returns: the number of tables detached (not counting tables below them).
    func freeTables(
        from start: UInt64, to end: UInt64, floor: UInt64, ceiling: UInt64, retire: RetireList
    ) -> Int {
        guard start < end else { return 0 }
        return spaceLock.withLock {
            freeTables(in: root, level: 3, base: 0, start: start, end: end, floor: floor, ceiling: ceiling, retire: retire)
        }
    }

    private func freeTables(
        in table: TableBlock, level: Int, base: UInt64, start: UInt64, end: UInt64,
        floor: UInt64, ceiling: UInt64, retire: RetireList
    ) -> Int {
        let span = Self.span(level: level)
        let coverageEnd = base &+ span &* 512
        var address = max(start, base) & ~(span &- 1)
        var detached = 0
        while address < min(end, coverageEnd) {
            let index = Self.index(address, level: level)
            let entry = table.load(index)
            let entryEnd = address &+ span
            if !entry.isNone {
                if address >= floor && entryEnd <= ceiling {
                    checkInvariant(!entry.isHuge, "huge mapping left in a hole after zap")
                    if !entry.isHuge {
                        // Relaxed: the slot's new value needs no ordering; lockless walkers that
                        // already loaded the old value stay safe until the grace period ends.
                        let old = PageTableEntry(rawValue: table[index].pointee.exchange(0, ordering: .relaxed))
                        retire.retire(table: TableBlock(entry: old), level: level - 1)
                        detached += 1
                    }
                } else if level > 1 && !entry.isHuge {
                    detached += freeTables(
                        in: TableBlock(entry: entry), level: level - 1, base: address,
                        start: start, end: end, floor: floor, ceiling: ceiling, retire: retire)
                }
            }
            address = entryEnd
        }
        return detached
    }

    /// Retires every table of this page table, root included (teardown).
    ///
    /// - Precondition: mmap write lock held; every leaf entry zapped.
    func retireAll(into retire: RetireList) {
        retire.retire(table: root, level: 3)
    }

    /// Visits every non-empty leaf entry (4 KiB or huge) with its virtual address, and checks that
    /// every reachable table is live. `table(start, end)` is called for every table below the root
    /// with the addresses it covers. For audits and tests.
    ///
    /// - Precondition: mmap lock held (or the space otherwise quiescent).
    func forEachLeaf(
        table: (UInt64, UInt64) -> Void = { _, _ in }, _ body: (UInt64, PageTableEntry, Bool) -> Void
    ) -> TableAudit {
        var audit = TableAudit()
        visit(root, level: 3, base: 0, audit: &audit, table, body)
        return audit
    }

    private func visit(
        _ table: TableBlock, level: Int, base: UInt64, audit: inout TableAudit,
        _ tableBody: (UInt64, UInt64) -> Void, _ body: (UInt64, PageTableEntry, Bool) -> Void
    ) {
        audit.tables += 1
        if level < 3 { tableBody(base, base &+ Self.span(level: level) &* UInt64(TableBlock.entries)) }
        if table.state.pointee.load(ordering: .relaxed) != TableState.live { audit.deadTablesReached += 1 }
        let span = Self.span(level: level)
        for index in 0..<TableBlock.entries {
            let entry = table.load(index)
            if entry.isNone { continue }
            let address = base &+ UInt64(index) &* span
            if level == 0 {
                body(address, entry, false)
            } else if level == 1 && entry.isHuge {
                body(address, entry, true)
            } else {
                visit(TableBlock(entry: entry), level: level - 1, base: address, audit: &audit, tableBody, body)
            }
        }
    }
}

/// Result of walking a whole page table.
public struct TableAudit: Sendable, Equatable {
    /// Tables reachable from the root, root included.
    public var tables = 0
    /// Reachable tables whose block is not live (freed or retired): must be zero.
    public var deadTablesReached = 0
}
