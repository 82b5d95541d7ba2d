import Synchronization

extension AddressSpace {
    /// Changes the protection of `[address, address + length)` (`mprotect`), splitting VMAs at the
    /// boundaries and merging them with compatible neighbours afterwards. Each VMA's changed part
    /// gets one `protectionVMA` invalidation whose VMA snapshot carries the new protection. Write
    /// access is only ever removed from entries, never added.
    ///
    /// Linux rules, in Linux's order (measured on 6.18):
    /// - ``Protection/growsDown`` together with ``Protection/growsUp`` is `EINVAL`; an unaligned
    ///   address is `EINVAL`; a zero length succeeds without looking further (even with bad bits);
    ///   a length that overflows is `ENOMEM`; bits other than read, write, exec, `PROT_SEM` and
    ///   the grows bits are `EINVAL`;
    /// - no VMA ends above `address`: `ENOMEM`. With ``Protection/growsDown`` the range starts at
    ///   the first VMA's start (`ENOMEM` if that VMA starts at or above the end; `EINVAL` if it
    ///   is not growsdown); ``Protection/growsUp`` is `EINVAL` (x86 has no growsup VMAs);
    ///   otherwise the first VMA must contain `address` (`ENOMEM`);
    /// - then VMA by VMA in address order: a hole is `ENOMEM` and a sealed VMA `EPERM`, with every
    ///   VMA before it already changed (Linux's partial effect); splitting past `maxMapCount` is
    ///   `ENOMEM` likewise.
    ///
    /// `VM_ACCOUNT` (`ac`): a private VMA without `nr` that becomes writable gets it; one that
    /// becomes non-writable loses it only while it has no anonymous pages (no `anon_vma`). A
    /// locked private VMA that becomes writable is populated for write, as Linux does; its
    /// identity (`anon_vma`) is prepared before the next VMA is changed, as that population does.
    public func protect(address: UInt64, length: UInt64, protection: Protection) throws(MemoryError) {
        if protection.contains(.growsDown) && protection.contains(.growsUp) { throw .invalidArgument }
        guard Self.isPageAligned(address) else { throw .invalidArgument }
        if length == 0 { return }
        guard let length = Self.pageAlign(length), !address.addingReportingOverflow(length).overflow else {
            throw .noMemory
        }
        let known: Protection = [.read, .write, .exec, .sem, .growsDown, .growsUp]
        if !protection.subtracting(known).isEmpty { throw .invalidArgument }
        let access = protection.access
        var end = address + length
        var populate: [(UInt64, UInt64)] = []
        defer {
            // Locked private VMAs made writable are populated for write (mmap lock dropped).
            for (start, stop) in populate { try? self.populate(start, length: stop - start, write: true) }
        }
        try mmapLock.withWriteLock { () throws(MemoryError) in
            try checkAlive()
            var start = address
            guard let first = index.findFirst(endingAfter: start) else { throw .noMemory }
            if protection.contains(.growsDown) {
                if first.start >= end { throw .noMemory }
                start = first.start
                if !first.flags.contains(.growsDown) { throw .invalidArgument }
            } else if protection.contains(.growsUp) {
                // The VMA lookup first (ENOMEM), then EINVAL: x86 has no growsup VMAs.
                if first.start > start { throw .noMemory }
                throw .invalidArgument
            } else if first.start > start {
                throw .noMemory
            }
            end = max(end, start)
            let edit = VMAEdit(self)
            defer { edit.finish() }
            try walkVMAs(start, end, stopAtHole: true) { vma, pieceStart, pieceEnd throws(MemoryError) in
                if vma.isSealed { throw .permissionDenied }
                // `VM_MAY*` bounds the protection (a shared mapping of a read-only file has no
                // `mw`): `EACCES`, with the VMAs before it changed.
                if access.contains(.write) && !vma.flags.contains(.mayWrite) { throw .accessDenied }
                // A VMA that already has the protection is left alone: no split, no
                // invalidation (`mprotect_fixup` returns early), so mirrors keep translations.
                if vma.protection == access { return }
                var flags = vma.flags
                if access.contains(.write) {
                    if !vma.isShared && !flags.contains(.noReserve) { flags.insert(.account) }
                } else if flags.contains(.account) && vma.sharedObject == nil && vma.anonVMA == 0 {
                    // Anonymous memory only (`vma_is_anonymous`): a private file mapping keeps
                    // `ac` (measured), so it no longer merges with its never-writable neighbours.
                    flags.remove(.account)
                }
                let wasWritable = vma.protection.contains(.write)
                try modifyVMA(
                    vma, pieceStart, pieceEnd, protection: access, flags: flags, edit: edit,
                    beforeMerge: { [self] piece in
                        edit.publish()
                        let scope = beginInvalidation(piece.start, piece.end, .protectionVMA, vma: snapshot(piece))
                        let changed = withSecondaryTLBHook { hook in
                            pageTable.changeProtection(from: piece.start, to: piece.end, protection: access, flush: hook)
                        }
                        // No entry changed, no TLB can hold a stale one (`tlb_flush_pte_range` is
                        // only called for entries that changed).
                        if changed == 0 { scope.endWithoutTLBShootdown() } else { scope.end() }
                        count(.pagesWriteProtected, changed)
                    })
                if flags.contains(.locked) && !flags.contains(.lockOnFault) && !vma.isShared && !wasWritable
                    && access.contains(.write)
                {
                    // Only the changed part, not the VMA it merged into (`populate_vma_page_range`
                    // on the mprotect range): pages of a neighbour stay as they are.
                    populate.append((pieceStart, pieceEnd))
                    // Linux populates each piece before it changes the next, so the first write
                    // fault gives the VMA its identity now, and that decides whether the next
                    // pieces merge with it (measured; oracle seed 29). The pages themselves
                    // come after the walk (a guard marker first stops the population at once).
                    if let changed = index.find(containing: pieceStart), changed.sharedObject == nil,
                        changed.anonVMA == 0, translate(pieceStart)?.isGuard != true
                    {
                        prepareAnonVMA(changed)
                    }
                }
            }
        }
    }

    /// Calls `body` for each VMA intersecting `[start, end)` in address order with the part of
    /// the range it covers, re-finding the next VMA after each call (the body may split and
    /// merge). A hole throws `ENOMEM`: at once when `stopAtHole` (mprotect, mlock: the VMAs before
    /// it are already done), else after every VMA was visited (madvise's `unmapped_error`). A
    /// range with no VMA at all is `ENOMEM` either way.
    ///
    /// - Precondition: the mmap lock (write, or read for page-level walks).
    func walkVMAs(
        _ start: UInt64, _ end: UInt64, stopAtHole: Bool,
        _ body: (VMA, UInt64, UInt64) throws(MemoryError) -> Void
    ) throws(MemoryError) {
        var cursor = start
        var sawHole = false
        while cursor < end {
            guard let vma = index.findFirst(endingAfter: cursor), vma.start < end else {
                sawHole = true
                break
            }
            if vma.start > cursor {
                sawHole = true
                if stopAtHole { throw .noMemory }
                cursor = vma.start
            }
            let pieceEnd = min(end, vma.end)
            try body(vma, cursor, pieceEnd)
            cursor = pieceEnd
        }
        if sawHole { throw .noMemory }
    }

    /// Gives `[start, end)` of `vma` the protection and flags (`vma_modify_flags`): merged into a
    /// compatible neighbour where it touches one, else split off; then merged with compatible
    /// neighbours. Splits beyond `maxMapCount` are `ENOMEM` before anything changes.
    /// `beforeMerge` sees the changed VMA (published) before any merge (mprotect changes entries
    /// there). Returns the VMA now covering the range.
    ///
    /// - Precondition: mmap write lock; `[start, end)` page-aligned inside `vma`.
    @discardableResult
    func modifyVMA(
        _ vma: VMA, _ start: UInt64, _ end: UInt64, protection: Protection, flags: VMFlags, edit: VMAEdit,
        beforeMerge: ((VMA) -> Void)? = nil
    ) throws(MemoryError) -> VMA {
        if vma.protection == protection && vma.flags == flags { return vma }
        let shape = VMAShape(vma, start: start, end: end, protection: protection, flags: flags)
        var splits = 0
        if start > vma.start {
            let next = vma.next
            let mergesUp = end == vma.end && next.map { shape.canMerge(below: VMAShape($0)) } == true
            if !mergesUp { splits += 1 }
        }
        if end < vma.end {
            let previous = vma.previous
            let mergesDown = start == vma.start && previous.map { VMAShape($0).canMerge(below: shape) } == true
            if !mergesDown { splits += 1 }
        }
        if exceedsMapCount(splitting: splits) { throw .noMemory }
        // Touched (write-locked) before its huge mappings are split: a fault under the VMA lock
        // could otherwise install a huge mapping across the boundary in between.
        edit.touch(vma)
        var piece = vma
        if start > vma.start {
            splitHugeMapping(across: start)
            piece = edit.split(vma, at: start)
        }
        if end < piece.end {
            splitHugeMapping(across: end)
            edit.split(piece, at: end)
        }
        edit.touch(piece)
        piece.setAttributes(protection: protection, flags: flags)
        beforeMerge?(piece)
        return edit.mergeNeighbours(piece)
    }
}

/// What decides whether two VMAs merge, for a VMA that may not exist yet (a part about to be
/// changed).
struct VMAShape {
    var start: UInt64
    var end: UInt64
    var protection: Protection
    var flags: VMFlags
    var object: ObjectIdentifier?
    var pageOffset: UInt64
    var anonVMA: UInt64

    init(_ vma: VMA) {
        start = vma.start
        end = vma.end
        protection = vma.protection
        flags = vma.flags
        object = vma.sharedObject.map(ObjectIdentifier.init)
        pageOffset = vma.pageOffset
        anonVMA = vma.anonVMA
    }

    /// `vma`'s part `[start, end)` with new attributes.
    init(_ vma: VMA, start: UInt64, end: UInt64, protection: Protection, flags: VMFlags) {
        self.init(vma)
        pageOffset = vma.pageOffset + (start - vma.start) / PageTable.pageSize
        self.start = start
        self.end = end
        self.protection = protection
        self.flags = flags
    }

    /// Whether `self` (below) and `upper` may merge: see ``VMA/canMerge(with:)``.
    func canMerge(below upper: VMAShape) -> Bool {
        end == upper.start && protection == upper.protection
            && flags.subtracting(VMFlags.ignoredByMerge) == upper.flags.subtracting(VMFlags.ignoredByMerge)
            && pageOffset + (end - start) / PageTable.pageSize == upper.pageOffset
            && object == upper.object
            && (flags.contains(.shared) || AnonVMA.compatible(anonVMA, upper.anonVMA))
    }
}

extension VMA {
    /// Whether `self` and the VMA right above it may be merged (`vma_merge`'s rules, as measured):
    /// adjacent, the same protection, the same flags ignoring ``VMFlags/ignoredByMerge``, the same
    /// backing at contiguous page offsets (private memory too: a VMA moved by mremap after it got
    /// anonymous pages keeps its old offset and so never merges with its new neighbours), and
    /// compatible `anon_vma`s (``AnonVMA/compatible(_:_:)``).
    func canMerge(with other: VMA) -> Bool {
        VMAShape(self).canMerge(below: VMAShape(other))
    }
}

extension AddressSpace {
    /// The VMAs covering `[start, end)` without a hole, or `ENOMEM` (engine-only operations that
    /// keep all-or-nothing checks: migration).
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

    /// Splits the VMAs at `start` and `end` (and any huge mapping across them) and returns the VMAs
    /// now lying exactly inside `[start, end)`, all touched by `edit`. `vmas` is the ascending list
    /// of VMAs intersecting the range (not necessarily contiguous).
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
}
