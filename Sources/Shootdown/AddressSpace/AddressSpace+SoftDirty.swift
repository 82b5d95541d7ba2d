import Synchronization

extension AddressSpace {
    /// Re-arms soft-dirty tracking for `[address, address + length)` (the default: the whole
    /// space), like `echo 4 > /proc/pid/clear_refs`: clears the soft-dirty bit of every entry and
    /// write-protects present ones under one `softDirty` invalidation, and clears `VM_SOFTDIRTY` on
    /// VMAs wholly inside the range. A huge mapping the range only partly covers is write-protected
    /// as a whole (not split), and the invalidation then reaches to that block's edge. The next write to a page faults and marks it soft-dirty again.
    ///
    /// - Throws: `EINVAL` for an unaligned or overflowing range; ``MemoryError/addressSpaceDead``.
    public func clearSoftDirty(address: UInt64 = 0, length: UInt64 = AddressSpace.userLimit) throws(MemoryError) {
        let end = try Self.userRangeEnd(address, length)
        if end == address { return }
        try mmapLock.withWriteLock { () throws(MemoryError) in
            try checkAlive()
            let edit = VMAEdit(self)
            let vmas = index.intersecting(address, end)
            for vma in vmas {
                edit.touch(vma)
                if vma.start >= address && vma.end <= end && vma.flags.contains(.softDirty) {
                    vma.setAttributes(protection: vma.protection, flags: vma.flags.subtracting(.softDirty))
                }
            }
            if let first = vmas.first, let last = vmas.last {
                let start = max(address, first.start)
                let stop = min(end, last.end)
                // A huge entry the range only partly covers is write-protected whole (not split):
                // the invalidation then covers its whole block, or a mirror would keep writable
                // translations of its other pages. (Entries cannot become huge meanwhile: the
                // VMAs are touched under the mmap write lock.)
                let mask = Self.hugePageSize - 1
                let low = start & mask != 0 && translate(start)?.isHuge == true ? start & ~mask : start
                let high = stop & mask != 0 && translate(stop - 1)?.isHuge == true ? (stop | mask) + 1 : stop
                let scope = beginInvalidation(low, high, .softDirty)
                let clear = PageTableEntry.softDirty | PageTableEntry.writable
                var protected = 0
                withSecondaryTLBHook { hook in
                    pageTable.forEachLockedLeafRun(
                        from: start, to: stop,
                        huge: { pmd, index, entry, _, _ in
                            pmd[index].pointee.store(entry.without(clear).rawValue, ordering: .relaxed)
                        },
                        pte: { table, first, last, _ in
                            for index in first..<last {
                                let raw = table[index].pointee.load(ordering: .relaxed)
                                if raw & clear == 0 { continue }
                                let entry = PageTableEntry(rawValue: raw)
                                let updated = entry.isSwap ? entry.without(PageTableEntry.softDirty) : entry.without(clear)
                                table[index].pointee.store(updated.rawValue, ordering: .relaxed)
                                if entry.isWritable { protected += 1 }
                            }
                        },
                        flush: hook)
                }
                scope.end()
                count(.pagesWriteProtected, protected)
            }
            edit.finish()
        }
    }

    /// The pages of `[address, address + length)` written since the last ``clearSoftDirty(address:length:)``
    /// (pagemap's `PM_SOFT_DIRTY`): every page of a VMA still marked `VM_SOFTDIRTY`, mapped or not,
    /// and every page whose entry carries the soft-dirty bit.
    public func softDirtyPages(address: UInt64, length: UInt64) throws(MemoryError) -> [UInt64] {
        let end = try Self.userRangeEnd(address, length)
        return try mmapLock.withReadLock { () throws(MemoryError) -> [UInt64] in
            try checkAlive()
            var pages: [UInt64] = []
            for vma in index.intersecting(address, end) {
                let start = max(address, vma.start)
                let stop = min(end, vma.end)
                if vma.flags.contains(.softDirty) {
                    pages.append(contentsOf: stride(from: start, to: stop, by: Int(Self.pageSize)))
                    continue
                }
                var page = start
                while page < stop {
                    if let entry = translate(page), entry.isSoftDirty { pages.append(page) }
                    page += Self.pageSize
                }
            }
            return pages
        }
    }
}
