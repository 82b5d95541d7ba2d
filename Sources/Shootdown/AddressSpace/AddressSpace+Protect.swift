import Synchronization

extension AddressSpace {
    /// Changes the protection of `[address, address + length)` (`mprotect`), splitting VMAs at the
    /// boundaries and merging them with compatible neighbours afterwards. Each VMA's part is
    /// changed under one `protectionVMA` invalidation whose VMA snapshot carries the new
    /// protection. Write access is only ever removed from entries, never added.
    ///
    /// Linux rules: unaligned address is `EINVAL`; zero length succeeds without doing anything; a
    /// range reaching past the address space or over a hole is `ENOMEM`; splitting beyond
    /// `maxMapCount` is `ENOMEM`. Unlike Linux, a range with a hole fails *before* changing
    /// anything (Linux changes the VMAs below the hole first).
    public func protect(address: UInt64, length: UInt64, protection: Protection) throws(MemoryError) {
        guard Self.isPageAligned(address) else { throw .invalidArgument }
        if length == 0 { return }
        guard let length = Self.pageAlign(length), length <= Self.userLimit,
            address <= Self.userLimit - length
        else { throw .noMemory }
        let end = address + length
        try mmapLock.withWriteLock { () throws(MemoryError) in
            try checkAlive()
            // VMAs that already have the protection are left alone: no split, no invalidation
            // (`mprotect_fixup` returns early), so mirrors keep their translations there.
            try changeVMAs(
                address, end, where: { $0.protection != protection },
                change: { $0.setAttributes(protection: protection, flags: $0.flags) },
                afterPublish: { [self] inside in
                    withSecondaryTLBHook { hook in
                        for vma in inside {
                            let scope = beginInvalidation(vma.start, vma.end, .protectionVMA, vma: snapshot(vma))
                            let changed = pageTable.changeProtection(
                                from: vma.start, to: vma.end, protection: protection, flush: hook)
                            scope.end()
                            count(.pagesWriteProtected, changed)
                        }
                    }
                })
        }
    }

    /// The skeleton of `mprotect_fixup` and `madvise_update_vma`: of the VMAs covering
    /// `[start, end)` (`ENOMEM` on a hole), those `needsChange` selects are split at the bounds,
    /// `change`d, and merged with compatible neighbours; with `afterPublish`, the changed VMAs are
    /// published first and handed to it (mprotect changes the entries then). Nothing happens when
    /// no VMA needs the change, and nothing changes when it throws.
    ///
    /// - Precondition: mmap write lock.
    func changeVMAs(
        _ start: UInt64, _ end: UInt64, where needsChange: (VMA) -> Bool, change: (VMA) -> Void,
        afterPublish: (([VMA]) -> Void)? = nil
    ) throws(MemoryError) {
        let vmas = try coveringVMAs(start, end).filter(needsChange)
        if vmas.isEmpty { return }
        try checkSplitBudget(vmas, start, end)
        let edit = VMAEdit(self)
        let inside = isolate(vmas, start, end, edit: edit)
        for vma in inside { change(vma) }
        if let afterPublish {
            edit.publish()
            afterPublish(inside)
        }
        mergeAll(inside, edit: edit)
        edit.finish()
    }

    /// The VMAs covering `[start, end)` without a hole, or `ENOMEM`.
    func coveringVMAs(_ start: UInt64, _ end: UInt64) throws(MemoryError) -> [VMA] {
        let vmas = index.intersecting(start, end)
        var expected = start
        for vma in vmas {
            if vma.start > expected { throw .noMemory }
            expected = vma.end
        }
        if vmas.isEmpty || expected < end { throw .noMemory }
        return vmas
    }

    /// Throws `ENOMEM` if isolating `[start, end)` would split past `maxMapCount`.
    func checkSplitBudget(_ vmas: [VMA], _ start: UInt64, _ end: UInt64) throws(MemoryError) {
        guard let first = vmas.first, let last = vmas.last else { return }
        let splits = (first.start < start ? 1 : 0) + (last.end > end ? 1 : 0)
        if exceedsMapCount(splitting: splits) { throw .noMemory }
    }

    /// Splits the VMAs at `start` and `end` (and any huge mapping across them) and returns the VMAs
    /// now lying exactly inside `[start, end)`, all touched by `edit`. `vmas` is the ascending list
    /// of VMAs to change within the range (not necessarily contiguous).
    func isolate(_ vmas: [VMA], _ start: UInt64, _ end: UInt64, edit: VMAEdit) -> [VMA] {
        var inside = vmas
        // Each VMA is touched (write-locked) before its huge mapping is split: a fault under the
        // VMA lock could otherwise install a huge mapping across the boundary in between.
        if inside[0].start < start {
            edit.touch(inside[0])
            splitHugeMapping(across: start)
            inside[0] = edit.split(inside[0], at: start)
        }
        if let last = inside.last, last.end > end {
            edit.touch(last)
            splitHugeMapping(across: end)
            edit.split(last, at: end)
        }
        for vma in inside { edit.touch(vma) }
        return inside
    }

    /// Merges every VMA in `vmas` (in order) with compatible neighbours.
    func mergeAll(_ vmas: [VMA], edit: VMAEdit) {
        // `isRemoved` is read as each step comes: an earlier merge may have absorbed a later VMA.
        for vma in vmas where !vma.isRemoved { edit.mergeNeighbours(vma) }
    }
}
