import Synchronization

extension PageTable {
    /// Applies `protection` to every leaf entry in `[start, end)` (`change_protection`): write
    /// access is removed when `protection` lacks write (never added: a later write fault decides),
    /// `PROT_NONE` turns present entries into PROT_NONE entries, and an accessible protection turns
    /// PROT_NONE entries back into read-only present ones.
    ///
    /// - Precondition: invalidation started; mmap write lock; partial huge mappings split.
    /// - Returns: entries changed.
    func changeProtection(
        from start: UInt64, to end: UInt64, protection: Protection, flush: (UInt64, UInt64) -> Void
    ) -> Int {
        var changed = 0
        func transform(_ raw: UInt64) -> UInt64 {
            let entry = PageTableEntry(rawValue: raw)
            if protection.isEmpty {
                guard entry.isPresent else { return raw }
                return entry.without(PageTableEntry.present | PageTableEntry.writable).with(PageTableEntry.protNone)
                    .rawValue
            }
            if entry.isProtNone {
                return entry.without(PageTableEntry.protNone | PageTableEntry.writable).with(PageTableEntry.present)
                    .rawValue
            }
            if entry.isPresent && !protection.contains(.write) {
                return entry.without(PageTableEntry.writable).rawValue
            }
            return raw
        }
        forEachLockedLeafRun(
            from: start, to: end,
            huge: { pmd, index, entry, _, _ in
                let updated = transform(entry.rawValue)
                if updated != entry.rawValue {
                    pmd[index].pointee.store(updated, ordering: .relaxed)
                    changed += 1
                }
            },
            pte: { table, first, last, _ in
                for index in first..<last {
                    let raw = table[index].pointee.load(ordering: .relaxed)
                    if raw == 0 { continue }
                    let updated = transform(raw)
                    if updated != raw {
                        table[index].pointee.store(updated, ordering: .relaxed)
                        changed += 1
                    }
                }
            },
            flush: flush)
        return changed
    }

    /// Moves every leaf entry of `[from, from + length)` to `[to, to + length)`
    /// (`move_page_tables`), allocating destination tables. Every moved entry (present, PROT_NONE
    /// or swap) becomes soft-dirty (`move_soft_dirty_pte`). Aligned whole huge mappings move as one
    /// entry.
    ///
    /// Every source chunk is flushed with `flush` (the secondary-TLB hook) while its lock is still
    /// held, right after its entries are cleared and before they appear at the destination, as
    /// `move_ptes` and `move_huge_pmd` flush the old range under the page-table lock.
    ///
    /// - Precondition: invalidation of the source started; mmap write lock; partial huge mappings
    ///   split; the destination empty; both ranges page-aligned.
    /// - Returns: entries moved.
    func moveEntries(
        from source: UInt64, to destination: UInt64, length: UInt64, flush: (UInt64, UInt64) -> Void
    ) -> Int {
        var moved = 0
        var offset: UInt64 = 0
        while offset < length {
            let from = source + offset
            let to = destination + offset
            let chunk = min(Self.nextBoundary(from, level: 1) - from, Self.nextBoundary(to, level: 1) - to, length - offset)
            defer { offset += chunk }
            guard let (pmd, pmdIndex) = existingPMDSlot(from) else { continue }
            let pmdEntry = pmd.load(pmdIndex)
            if pmdEntry.isNone { continue }
            guard let destinationPMD = pmdTable(for: to) else { preconditionFailure("out of host memory for page tables") }
            let destinationIndex = Self.index(to, level: 1)
            if pmdEntry.isHuge {
                checkInvariant(chunk == Self.hugePageSize, "partial huge mapping left for a move")
                pmdLock(pmd).withLock {
                    pmd[pmdIndex].pointee.store(0, ordering: .relaxed)
                    flush(from, from + chunk)
                }
                checkInvariant(destinationPMD.load(destinationIndex).isNone, "moving a huge mapping over a table")
                pmdLock(destinationPMD).withLock {
                    destinationPMD[destinationIndex].pointee.store(
                        pmdEntry.with(PageTableEntry.softDirty).rawValue, ordering: .releasing)
                }
                moved += 1
                continue
            }
            let sourceTable = TableBlock(entry: pmdEntry)
            guard let destinationTable = pteTable(in: destinationPMD, at: destinationIndex) else {
                preconditionFailure("out of host memory for page tables")
            }
            let first = Self.index(from, level: 0)
            let count = Int(chunk >> 12)
            let target = Self.index(to, level: 0)
            withUnsafeTemporaryAllocation(of: UInt64.self, capacity: count) { buffer in
                pteLock(sourceTable).withLock {
                    for index in 0..<count {
                        buffer[index] = sourceTable[first + index].pointee.exchange(0, ordering: .relaxed)
                    }
                    flush(from, from + chunk)
                }
                pteLock(destinationTable).withLock {
                    for index in 0..<count where buffer[index] != 0 {
                        let entry = PageTableEntry(rawValue: buffer[index]).with(PageTableEntry.softDirty)
                        destinationTable[target + index].pointee.store(entry.rawValue, ordering: .releasing)
                        moved += 1
                    }
                }
            }
        }
        return moved
    }

    /// The PMD table and slot covering `address`, if the upper tables exist. Inlined always:
    /// the access paths revalidate with it under the split lock, where a call would cost more
    /// than the two loads.
    @inline(__always)
    func existingPMDSlot(_ address: UInt64) -> (TableBlock, Int)? {
        var table = root
        for level in stride(from: 3, to: 1, by: -1) {
            let entry = table.load(Self.index(address, level: level))
            if entry.isNone { return nil }
            table = TableBlock(entry: entry)
        }
        return (table, Self.index(address, level: 1))
    }
}
