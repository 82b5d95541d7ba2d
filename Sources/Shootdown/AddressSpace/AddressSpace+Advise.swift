import Synchronization

extension AddressSpace {
    /// Advice for ``advise(address:length:advice:)`` (`madvise`).
    public enum Advice: String, Sendable, CaseIterable {
        /// `MADV_DONTNEED`: drop the pages; private memory reads back as zeros (event `clear`).
        case dontNeed
        /// `MADV_PAGEOUT`: write exclusive private pages to swap (event `clear`); a later fault
        /// reads them back.
        case pageOut
        /// `MADV_HUGEPAGE`: allow 2 MiB mappings.
        case hugePage
        /// `MADV_NOHUGEPAGE`.
        case noHugePage
        /// `MADV_POPULATE_READ`.
        case populateRead
        /// `MADV_POPULATE_WRITE`.
        case populateWrite
    }

    /// Applies `advice` to `[address, address + length)` (`madvise`).
    ///
    /// Linux rules: unaligned address or a length that overflows (rounded up, or added to the
    /// address) is `EINVAL`; zero length succeeds; a range past the address space or with a hole is
    /// `ENOMEM`; `dontNeed`/`pageOut` on a locked VMA is `EINVAL`; `populateWrite` on a
    /// mapping without write access (or `populateRead` on `PROT_NONE`) is `EFAULT`. Unlike Linux,
    /// a range with a hole fails before anything changes.
    public func advise(address: UInt64, length: UInt64, advice: Advice) throws(MemoryError) {
        guard Self.isPageAligned(address), let length = Self.pageAlign(length),
            !address.addingReportingOverflow(length).overflow
        else { throw .invalidArgument }
        if length == 0 { return }
        guard address <= Self.userLimit, length <= Self.userLimit - address else { throw .noMemory }
        let end = address + length
        switch advice {
        case .dontNeed, .pageOut:
            try mmapLock.withReadLock { () throws(MemoryError) in
                try checkAlive()
                let vmas = try coveringVMAs(address, end)
                if vmas.contains(where: { $0.flags.contains(.locked) }) { throw .invalidArgument }
                let edit = VMAEdit(self, writerLocks: true)
                for vma in vmas { edit.touch(vma) }
                splitPartialHugeMappings(address, end)
                for vma in vmas {
                    let start = max(address, vma.start)
                    let stop = min(end, vma.end)
                    if advice == .dontNeed {
                        zapAndEnd(beginInvalidation(start, stop, .clear, vma: snapshot(vma)), start, stop)
                    } else if vma.isAnonymousPrivate {
                        pageOut(start, stop, vma: vma)
                    }
                }
                edit.finish()
            }
        case .hugePage, .noHugePage:
            try mmapLock.withWriteLock { () throws(MemoryError) in
                try checkAlive()
                // VMAs that already carry the advice are left alone (no split).
                let (set, cleared): (MappingFlags, MappingFlags) =
                    advice == .hugePage ? (.hugePage, .noHugePage) : (.noHugePage, .hugePage)
                try changeVMAs(
                    address, end, where: { !$0.flags.contains(set) || $0.flags.contains(cleared) },
                    change: { $0.setAttributes(protection: $0.protection, flags: $0.flags.union(set).subtracting(cleared)) })
            }
        case .populateRead, .populateWrite:
            let write = advice == .populateWrite
            try mmapLock.withReadLock { () throws(MemoryError) in
                try checkAlive()
                let vmas = try coveringVMAs(address, end)
                if vmas.contains(where: { !Self.accessAllowed($0.protection, write ? .write : .read) }) {
                    throw .badAddress
                }
            }
            try populate(address, length: length, write: write)
        }
    }

    /// Writes the exclusive private pages of `[start, end)` to swap under one `clear`
    /// invalidation (at most `limit` of them). Shared, zero-page and huge entries stay. Returns
    /// pages swapped out. Software TLBs are shot down under each table's lock before its content
    /// is written to swap (a store through a stale entry would otherwise be lost).
    ///
    /// - Precondition: mmap lock held; the VMA in an edit's write section.
    @discardableResult
    func pageOut(_ start: UInt64, _ end: UInt64, vma: VMA, limit: Int = .max) -> Int {
        let scope = beginInvalidation(start, end, .clear, vma: snapshot(vma))
        var chain = FrameChain()
        var swapped = 0
        var swapFull = false
        withSecondaryTLBHook { hook in
            pageTable.forEachLockedLeafRun(
                from: start, to: end, huge: { _, _, _, _, _ in },
                pte: { table, first, last, chunkStart in
                    shootDownTLBsLocked(table, first, last, chunkStart) {
                        $0.isPresent && memory.isExclusive($0.number)
                    }
                    for index in first..<last where swapped < limit && !swapFull {
                        let entry = PageTableEntry(rawValue: table[index].pointee.load(ordering: .relaxed))
                        // isExclusive is false for the zero page.
                        guard entry.isPresent, memory.isExclusive(entry.number) else { continue }
                        guard let slot = memory.swap.store(memory.token(of: entry.number)) else {
                            swapFull = true
                            continue
                        }
                        table[index].pointee.store(
                            PageTableEntry.swapEntry(slot: slot, softDirty: entry.isSoftDirty).rawValue,
                            ordering: .relaxed)
                        memory.unmapFrame(entry.number, into: &chain)
                        swapped += 1
                    }
                },
                flush: hook)
        }
        scope.endWithoutTLBShootdown()  // shot down per table above
        memory.release(chain)
        count(.pagesSwappedOut, swapped)
        return swapped
    }
}
