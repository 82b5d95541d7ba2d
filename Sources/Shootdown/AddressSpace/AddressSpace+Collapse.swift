import Synchronization

extension AddressSpace {
    /// Collapses every 2 MiB-aligned block of `[address, address + length)` that lies in a
    /// huge-page-allowed private VMA into one huge mapping (`khugepaged`'s `collapse_huge_page`, or
    /// `MADV_COLLAPSE`): the 512 entries must be present or empty, with frames nobody else maps; their
    /// content is copied into a new compound frame, the PMD entry replaced under a `clear`
    /// invalidation of the block, the old frames freed after its end and the PTE table after a
    /// grace period.
    ///
    /// - Returns: blocks collapsed.
    /// - Throws: `EINVAL` for an unaligned or overflowing range; ``MemoryError/addressSpaceDead``.
    public func collapse(address: UInt64, length: UInt64) throws(MemoryError) -> Int {
        let end = try Self.userRangeEnd(address, length)
        return try mmapLock.withWriteLock { () throws(MemoryError) -> Int in
            try checkAlive()
            let edit = VMAEdit(self)
            var collapsed = 0
            var scanned = 0
            func alignUp(_ value: UInt64) -> UInt64 { (value + Self.hugePageSize - 1) & ~(Self.hugePageSize - 1) }
            var block = alignUp(address)
            while block + Self.hugePageSize <= end {
                // Holes are skipped VMA to VMA, not block by block (a range of the whole address
                // space took 40 s under the fuzzer).
                guard let vma = index.findFirst(endingAfter: block) else { break }
                if vma.start > block {
                    block = alignUp(vma.start)
                    continue
                }
                scanned += 1
                if vma.allowsHuge(at: block) {
                    edit.touch(vma)
                    if collapseBlock(block, vma: vma, retire: edit.retire) { collapsed += 1 }
                }
                block += Self.hugePageSize
            }
            edit.finish()
            count(.hugePagesCollapsed, collapsed)
            count(.hugePageBlocksScanned, scanned)
            return collapsed
        }
    }

    /// `MADV_COLLAPSE` over `[address, end)` (page-aligned; the madvise checks done): VMA by VMA
    /// like every advice (holes are `ENOMEM` at the end), each 2 MiB-aligned block inside both the
    /// range and the VMA collapsed synchronously, whatever the VMA's `hg` (a forced collapse).
    ///
    /// Linux rules (measured on 6.18, and by the oracle): a VMA with `nh` or too small to hold an
    /// aligned block, a shared one whose addresses and object offsets disagree modulo 2 MiB, a
    /// private one that never had a page written (no `anon_vma`; read-only or
    /// not), and a VMA piece that lies inside one block without reaching its end (the
    /// aligned start passes the aligned end), is `EINVAL`, stopping the walk; a piece holding no
    /// whole block otherwise succeeds doing nothing; a block already huge succeeds; a block that
    /// cannot be collapsed (no page table: nothing was ever touched there; a guard marker; a swap
    /// entry; a pinned frame; a frame a fork shares is copied, not refused) makes the call
    /// `EINVAL` after the VMA's other blocks were tried (those collapsed stay collapsed). Shared memory (shmem) collapses into its object,
    /// whatever the protection: a block whose object pages are not 2 MiB-aligned, or of which the
    /// object holds no page at all, fails the same way; otherwise every page of the block is put
    /// in the object (mincore then shows all 512 resident) and the mappings are left as they are
    /// (no huge mapping of shared memory here). Each private collapse sends a `clear`
    /// invalidation of its block.
    func adviseCollapse(_ address: UInt64, _ end: UInt64) throws(MemoryError) {
        let huge = Self.hugePageSize
        try mmapLock.withWriteLock { () throws(MemoryError) in
            try checkAlive()
            let edit = VMAEdit(self)
            defer { edit.finish() }
            var collapsed = 0
            defer { count(.hugePagesCollapsed, collapsed) }
            try walkVMAs(address, end, stopAtHole: false) { vma, start, stop throws(MemoryError) in
                let vmaFirst = (vma.start + huge - 1) & ~(huge - 1)
                if vma.flags.contains(.noHugePage) || vmaFirst + huge > vma.end { throw .invalidArgument }
                // Shared memory whose addresses and object offsets disagree modulo 2 MiB can hold
                // no huge page anywhere: the whole VMA is refused, even a piece without a whole
                // block (measured; oracle seed 21).
                if vma.sharedObject != nil, (vma.start / Self.pageSize &- vma.pageOffset) % (huge / Self.pageSize) != 0 {
                    throw .invalidArgument
                }
                // `madvise_collapse` counts blocks as (aligned end - aligned start): a piece inside
                // one block that starts past its start makes that negative, never matched.
                let firstBlock = (start + huge - 1) & ~(huge - 1)
                if firstBlock > stop & ~(huge - 1) { throw .invalidArgument }
                if let object = vma.sharedObject {
                    if !collapseShared(object, vma: vma, firstBlock, stop) { throw .invalidArgument }
                    return
                }
                // Private memory without an anon_vma (never written) is refused, whatever the range
                // (`thp_vma_allowable_order`); with one, read-only memory collapses too (measured).
                if vma.anonVMA == 0 { throw .invalidArgument }
                var failed = false
                var block = firstBlock
                while block + huge <= stop {
                    defer { block += huge }
                    if translate(block)?.isHuge == true { continue }
                    edit.touch(vma)
                    if collapseBlock(block, vma: vma, retire: edit.retire, forced: true) { collapsed += 1 } else { failed = true }
                }
                if failed { throw .invalidArgument }
            }
        }
    }

    /// Collapses the blocks of shared `vma` from `firstBlock` to `stop` into `object` (shmem's
    /// `collapse_file`): each block's object pages must start 2 MiB-aligned and hold at least one
    /// cached page; then all 512 are cached (new ones zero-filled). Returns whether every block
    /// collapsed. Caller: mmap write lock.
    private func collapseShared(_ object: SharedMemoryObject, vma: VMA, _ firstBlock: UInt64, _ stop: UInt64) -> Bool {
        let pagesPerBlock = Self.hugePageSize / Self.pageSize
        var failed = false
        var block = firstBlock
        while block + Self.hugePageSize <= stop {
            defer { block += Self.hugePageSize }
            let first = vma.pageOffset + (block - vma.start) / Self.pageSize
            if first % pagesPerBlock != 0 || !object.cacheWholeBlock(first, pages: pagesPerBlock) { failed = true }
        }
        return !failed
    }

    /// Collapses one block of private `vma`. Every frame must be referenced by mappings only;
    /// khugepaged (`forced: false`) also wants them mapped by this table alone, `MADV_COLLAPSE`
    /// (`forced: true`) copies pages a fork shares too (measured: both the parent and the child
    /// collapse, the other keeps its small pages). Caller: mmap write lock.
    private func collapseBlock(_ block: UInt64, vma: VMA, retire: RetireList, forced: Bool = false) -> Bool {
        guard let (pmd, pmdIndex) = pageTable.existingPMDSlot(block) else { return false }
        let pmdEntry = pmd.load(pmdIndex)
        guard !pmdEntry.isNone, !pmdEntry.isHuge else { return false }
        let table = TableBlock(entry: pmdEntry)
        func eligible() -> Bool {
            var present = 0
            for index in 0..<TableBlock.entries {
                let entry = table.load(index)
                if entry.isNone { continue }
                guard entry.isPresent else { return false }
                if entry.number != PhysicalMemory.zeroFrame {
                    guard forced ? memory.isReferencedOnlyByMappings(entry.number) : memory.isExclusive(entry.number)
                    else { return false }
                    present += 1
                }
            }
            return present > 0
        }
        guard eligible(), let head = memory.allocateHuge() else { return false }
        let scope = beginInvalidation(block, block + Self.hugePageSize, .clear, vma: snapshot(vma))
        var chain = FrameChain()
        let pteLock = pageTable.pteLock(table)
        let pmdLock = pageTable.pmdLock(pmd)
        pmdLock.lock()
        if pteLock.word != pmdLock.word { pteLock.lock() }
        // Speculative faults (on empty entries) may have changed the table meanwhile, and stores
        // through present entries (which take only this split lock) may have changed the content:
        // copy it here, as each entry goes, so no store can land in an old frame after its copy.
        let stillEligible = eligible()
        if stillEligible {
            // Before the copy: a store through a stale TLB entry must not land after it.
            shootDownTLBsLocked(block, block + Self.hugePageSize)
            for index in 0..<TableBlock.entries {
                let entry = PageTableEntry(rawValue: table[index].pointee.exchange(0, ordering: .relaxed))
                if entry.isPresent {
                    memory.setToken(memory.token(of: entry.number), of: head + UInt64(index))
                    memory.unmapFrame(entry.number, into: &chain)
                }
            }
            // Dirty, hence soft-dirty (as x86's `pmd_mkdirty` sets both): the entry is writable, so
            // no later write faults to record itself.
            let huge = PageTableEntry.leaf(
                frame: head, writable: vma.protection.contains(.write), dirty: true, softDirty: true, huge: true)
            pmd[pmdIndex].pointee.store(huge.rawValue, ordering: .releasing)
            withSecondaryTLBHook { hook in hook(block, block + Self.hugePageSize) }
        }
        if pteLock.word != pmdLock.word { pteLock.unlock() }
        pmdLock.unlock()
        scope.endWithoutTLBShootdown()  // shot down above, or nothing changed
        memory.release(chain)
        if stillEligible {
            retire.retire(table: table, level: 0)
        } else {
            memory.freeUnusedHuge(head)
        }
        return stillEligible
    }
}

extension SharedMemoryObject {
    /// Caches every page of `[first, first + pages)` (zero-filled frames for the missing ones)
    /// if at least one is cached already; returns whether it did (false also when out of frames,
    /// with the pages cached so far kept, as a partly filled block is in the page cache).
    fileprivate func cacheWholeBlock(_ first: UInt64, pages count: UInt64) -> Bool {
        pages.withLock { pages -> Bool in
            guard (first..<first + count).contains(where: { pages[$0] != nil }) else { return false }
            for offset in first..<first + count where pages[offset] == nil {
                // One reference: the cache's.
                guard let frame = memory.allocate(initialCounts: PhysicalMemory.refOne) else { return false }
                pages[offset] = frame
            }
            return true
        }
    }
}
