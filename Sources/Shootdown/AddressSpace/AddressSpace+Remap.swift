import Synchronization

extension AddressSpace {
    /// Whether and where mremap may move a mapping.
    public enum RemapMove: Sendable, Hashable {
        /// Resize in place only.
        case inPlace
        /// `MREMAP_MAYMOVE`: move if it cannot grow in place.
        case mayMove
        /// `MREMAP_MAYMOVE | MREMAP_FIXED`: move to exactly `address`, replacing what is there.
        case fixed(UInt64)
    }

    /// Resizes and/or moves the mapping at `[address, address + oldLength)` (`mremap`). The old
    /// range must lie inside one VMA. Moving carries the page-table entries (and so the frames) to
    /// the new place under an `unmap` invalidation of the old range.
    ///
    /// Linux rules: unaligned address, zero new length, zero old length (private memory), an
    /// unaligned fixed target or a target overlapping the source is `EINVAL`; a source not inside
    /// one VMA is `EFAULT`; growth without room and without permission to move is `ENOMEM`; a
    /// move when the VMA count is within 3 of `maxMapCount` is `ENOMEM`. Unlike Linux,
    /// every check runs before anything changes (Linux unmaps a fixed target before checking the
    /// source).
    ///
    /// - Returns: the (possibly new) start address.
    @discardableResult
    public func remap(
        address: UInt64, oldLength: UInt64, newLength: UInt64, move: RemapMove = .inPlace
    ) throws(MemoryError) -> UInt64 {
        guard Self.isPageAligned(address), oldLength != 0, newLength != 0,
            let oldLength = Self.pageAlign(oldLength), let newLength = Self.pageAlign(newLength),
            newLength <= Self.userLimit
        else { throw .invalidArgument }
        if case .fixed(let target) = move {
            guard Self.isPageAligned(target), target <= Self.userLimit - newLength else { throw .invalidArgument }
            if target < address &+ oldLength && address < target + newLength { throw .invalidArgument }
        }
        return try mmapLock.withWriteLock { () throws(MemoryError) -> UInt64 in
            try checkAlive()
            guard oldLength <= Self.userLimit, address <= Self.userLimit - oldLength,
                let vma = index.find(containing: address),
                address + oldLength <= vma.end
            else { throw .badAddress }
            let edit = VMAEdit(self)
            defer { edit.finish() }
            switch move {
            case .fixed(let target):
                try checkMoveBudget()
                if target < configuration.mmapMinAddress { throw .invalidArgument }
                unmapLocked(target, target + newLength, edit: edit)
                var length = oldLength
                if oldLength > newLength {
                    unmapLocked(address + newLength, address + oldLength, edit: edit)
                    length = newLength
                }
                moveMapping(address, length, to: target, newLength: newLength, edit: edit)
                return target
            case .inPlace, .mayMove:
                if newLength <= oldLength {
                    if newLength < oldLength {
                        try checkUnmapBudget(address + newLength, address + oldLength)
                        unmapLocked(address + newLength, address + oldLength, edit: edit)
                    }
                    return address
                }
                let newEnd = address.addingReportingOverflow(newLength)
                if address + oldLength == vma.end, !newEnd.overflow, newEnd.partialValue <= Self.userLimit,
                    index.intersecting(vma.end, newEnd.partialValue).isEmpty
                {
                    // Grow in place (`vma_expand`), merging with the next VMA if compatible.
                    edit.setBounds(vma, start: vma.start, end: newEnd.partialValue)
                    edit.mergeNeighbours(vma)
                    return address
                }
                guard move == .mayMove else { throw .noMemory }
                try checkMoveBudget()
                let target = try findFreeArea(length: newLength)
                moveMapping(address, oldLength, to: target, newLength: newLength, edit: edit)
                return target
            }
        }
    }

    /// Linux's `map_count >= sysctl_max_map_count - 3` check before moving a mapping: `ENOMEM`.
    private func checkMoveBudget() throws(MemoryError) {
        if index.count + 3 >= configuration.maxMapCount { throw .noMemory }
    }

    /// `move_vma`: a new VMA at `target`, the entries moved under an `unmap` invalidation of the
    /// source, then the source unmapped.
    private func moveMapping(_ source: UInt64, _ length: UInt64, to target: UInt64, newLength: UInt64, edit: VMAEdit) {
        guard let vma = index.find(containing: source) else { return }
        edit.touch(vma)
        let moved = VMA(
            start: target, end: target + newLength, protection: vma.protection, flags: vma.flags,
            sharedObject: vma.sharedObject,
            pageOffset: vma.pageOffset + (source - vma.start) / Self.pageSize)
        edit.insert(moved)
        edit.touch(moved)
        splitPartialHugeMappings(source, source + length)
        if (target &- source) % Self.hugePageSize != 0 {
            // Huge mappings move as one entry only between congruent addresses (`move_huge_pmd`).
            splitHugeMappings(source, source + length)
        }
        let scope = beginInvalidation(source, source + length, .unmap, vma: snapshot(vma))
        withSecondaryTLBHook { hook in
            _ = pageTable.moveEntries(from: source, to: target, length: length, flush: hook)
        }
        scope.end()
        unmapLocked(source, source + length, edit: edit)
        edit.mergeNeighbours(moved)
    }
}
