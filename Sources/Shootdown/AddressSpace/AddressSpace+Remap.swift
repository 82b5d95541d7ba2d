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

    /// `mremap` flags, built from the raw Linux bits (unknown bits are kept, so `EINVAL` for them
    /// is testable).
    public struct RemapFlags: OptionSet, Hashable, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }

        /// `MREMAP_MAYMOVE`.
        public static let mayMove = RemapFlags(rawValue: 1)
        /// `MREMAP_FIXED` (needs ``mayMove``).
        public static let fixed = RemapFlags(rawValue: 2)
        /// `MREMAP_DONTUNMAP` (needs ``mayMove`` and equal lengths): move the pages, keep the old
        /// VMA (empty) in place.
        public static let dontUnmap = RemapFlags(rawValue: 4)
    }

    /// Resizes and/or moves the mapping at `[address, address + oldLength)` (`mremap`) with the
    /// convenience form of the flags (``RemapMove``).
    @discardableResult
    public func remap(
        address: UInt64, oldLength: UInt64, newLength: UInt64, move: RemapMove = .inPlace
    ) throws(MemoryError) -> UInt64 {
        switch move {
        case .inPlace: try remap(address: address, oldLength: oldLength, newLength: newLength, flags: [], newAddress: 0)
        case .mayMove: try remap(address: address, oldLength: oldLength, newLength: newLength, flags: .mayMove, newAddress: 0)
        case .fixed(let target):
            try remap(address: address, oldLength: oldLength, newLength: newLength, flags: [.mayMove, .fixed], newAddress: target)
        }
    }

    /// Resizes and/or moves the mapping at `[address, address + oldLength)` (`mremap`). Moving
    /// carries the page-table entries (and so the frames, guard markers and swap entries) to the
    /// new place under an `unmap` invalidation of the old range; shrinking unmaps the tail
    /// (`unmap`).
    ///
    /// Linux rules, in Linux's order (measured on 6.18, and by the live-kernel oracle):
    /// - unknown flag bits, an unaligned address, ``RemapFlags/fixed`` or
    ///   ``RemapFlags/dontUnmap`` without ``RemapFlags/mayMove``: `EINVAL`; both lengths are
    ///   rounded up to pages wrapping like `PAGE_ALIGN` (a length within a page of 2^64 becomes 0);
    ///   a zero new length or one above `userLimit` is `EINVAL`; ``RemapFlags/dontUnmap`` with
    ///   different rounded lengths is `EINVAL`;
    /// - with ``RemapFlags/fixed`` or ``RemapFlags/dontUnmap``: an unaligned `newAddress`, a target
    ///   range past `userLimit`, or one overlapping the source is `EINVAL` (with
    ///   ``RemapFlags/dontUnmap`` alone `newAddress` is then only a hint, 0 included, and one
    ///   not raised to `hintMinAddress` as mmap's are);
    /// - no VMA at `address` is `EFAULT`; that VMA sealed is `EPERM` (whatever the lengths); a
    ///   zero old length duplicates a shared mapping (needs ``RemapFlags/mayMove``, else `ENOMEM`)
    ///   and is `EINVAL` for private memory; a fixed target below `mmapMinAddress` without
    ///   `CAP_SYS_RAWIO` is `EPERM` only once the target (and a shrinking source's tail) is
    ///   unmapped, where Linux validates the new address (measured);
    /// - shrinking (new < old, not fixed) unmaps `[address + new, address + old)` whatever VMAs or
    ///   holes it spans (`EINVAL` past `userLimit`, `EPERM` with nothing unmapped if a sealed VMA
    ///   is there) and returns `address`; equal lengths without a move return `address`;
    /// - with ``RemapFlags/fixed`` and equal lengths the old range may span several VMAs and
    ///   holes: each VMA (or part) moves to the same offset from `newAddress`, holes stay holes,
    ///   and only the target parts that VMAs land on are replaced; an error at a later VMA leaves
    ///   the earlier ones moved;
    /// - otherwise the old range must lie in one VMA (`EFAULT`; a fixed shrink only its kept part,
    ///   its tail is unmapped first: `EINVAL` past `userLimit`, `EPERM` if sealed); growing a
    ///   locked VMA past `RLIMIT_MEMLOCK` without `CAP_IPC_LOCK` is `EAGAIN`; growth happens in
    ///   place when the range ends at the VMA's end and no VMA is in the way (a stack guard gap
    ///   does not stop it), else by a move with ``RemapFlags/mayMove`` (`ENOMEM` without); more
    ///   than `maxMapCount - 3` VMAs is `ENOMEM`; a fixed target is unmapped only once every check
    ///   passed (`EPERM` if sealed); a non-fixed move of private memory whose length is a 2 MiB
    ///   multiple is placed like mmap places it (2 MiB-aligned inside a padded gap);
    /// - a locked VMA's new pages are populated, whether it grew in place or moved;
    /// - ``RemapFlags/dontUnmap`` keeps the old VMA (its pages moved away), clears its `lo`/`lf`
    ///   as a whole, even the parts outside the moved range, and when the whole VMA moved, unlinks
    ///   its `anon_vma` identity.
    ///
    /// - Returns: the (possibly new) start address.
    @discardableResult
    public func remap(
        address: UInt64, oldLength: UInt64, newLength: UInt64, flags: RemapFlags, newAddress: UInt64
    ) throws(MemoryError) -> UInt64 {
        let known: RemapFlags = [.mayMove, .fixed, .dontUnmap]
        guard flags.isSubset(of: known), Self.isPageAligned(address) else { throw .invalidArgument }
        if flags.contains(.fixed) || flags.contains(.dontUnmap), !flags.contains(.mayMove) { throw .invalidArgument }
        // `PAGE_ALIGN`, wrapping like Linux's: a length within a page of 2^64 becomes 0.
        let oldLength = (oldLength &+ (Self.pageSize - 1)) & ~(Self.pageSize - 1)
        let newLength = (newLength &+ (Self.pageSize - 1)) & ~(Self.pageSize - 1)
        guard newLength != 0, newLength <= Self.userLimit else { throw .invalidArgument }
        if flags.contains(.dontUnmap) && oldLength != newLength { throw .invalidArgument }
        if flags.contains(.fixed) || flags.contains(.dontUnmap) {
            // A new address is implied (with DONTUNMAP alone it is a hint, 0 included): aligned,
            // inside the user space, not overlapping the source (oracle).
            guard Self.isPageAligned(newAddress), newAddress <= Self.userLimit - newLength else { throw .invalidArgument }
            if newAddress < address &+ oldLength && address < newAddress + newLength { throw .invalidArgument }
        }
        var populate: (UInt64, UInt64, Bool)? = nil
        defer { if let (start, length, write) = populate { try? self.populate(start, length: length, write: write) } }
        return try mmapLock.withWriteLock { () throws(MemoryError) -> UInt64 in
            try checkAlive()
            let oldEnd = address.addingReportingOverflow(oldLength)
            // The VMA at `address` first (EFAULT), then its seal (EPERM, even for a call that
            // would change nothing); sealed VMAs further on only matter where they are unmapped
            // or moved (measured).
            guard let vma = index.find(containing: address) else { throw .badAddress }
            if vma.isSealed { throw .permissionDenied }
            if oldLength == 0 {
                guard vma.flags.contains(.mayShare) else { throw .invalidArgument }
                if !flags.contains(.mayMove) { throw .noMemory }
            }
            let edit = VMAEdit(self)
            defer { edit.finish() }
            if !flags.contains(.fixed) && !flags.contains(.dontUnmap) && newLength <= oldLength {
                if newLength < oldLength {
                    guard !oldEnd.overflow, oldEnd.partialValue <= Self.userLimit else { throw .invalidArgument }
                    try checkNotSealed(address + newLength, oldEnd.partialValue, splittingWith: edit)
                    try checkUnmapBudget(address + newLength, oldEnd.partialValue)
                    unmapLocked(address + newLength, oldEnd.partialValue, edit: edit)
                }
                return address
            }
            if flags.contains(.fixed) && oldLength == newLength && oldLength != 0 {
                return try moveEachVMA(address, oldLength, to: newAddress, keepSource: flags.contains(.dontUnmap), edit: edit)
            }
            let moveLength = min(oldLength, newLength)
            // A fixed shrink unmaps the tail first, so only the part kept must lie in the VMA.
            let fixedShrink = flags.contains(.fixed) && oldLength > newLength
            guard oldLength == 0
                || (!oldEnd.overflow && address + moveLength <= vma.end && (fixedShrink || oldEnd.partialValue <= vma.end))
            else { throw .badAddress }
            // Growing a locked VMA, or duplicating one (old length 0, the whole new length
            // counts): the locked-memory limit before any search for room (EAGAIN; measured).
            if vma.isLocked && newLength > oldLength {
                try checkLockLimit(adding: newLength - oldLength, mapping: false)
            }
            if !flags.contains(.fixed) && !flags.contains(.dontUnmap) && oldLength != 0 {
                let newEnd = address.addingReportingOverflow(newLength)
                // Growth in place needs only that no VMA is in the way (`vma_expandable`: a fixed
                // range check, no stack guard gap; oracle).
                if address + oldLength == vma.end, !newEnd.overflow, newEnd.partialValue <= Self.userLimit,
                    !index.contains(intersecting: vma.end, newEnd.partialValue, where: { _ in true })
                {
                    // Grow in place (`vma_merge_extend`), merging with the next VMA if
                    // compatible, never with the one before (oracle: in a fork child, two equal
                    // VMAs stay apart when the upper one grows).
                    try checkRemapCharge(vma, oldLength, newLength, keepSource: false)
                    let oldVMAEnd = vma.end
                    edit.setBounds(vma, start: vma.start, end: newEnd.partialValue)
                    let merged = edit.mergeNeighbours(vma, backward: false, chain: false)
                    if merged.isLocked && !merged.flags.contains(.lockOnFault) && !merged.protection.isEmpty {
                        let write = !merged.isShared && merged.protection.contains(.write)
                        populate = (oldVMAEnd, newEnd.partialValue - oldVMAEnd, write)
                    }
                    return address
                }
                guard flags.contains(.mayMove) else { throw .noMemory }
            }
            try checkMoveBudget()
            let target: UInt64
            if flags.contains(.fixed) {
                try checkNotSealed(newAddress, newAddress + newLength, splittingWith: edit)
                unmapLocked(newAddress, newAddress + newLength, edit: edit)
                if fixedShrink {
                    // Then the tail goes through munmap's checks, the target already unmapped
                    // (measured): past the user space it is EINVAL (the engine used to zap far
                    // beyond the space), a seal in it EPERM after the split before the seal.
                    guard oldEnd.partialValue <= Self.userLimit else { throw .invalidArgument }
                    try checkNotSealed(address + newLength, oldEnd.partialValue, splittingWith: edit)
                }
                target = newAddress
            } else if flags.contains(.dontUnmap) && newAddress != 0 {
                // Taken as it is: unlike mmap's, this hint is not raised to `hintMinAddress`
                // (measured: 0x8000 places at 0x8000; oracle seed 40). One below `mmapMinAddress`
                // is not used (here that is the first page, not a hint).
                let hint = newAddress & ~(Self.pageSize - 1)
                if hint >= configuration.mmapMinAddress && hint <= Self.userLimit - newLength
                    && isFreeForPlacement(hint, hint + newLength)
                {
                    target = hint
                } else {
                    target = try findFreeArea(length: newLength)  // a hint was given: no THP alignment
                }
            } else {
                // Private memory moves 2 MiB-aligned when the length is a 2 MiB multiple, as mmap places it.
                target = try findFreeArea(length: newLength, alignment: vma.isShared ? Self.pageSize : Self.placementAlignment(newLength))
            }
            if flags.contains(.fixed) && oldLength > newLength {
                unmapLocked(address + newLength, address + oldLength, edit: edit)
            }
            // A fixed target below `mmap_min_addr` is EPERM only now, when the target's address is
            // validated: after the target and a shrinking source's tail were unmapped (measured).
            if flags.contains(.fixed) { try checkMinAddress(target) }
            try checkRemapCharge(vma, oldLength, newLength, keepSource: flags.contains(.dontUnmap))
            if oldLength == 0 {
                // Duplicate a shared mapping: a new VMA over the same object pages.
                let copy = VMA(
                    start: target, end: target + newLength, protection: vma.protection, flags: vma.flags,
                    sharedObject: vma.sharedObject, pageOffset: vma.pageOffset + (address - vma.start) / Self.pageSize)
                edit.insert(copy)
                edit.mergeNeighbours(copy, chain: false)
                if vma.isLocked && !vma.flags.contains(.lockOnFault) && !vma.protection.isEmpty {
                    // A locked duplicate is populated whole, as a locked move populates its new
                    // pages (oracle: the object pages past the source's populated part become
                    // resident in both mappings).
                    populate = (target, newLength, false)
                }
                return target
            }
            moveMapping(address, moveLength, to: target, newLength: newLength, edit: edit,
                        keepSource: flags.contains(.dontUnmap))
            if vma.isLocked && !vma.flags.contains(.lockOnFault) && newLength > moveLength && !vma.protection.isEmpty {
                // A locked VMA grown by a move: its new pages are populated, as growth in place does.
                populate = (target + moveLength, newLength - moveLength, !vma.isShared && vma.protection.contains(.write))
            }
            return target
        }
    }

    /// `vrm_calc_charge`: growing an accounted VMA in place or moving it charges the change in
    /// size (the whole new length when the source stays); heuristic overcommit refuses more than
    /// RAM plus swap with `ENOMEM` (measured: a fixed shrink of a 64 GiB range fails after its
    /// target and tail were unmapped; a 64 GiB growth fails before anything changed; a shrink in
    /// place charges nothing). Caller: mmap write lock.
    private func checkRemapCharge(_ vma: VMA, _ oldLength: UInt64, _ newLength: UInt64, keepSource: Bool) throws(MemoryError) {
        guard let limit = configuration.commitLimit, vma.flags.contains(.account) else { return }
        let charged = keepSource ? newLength : max(oldLength, newLength) - min(oldLength, newLength)
        if charged > limit { throw .noMemory }
    }

    /// A fixed move with equal lengths: every VMA (or part) of `[address, address + length)` moves
    /// to the same offset from `target`, one after the other, so holes stay holes and the target
    /// under them keeps whatever is there. No VMA at `address` is `EFAULT` (nothing moved); an
    /// error at a later VMA leaves the VMAs before it moved (Linux's partial effect).
    ///
    /// - Precondition: mmap write lock; the target range checked (aligned, inside the user space,
    ///   not overlapping the source).
    private func moveEachVMA(
        _ address: UInt64, _ length: UInt64, to target: UInt64, keepSource: Bool, edit: VMAEdit
    ) throws(MemoryError) -> UInt64 {
        let end = address + length
        var cursor = address
        var moved = false
        while cursor < end {
            guard let vma = index.findFirst(endingAfter: cursor), vma.start < end else { break }
            if !moved && vma.start > address { throw .badAddress }
            if vma.isSealed { throw .permissionDenied }
            let start = max(vma.start, cursor)
            let stop = min(vma.end, end)
            let pieceTarget = target + (start - address)
            try checkMoveBudget()
            try checkNotSealed(pieceTarget, pieceTarget + (stop - start), splittingWith: edit)
            unmapLocked(pieceTarget, pieceTarget + (stop - start), edit: edit)
            try checkMinAddress(pieceTarget)  // after the piece's target is unmapped (measured)
            moveMapping(start, stop - start, to: pieceTarget, newLength: stop - start, edit: edit, keepSource: keepSource)
            moved = true
            cursor = stop
        }
        if !moved { throw .badAddress }
        return target
    }

    /// Linux's `map_count >= sysctl_max_map_count - 3` check before moving a mapping: `ENOMEM`.
    private func checkMoveBudget() throws(MemoryError) {
        if index.count + 3 >= configuration.maxMapCount { throw .noMemory }
    }

    /// `move_vma`: a new VMA at `target`, the entries moved under an `unmap` invalidation of the
    /// source, then the source unmapped.
    private func moveMapping(
        _ source: UInt64, _ length: UInt64, to target: UInt64, newLength: UInt64, edit: VMAEdit, keepSource: Bool = false
    ) {
        guard let vma = index.find(containing: source) else { return }
        edit.touch(vma)
        // A private VMA without anonymous pages starts over at the target's page offset
        // (`copy_vma`), so it can merge there; one with pages keeps its offset.
        let offset: UInt64 =
            vma.sharedObject == nil && vma.anonVMA == 0
            ? target / Self.pageSize : vma.pageOffset + (source - vma.start) / Self.pageSize
        let movedFlags = vma.flags
        let moved = VMA(
            start: target, end: target + newLength, protection: vma.protection, flags: movedFlags,
            sharedObject: vma.sharedObject, pageOffset: offset, anonVMA: vma.anonVMA)
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
        if keepSource {
            // `MREMAP_DONTUNMAP`: the new VMA merges first, still locked like the old one
            // (`copy_vma`): placed right beside the old VMA it becomes part of it. Then the old
            // VMA (or the one it merged into) stays, unsplit, and loses its lock as a whole
            // (measured: the parts outside the moved range are unlocked too; a move right below
            // a locked VMA leaves one unlocked VMA).
            let merged = edit.mergeNeighbours(moved, chain: false)
            let old = vma.isRemoved ? merged : vma
            edit.touch(old)
            if old.flags.contains(.locked) || old.flags.contains(.lockOnFault) {
                // Unlocked without being uncharged: `locked_vm` keeps counting these pages. Nor
                // are the pages it still maps unlocked: they stay mlocked (oracle seed 91).
                if old.flags.contains(.locked) { leakedLockedPages += (old.end - old.start) / Self.pageSize }
                forEachMappedFrame(old.start, old.end) { memory.markStillLocked($0) }
                old.setAttributes(protection: old.protection, flags: old.flags.subtracting([.locked, .lockOnFault]))
            }
            // The whole VMA moved: it gives up its anon_vma (`unlink_anon_vmas`; oracle: a
            // read-only mprotect then drops `ac`).
            if old.start == source && old.end == source + length && old.sharedObject == nil {
                old.anonVMAWord.store(0, ordering: .relaxed)
            }
        } else {
            unmapLocked(source, source + length, edit: edit)
            edit.mergeNeighbours(moved, chain: false)
        }
    }
}
