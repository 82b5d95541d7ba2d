import Synchronization

extension PageTable {
    /// Replaces the huge mapping in PMD slot `index` of `pmd` by a PTE table of 512 entries with
    /// the same bits (`__split_huge_pmd`). The compound frame becomes 512 frames.
    ///
    /// The huge translation is flushed with `flush` (the secondary-TLB hook) for `[hugeStart,
    /// hugeStart + 2 MiB)` under the PMD lock once the table replaced it, as splitting a huge PMD
    /// invalidates it first: a TLB sharing this page table must not keep the 2 MiB entry beside
    /// the new 4 KiB ones.
    ///
    /// - Precondition: the 2 MiB range is being invalidated (start called); mmap lock held.
    /// - Returns: `false` if no table block could be allocated (nothing changed).
    func splitHuge(
        pmd: TableBlock, index: Int, hugeStart: UInt64, memory: PhysicalMemory, flush: (UInt64, UInt64) -> Void
    ) -> Bool {
        guard let table = TableAllocator.shared.allocate() else { return false }
        let lock = pmdLock(pmd)
        lock.lock()
        let entry = pmd.load(index)
        guard entry.isHuge else {
            lock.unlock()
            TableAllocator.shared.free(table)
            return true
        }
        let head = entry.number
        let bits = entry.rawValue & (PageTableEntry.writable | PageTableEntry.dirty | PageTableEntry.softDirty
            | PageTableEntry.accessed | PageTableEntry.user | PageTableEntry.present | PageTableEntry.protNone)
        for offset in 0..<TableBlock.entries {
            table[offset].pointee.store((head + UInt64(offset)) << 12 | bits, ordering: .relaxed)
        }
        memory.splitCompound(head)
        // Releasing: the filled table is visible to lockless walkers that load the new entry.
        pmd[index].pointee.store(PageTableEntry.table(at: table.address).rawValue, ordering: .releasing)
        flush(hugeStart, hugeStart &+ Self.hugePageSize)
        lock.unlock()
        return true
    }

    /// The PMD slot mapping `address` with a huge entry, if any.
    func hugeSlot(containing address: UInt64) -> (pmd: TableBlock, index: Int)? {
        guard let (pmd, index) = existingPMDSlot(address), pmd.load(index).isHuge else { return nil }
        return (pmd, index)
    }
}

extension AddressSpace {
    /// Splits the huge mapping that spans `address` (when `address` is not 2 MiB aligned), under
    /// its own `clear` invalidation of the 2 MiB range, as a VMA split or a partial operation needs.
    ///
    /// - Precondition: mmap lock held.
    func splitHugeMapping(across address: UInt64) {
        if address % Self.hugePageSize == 0 { return }
        splitHugeMapping(containing: address)
    }

    /// Splits the huge mapping containing `address`, if any.
    func splitHugeMapping(containing address: UInt64) {
        guard let (pmd, slot) = pageTable.hugeSlot(containing: address) else { return }
        let start = address & ~(Self.hugePageSize - 1)
        let scope = beginInvalidation(
            start, start + Self.hugePageSize, .clear, vma: index.find(containing: address).map(snapshot))
        let split = withSecondaryTLBHook { hook in
            pageTable.splitHuge(pmd: pmd, index: slot, hugeStart: start, memory: memory, flush: hook)
        }
        if split { count(.hugePagesSplit) }
        scope.end()
    }

    /// Splits every huge mapping that `[start, end)` covers only partly.
    func splitPartialHugeMappings(_ start: UInt64, _ end: UInt64) {
        splitHugeMapping(across: start)
        splitHugeMapping(across: end)
    }

    /// Splits every huge mapping lying wholly inside `[start, end)`.
    func splitHugeMappings(_ start: UInt64, _ end: UInt64) {
        var address = (start + Self.hugePageSize - 1) & ~(Self.hugePageSize - 1)
        while address + Self.hugePageSize <= end {
            splitHugeMapping(containing: address)
            address += Self.hugePageSize
        }
    }
}
