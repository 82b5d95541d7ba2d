import Synchronization

extension AddressSpace {
    /// Advice for ``advise(address:length:advice:)`` (`madvise`): every advice this kernel accepts
    /// on anonymous memory. `MADV_HWPOISON` and `MADV_SOFT_OFFLINE` are `EINVAL` here (no
    /// memory-failure support in this kernel), like any unknown number.
    public enum Advice: String, Sendable, CaseIterable {
        /// `MADV_NORMAL`: clears `rr` and `sr`.
        case normal
        /// `MADV_RANDOM`: sets `rr`, clears `sr`.
        case random
        /// `MADV_SEQUENTIAL`: sets `sr`, clears `rr`.
        case sequential
        /// `MADV_WILLNEED`: nothing to read ahead for anonymous memory without swap.
        case willNeed
        /// `MADV_DONTNEED`: drop the pages; private memory reads back as zeros (event `clear`).
        /// `EINVAL` on locked VMAs. Guard markers stay.
        case dontNeed
        /// `MADV_FREE`: private pages become lazily freeable (dirty and young bits cleared, event
        /// `clear`); without memory pressure they keep their contents. `EINVAL` on shared or
        /// locked VMAs.
        case free
        /// `MADV_REMOVE`: punch a hole in shared memory (its pages are freed and read back as
        /// zeros, event `clear`). `EINVAL` on private or locked VMAs, `EACCES` on shared
        /// read-only ones.
        case remove
        /// `MADV_DONTFORK`: sets `dc`.
        case dontFork
        /// `MADV_DOFORK`: clears `dc`.
        case doFork
        /// `MADV_WIPEONFORK`: sets `wf`; `EINVAL` on shared VMAs.
        case wipeOnFork
        /// `MADV_KEEPONFORK`: clears `wf`.
        case keepOnFork
        /// `MADV_DONTDUMP`: sets `dd`.
        case dontDump
        /// `MADV_DODUMP`: clears `dd`.
        case doDump
        /// `MADV_MERGEABLE`: sets `mg` on private VMAs (shared ones are skipped silently).
        case mergeable
        /// `MADV_UNMERGEABLE`: clears `mg`.
        case unmergeable
        /// `MADV_HUGEPAGE`: sets `hg`, clears `nh`; faults may install 2 MiB mappings.
        case hugePage
        /// `MADV_NOHUGEPAGE`: sets `nh`, clears `hg`.
        case noHugePage
        /// `MADV_COLD`: deactivate; no visible effect. `EINVAL` on locked VMAs.
        case cold
        /// `MADV_PAGEOUT`: write exclusive private pages to swap (event `clear`); a later fault
        /// reads them back. With no swap space (as on the reference machine) nothing changes.
        /// `EINVAL` on locked VMAs.
        case pageOut
        /// `MADV_POPULATE_READ`: read-fault the range. `EINVAL` on a VMA without read permission;
        /// `EFAULT` at a guard region; `ENOMEM` at a hole (pages before it stay populated).
        case populateRead
        /// `MADV_POPULATE_WRITE`: write-fault the range. `EINVAL` without write permission.
        case populateWrite
        /// `MADV_DONTNEED_LOCKED`: ``dontNeed`` that also zaps locked VMAs.
        case dontNeedLocked
        /// `MADV_COLLAPSE`: collapse the whole 2 MiB blocks of the range into huge mappings now,
        /// whatever `hg` says (the measured rules are on the internal `adviseCollapse`).
        case collapse
        /// `MADV_GUARD_INSTALL`: replace the range's pages with guard markers (accesses fault with
        /// SIGSEGV, mincore reports them absent); sets `gu` on the VMA. `EINVAL` on locked VMAs.
        case guardInstall
        /// `MADV_GUARD_REMOVE`: remove guard markers (the pages read as never touched); `gu`
        /// stays.
        case guardRemove

        /// The Linux advice number (`MADV_*`).
        public var linuxValue: Int32 {
            switch self {
            case .normal: 0
            case .random: 1
            case .sequential: 2
            case .willNeed: 3
            case .dontNeed: 4
            case .free: 8
            case .remove: 9
            case .dontFork: 10
            case .doFork: 11
            case .mergeable: 12
            case .unmergeable: 13
            case .hugePage: 14
            case .noHugePage: 15
            case .dontDump: 16
            case .doDump: 17
            case .wipeOnFork: 18
            case .keepOnFork: 19
            case .cold: 20
            case .pageOut: 21
            case .populateRead: 22
            case .populateWrite: 23
            case .dontNeedLocked: 24
            case .collapse: 25
            case .guardInstall: 102
            case .guardRemove: 103
            }
        }

        /// The advice with Linux number `linuxValue`; `nil` for numbers this kernel rejects with
        /// `EINVAL`.
        public init?(linuxValue: Int32) {
            guard let advice = Self.allCases.first(where: { $0.linuxValue == linuxValue }) else { return nil }
            self = advice
        }

        /// Advices that discard contents (in this space, or in a child for `MADV_DONTFORK`): refused
        /// with `EPERM` on sealed read-only private VMAs, before any other per-VMA check (measured).
        var discards: Bool {
            switch self {
            case .dontNeed, .dontNeedLocked, .free, .remove, .dontFork, .wipeOnFork, .guardInstall: true
            default: false
            }
        }
    }

    /// `madvise` with a raw advice number: an unknown one is `EINVAL` before anything else.
    public func advise(address: UInt64, length: UInt64, rawAdvice: Int32) throws(MemoryError) {
        guard let advice = Advice(linuxValue: rawAdvice) else { throw .invalidArgument }
        try advise(address: address, length: length, advice: advice)
    }

    /// Applies `advice` to `[address, address + length)` (`madvise`).
    ///
    /// Linux rules, in Linux's order (measured on 6.18): an unknown advice is `EINVAL` (see
    /// ``advise(address:length:rawAdvice:)``); an unaligned address or a length that overflows
    /// (rounded up, or added to the address) is `EINVAL`; zero length succeeds. Then the VMAs are
    /// visited in address order and the advice applied to each: holes do not stop the walk (the
    /// VMAs after a hole are changed too) and make the call fail with `ENOMEM` at the end; a
    /// per-VMA error (`EINVAL` for a locked VMA and a discarding advice, `EPERM` for a sealed
    /// read-only private VMA and a discarding advice, …) stops the walk there, with the VMAs
    /// before it already changed. `populateRead`/`populateWrite` stop at the first hole
    /// (`ENOMEM`). Each advice's own rules are on its case.
    ///
    /// Flag advices split and merge VMAs like mprotect (splitting past `maxMapCount` is
    /// `ENOMEM`). Events: `clear` for the zaps of ``Advice/dontNeed``, ``Advice/dontNeedLocked``,
    /// ``Advice/free``, ``Advice/remove``, ``Advice/pageOut`` (when swap exists) and
    /// ``Advice/guardInstall``; none for the rest.
    public func advise(address: UInt64, length: UInt64, advice: Advice) throws(MemoryError) {
        guard Self.isPageAligned(address), let length = Self.pageAlign(length),
            !address.addingReportingOverflow(length).overflow
        else { throw .invalidArgument }
        if length == 0 { return }
        guard address <= Self.userLimit, length <= Self.userLimit - address else { throw .noMemory }
        let end = address + length
        switch advice {
        case .normal, .random, .sequential, .dontFork, .doFork, .wipeOnFork, .keepOnFork, .dontDump, .doDump,
            .mergeable, .unmergeable, .hugePage, .noHugePage:
            try mmapLock.withWriteLock { () throws(MemoryError) in
                try checkAlive()
                let edit = VMAEdit(self)
                defer { edit.finish() }
                try walkVMAs(address, end, stopAtHole: false) { vma, start, stop throws(MemoryError) in
                    if advice.discards && vma.isSealed && !vma.isShared && !vma.protection.contains(.write) {
                        throw .permissionDenied
                    }
                    var flags = vma.flags
                    switch advice {
                    case .normal: flags.subtract([.randomRead, .sequentialRead])
                    case .random:
                        flags.remove(.sequentialRead)
                        flags.insert(.randomRead)
                    case .sequential:
                        flags.remove(.randomRead)
                        flags.insert(.sequentialRead)
                    case .dontFork: flags.insert(.dontCopy)
                    case .doFork: flags.remove(.dontCopy)
                    case .wipeOnFork:
                        if vma.sharedObject != nil { throw .invalidArgument }  // shared or file memory
                        flags.insert(.wipeOnFork)
                    case .keepOnFork: flags.remove(.wipeOnFork)
                    case .dontDump: flags.insert(.dontDump)
                    case .doDump: flags.remove(.dontDump)
                    case .mergeable: if !vma.isShared { flags.insert(.mergeable) }
                    case .unmergeable: flags.remove(.mergeable)
                    case .hugePage:
                        flags.insert(.hugePage)
                        flags.remove(.noHugePage)
                    case .noHugePage:
                        flags.insert(.noHugePage)
                        flags.remove(.hugePage)
                    default: break
                    }
                    try modifyVMA(vma, start, stop, protection: vma.protection, flags: flags, edit: edit)
                }
            }
        case .willNeed:
            try mmapLock.withReadLock { () throws(MemoryError) in
                try checkAlive()
                try walkVMAs(address, end, stopAtHole: false) { _, _, _ throws(MemoryError) in }
            }
        case .dontNeed, .dontNeedLocked, .free, .remove, .cold, .pageOut:
            // Hole punches, reaching the other spaces that map the object once this space's lock
            // is dropped (as Linux drops mmap_lock before it punches), also after a failure later
            // in the walk: the pages are gone from the object either way.
            var punches: [(object: SharedMemoryObject, first: UInt64, last: UInt64)] = []
            defer {
                for punch in punches { zapObjectPagesElsewhere(punch.object, from: punch.first, to: punch.last) }
            }
            try mmapLock.withReadLock { () throws(MemoryError) in
                try checkAlive()
                let edit = VMAEdit(self, writerLocks: true)
                defer { edit.finish() }
                // A hole punch also zaps the object's other mappings, below the range as well:
                // every VMA it may zap enters its zap section now, in address order.
                if advice == .remove { for vma in holePunchVMAs(address, end) { edit.touch(vma) } }
                try walkVMAs(address, end, stopAtHole: false) { vma, start, stop throws(MemoryError) in
                    if advice.discards && vma.isSealed && !vma.isShared && !vma.protection.contains(.write) {
                        throw .permissionDenied
                    }
                    if vma.isLocked && advice != .dontNeedLocked { throw .invalidArgument }
                    switch advice {
                    case .free: if vma.sharedObject != nil { throw .invalidArgument }  // anonymous memory only
                    case .remove:
                        // Needs an object (`EINVAL` for anonymous memory) mapped shared
                        // (`EACCES` for a private file mapping).
                        guard vma.sharedObject != nil else { throw .invalidArgument }
                        guard vma.isShared else { throw .accessDenied }
                        // `VM_MAYWRITE`, not the current protection (oracle: a PROT_NONE part of a
                        // writable shared mapping is punched too).
                        guard vma.flags.contains(.mayWrite) else { throw .accessDenied }
                    default: break
                    }
                    edit.touch(vma)
                    splitPartialHugeMappings(start, stop)
                    switch advice {
                    case .dontNeed, .dontNeedLocked:
                        zapAndEnd(beginInvalidation(start, stop, .clear, vma: snapshot(vma)), start, stop, keepGuards: true)
                    case .remove:
                        zapAndEnd(beginInvalidation(start, stop, .clear, vma: snapshot(vma)), start, stop, keepGuards: true)
                        let first = vma.pageOffset + (start - vma.start) / Self.pageSize
                        let last = vma.pageOffset + (stop - vma.start) / Self.pageSize
                        // A hole punched in the object leaves no mapping of those pages anywhere
                        // (Linux unmaps them from every mapping of the file): other VMAs of this
                        // space over the same object pages are zapped here, other spaces' after
                        // the lock is dropped.
                        if let object = vma.sharedObject {
                            zapObjectMappings(object, from: first, to: last, edit: edit, skipping: vma)
                            object.removePages(from: first, to: last)
                            punches.append((object, first, last))
                        }
                    case .free: lazyFree(start, stop, vma: vma)
                    case .pageOut:
                        if vma.isAnonymousPrivate {
                            pageOut(start, stop, vma: vma)
                        } else if vma.isShared, let object = vma.sharedObject, object.path == nil {
                            pageOutShared(start, stop, vma: vma, object: object)
                        }
                    default: break
                    }
                }
            }
        case .populateRead, .populateWrite:
            let write = advice == .populateWrite
            var cursor = address
            while cursor < end {
                // Each VMA is checked under the lock, then faulted in without it (as Linux drops
                // the lock between batches).
                let stop: UInt64 = try mmapLock.withReadLock { () throws(MemoryError) -> UInt64 in
                    try checkAlive()
                    guard let vma = index.find(containing: cursor) else { throw .noMemory }
                    if !vma.protection.contains(write ? .write : .read) { throw .invalidArgument }
                    return min(end, vma.end)
                }
                while cursor < stop {
                    if translate(cursor)?.isGuard == true { throw .badAddress }
                    do throws(MemoryError) {
                        try fault(at: cursor, access: write ? .write : .read)
                    } catch {
                        throw error.reportedByFaultIn
                    }
                    cursor += Self.pageSize
                }
            }
        case .collapse:
            try adviseCollapse(address, end)
        case .guardInstall:
            try mmapLock.withReadLock { () throws(MemoryError) in
                try checkAlive()
                try walkVMAs(address, end, stopAtHole: false) { vma, start, stop throws(MemoryError) in
                    if vma.isSealed && !vma.isShared && !vma.protection.contains(.write) { throw .permissionDenied }
                    if vma.isLocked { throw .invalidArgument }
                    if vma.sharedObject == nil && vma.anonVMA == 0 { prepareAnonVMA(vma) }
                    // One edit per VMA: holding this VMA exclusively while waiting for the zaps of
                    // the next would deadlock with a hole punch in the next that zaps this one
                    // (another mapping of its object) from inside the next's zap section.
                    let edit = VMAEdit(self, writerLocks: true)
                    defer { edit.finish() }
                    edit.touchExclusively(vma)  // changes the VMA's flags: no zap may share it
                    // `gu` is set on the whole VMA, without a split (an attribute change under
                    // the VMA's write section).
                    vma.setAttributes(protection: vma.protection, flags: vma.flags.union(.maybeGuard))
                    splitPartialHugeMappings(start, stop)
                    let scope = beginInvalidation(start, stop, .clear, vma: snapshot(vma))
                    var chain = FrameChain()
                    // A classic or per-VMA-lock fault may map a page between the zap and the
                    // markers (neither waits for this VMA's write section): the markers skip it,
                    // and the range is zapped and marked again, as Linux retries on `-EAGAIN`.
                    while true {
                        let result = withSecondaryTLBHook { hook in
                            pageTable.zap(from: start, to: stop, memory: memory, chain: &chain, keepGuards: true, flush: hook)
                        }
                        recordZap(result)
                        testHook(.guardInstallAfterZap)
                        if installGuards(start, stop) == 0 { break }
                    }
                    scope.end()
                    memory.release(chain)
                }
            }
        case .guardRemove:
            try mmapLock.withReadLock { () throws(MemoryError) in
                try checkAlive()
                try walkVMAs(address, end, stopAtHole: false) { _, start, stop throws(MemoryError) in
                    pageTable.forEachLockedLeafRun(
                        from: start, to: stop, huge: { _, _, _, _, _ in },
                        pte: { table, first, last, _ in
                            for index in first..<last
                            where PageTableEntry(rawValue: table[index].pointee.load(ordering: .relaxed)).isGuard {
                                table[index].pointee.store(0, ordering: .relaxed)
                            }
                        },
                        flush: { _, _ in })
                }
            }
        }
    }

    /// Writes guard markers into every empty entry of `[start, end)` (which was just zapped,
    /// except for markers), allocating tables. Returns how many entries it skipped because a
    /// fault mapped them since the zap. Caller: mmap lock, the range's VMA in an edit.
    private func installGuards(_ start: UInt64, _ end: UInt64) -> Int {
        var skipped = 0
        var page = start
        while page < end {
            guard let pmd = pageTable.pmdTable(for: page),
                let table = pageTable.pteTable(in: pmd, at: PageTable.index(page, level: 1))
            else { preconditionFailure("out of host memory for page tables") }
            let chunkEnd = min(end, PageTable.nextBoundary(page, level: 1))
            pageTable.pteLock(table).withLock {
                var address = page
                while address < chunkEnd {
                    let slot = PageTable.index(address, level: 0)
                    let entry = table.load(slot)
                    if entry.isNone {
                        // Releasing: lockless walkers see the marker whole.
                        table[slot].pointee.store(PageTableEntry.guardEntry.rawValue, ordering: .releasing)
                    } else if !entry.isGuard {
                        skipped += 1
                    }
                    address += Self.pageSize
                }
            }
            page = chunkEnd
        }
        return skipped
    }

    /// `MADV_FREE` on private memory (`madvise_free_pte_range`): under one `clear` invalidation,
    /// exclusive pages (PROT_NONE ones too) lose their dirty and young bits and become lazily freeable
    /// (``PhysicalMemory/markLazyFree(_:)``, the folio losing `swapbacked`): they keep frame and
    /// content until reclaim or `MADV_PAGEOUT` discards the ones still clean; a store first
    /// makes a page dirty again and keeps it. Software TLBs are shot down under each table's
    /// lock first: a store through a stale writable entry would not mark the page dirty.
    /// Caller: mmap lock, `vma` in an edit.
    private func lazyFree(_ start: UInt64, _ end: UInt64, vma: VMA) {
        let scope = beginInvalidation(start, end, .clear, vma: snapshot(vma))
        withSecondaryTLBHook { hook in
            pageTable.forEachLockedLeafRun(
                from: start, to: end, huge: { _, _, _, _, _ in },
                pte: { table, first, last, chunkStart in
                    shootDownTLBsLocked(table, first, last, chunkStart) {
                        $0.isPresent && memory.isExclusive($0.number)
                    }
                    for index in first..<last {
                        let entry = PageTableEntry(rawValue: table[index].pointee.load(ordering: .relaxed))
                        // A PROT_NONE entry still maps its page: freed lazily too (measured; oracle seed 1).
                        guard entry.isPresent || entry.isProtNone, memory.isExclusive(entry.number) else { continue }
                        // A page still mlocked is not made lazily freeable (measured).
                        if !memory.isStillLocked(entry.number) { memory.markLazyFree(entry.number) }
                        table[index].pointee.store(
                            entry.without(PageTableEntry.dirty | PageTableEntry.accessed).rawValue, ordering: .relaxed)
                    }
                },
                flush: hook)
        }
        scope.end()
    }

    /// Evicts the exclusive private pages of `[start, end)` under one `clear` invalidation (at
    /// most `limit` of them): a lazily freed page still clean (``Advice/free``, not written since)
    /// is discarded, its entry emptied (it reads zero again, as Linux discards it without swap);
    /// every other one is written to swap while swap has room. PROT_NONE entries count like
    /// present ones. Shared, zero-page and huge entries stay, and so do pages still mlocked
    /// (``PhysicalMemory/markStillLocked(_:)``), whose lock count the attempt resets. Returns pages evicted. Software TLBs are shot down under each table's lock before its
    /// content is written to swap or dropped (a store through a stale entry would otherwise be
    /// lost).
    ///
    /// - Precondition: mmap lock held; the VMA in an edit's write section.
    @discardableResult
    func pageOut(_ start: UInt64, _ end: UInt64, vma: VMA, limit: Int = .max) -> Int {
        let scope = beginInvalidation(start, end, .clear, vma: snapshot(vma))
        var chain = FrameChain()
        var swapped = 0
        var discarded = 0
        var swapFull = false
        withSecondaryTLBHook { hook in
            pageTable.forEachLockedLeafRun(
                from: start, to: end, huge: { _, _, _, _, _ in },
                pte: { table, first, last, chunkStart in
                    shootDownTLBsLocked(table, first, last, chunkStart) {
                        $0.isPresent && memory.isExclusive($0.number)
                    }
                    for index in first..<last where swapped + discarded < limit {
                        let entry = PageTableEntry(rawValue: table[index].pointee.load(ordering: .relaxed))
                        // isExclusive is false for the zero page. A PROT_NONE entry still maps
                        // its page: reclaim takes it too (measured; oracle seed 100).
                        guard entry.isPresent || entry.isProtNone, memory.isExclusive(entry.number) else { continue }
                        if memory.isStillLocked(entry.number) {
                            memory.resetLockCount(entry.number)  // tried and put back
                            continue
                        }
                        if !entry.isDirty && memory.isLazyFree(entry.number) {
                            table[index].pointee.store(0, ordering: .relaxed)
                            memory.unmapFrame(entry.number, into: &chain)
                            discarded += 1
                            continue
                        }
                        if swapFull { continue }
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
        count(.lazyFreePagesDiscarded, discarded)
        return swapped + discarded
    }
}

extension AddressSpace {
    /// `MADV_PAGEOUT` of shared memory (shmem) over `[start, end)` of `vma`: every entry mapping a
    /// page (present or PROT_NONE) whose page only this entry maps (no other mapping, no pin) is unmapped under one `clear`
    /// invalidation, as reclaim's `try_to_unmap` does; then each such page that is still clean
    /// (no entry ever dirtied it, ``PhysicalMemory/markDirty(_:)``) and still mapped by nobody
    /// leaves the object's cache; a page still mlocked (``PhysicalMemory/markStillLocked(_:)``)
    /// stays mapped and cached, its lock count reset. Dirty pages stay cached: without swap, shmem cannot write them
    /// out (measured: read-faulted and `MADV_POPULATE_READ` pages go, written ones and pages a
    /// fork child maps too stay). Software TLBs are shot down under each table's lock before
    /// its entries go (a store through a stale entry must not dirty a page judged clean).
    ///
    /// - Precondition: mmap lock held; the VMA in an edit's write section; no split lock held
    ///   (the object's cache lock sleeps).
    func pageOutShared(_ start: UInt64, _ end: UInt64, vma: VMA, object: SharedMemoryObject) {
        let scope = beginInvalidation(start, end, .clear, vma: snapshot(vma))
        var chain = FrameChain()
        var clean: [(offset: UInt64, frame: UInt64)] = []
        let firstOffset = vma.pageOffset + (start - vma.start) / Self.pageSize
        // One mapping and the cache's reference: the page is this entry's alone.
        let mappedOnce = 2 * PhysicalMemory.refOne | PhysicalMemory.mapOne
        withSecondaryTLBHook { hook in
            pageTable.forEachLockedLeafRun(
                from: start, to: end, huge: { _, _, _, _, _ in },
                pte: { table, first, last, chunkStart in
                    shootDownTLBsLocked(table, first, last, chunkStart) {
                        $0.isPresent && memory.refcountWord($0.number) == mappedOnce
                    }
                    for index in first..<last {
                        let entry = PageTableEntry(rawValue: table[index].pointee.load(ordering: .relaxed))
                        // A PROT_NONE entry still maps its page (Linux's `pte_present`; oracle).
                        guard entry.isPresent || entry.isProtNone, entry.number != PhysicalMemory.zeroFrame,
                            memory.refcountWord(entry.number) == mappedOnce
                        else { continue }
                        if memory.isStillLocked(entry.number) {
                            memory.resetLockCount(entry.number)  // tried and put back, still mapped
                            continue
                        }
                        table[index].pointee.store(0, ordering: .relaxed)
                        if !entry.isDirty && !memory.isDirty(entry.number) {
                            let address = chunkStart + UInt64(index - first) * Self.pageSize
                            clean.append((firstOffset + (address - start) / Self.pageSize, entry.number))
                        }
                        memory.unmapFrame(entry.number, into: &chain)
                    }
                },
                flush: hook)
        }
        scope.endWithoutTLBShootdown()  // shot down per table above
        memory.release(chain)
        if !clean.isEmpty { count(.sharedPagesReclaimed, object.dropCleanPages(clean)) }
    }

    /// After a hole punch in `object` (page offsets `[from, to)`, already dropped from its cache):
    /// zaps every mapping of those pages in every other space that maps the object (the
    /// kernel's `unmap_mapping_range` over the `i_mmap` tree), event `clear`. Takes each space's
    /// mmap lock in turn and holds no other: call it with no lock held. Rereads the mapper list
    /// until no space joined it meanwhile (a fork that copied a stale entry before its parent's
    /// zap lists its child first). A fault racing with the punch cannot reinstall a dropped page:
    /// it rechecks the cache under the split lock this zap takes.
    func zapObjectPagesElsewhere(_ object: SharedMemoryObject, from: UInt64, to: UInt64) {
        var done: Set<ObjectIdentifier> = [ObjectIdentifier(self)]
        var zappedGeneration: UInt64? = nil
        while true {
            let (spaces, generation) = object.mappingSpaces()
            if generation == zappedGeneration { return }
            for space in spaces where done.insert(ObjectIdentifier(space)).inserted {
                space.zapObjectPages(object, from: from, to: to)
            }
            zappedGeneration = generation
        }
    }

    /// Zaps this space's mappings of `object`'s pages `[from, to)` (event `clear`), under the
    /// mmap read lock with the VMAs write-locked (as `MADV_DONTNEED` does); nothing if the space
    /// is dead or maps none of them.
    func zapObjectPages(_ object: SharedMemoryObject, from: UInt64, to: UInt64) {
        mmapLock.withReadLock {
            guard !dead.load(ordering: .relaxed) else { return }
            let edit = VMAEdit(self, writerLocks: true)
            defer { edit.finish() }
            zapObjectMappings(object, from: from, to: to, edit: edit)
        }
    }

    /// The VMAs a hole punch of `[start, end)` may zap, in address order: the range's VMAs over a
    /// shared object, and every VMA of this space that maps the same pages of that object
    /// (``zapObjectMappings(_:from:to:edit:skipping:)``). Caller: the mmap lock.
    func holePunchVMAs(_ start: UInt64, _ end: UInt64) -> [VMA] {
        var found: [VMA] = []
        var cursor = start
        while cursor < end, let vma = index.findFirst(endingAfter: cursor), vma.start < end {
            if let object = vma.sharedObject {
                let first = vma.pageOffset + (max(start, vma.start) - vma.start) / Self.pageSize
                let last = vma.pageOffset + (min(end, vma.end) - vma.start) / Self.pageSize
                found.append(vma)
                for other in index.all where other !== vma && other.sharedObject === object {
                    let low = max(first, other.pageOffset)
                    let high = min(last, other.pageOffset + (other.end - other.start) / Self.pageSize)
                    if low < high { found.append(other) }
                }
            }
            cursor = vma.end
        }
        found.sort { $0.start < $1.start }
        var previous: VMA? = nil
        return found.filter { vma in
            defer { previous = vma }
            return vma !== previous
        }
    }

    /// Zaps, in every VMA of this space over `object` but `skipping`, the entries of the object
    /// pages `[from, to)` (event `clear`), write-locking each VMA it changes. Shared memory is
    /// never mapped huge, so no huge mapping needs splitting. Caller: the mmap lock and `edit`.
    func zapObjectMappings(
        _ object: SharedMemoryObject, from: UInt64, to: UInt64, edit: VMAEdit, skipping: VMA? = nil
    ) {
        for vma in index.all where vma !== skipping && vma.sharedObject === object {
            let low = max(from, vma.pageOffset)
            let high = min(to, vma.pageOffset + (vma.end - vma.start) / Self.pageSize)
            guard low < high else { continue }
            edit.touch(vma)
            let start = vma.start + (low - vma.pageOffset) * Self.pageSize
            let stop = vma.start + (high - vma.pageOffset) * Self.pageSize
            zapAndEnd(beginInvalidation(start, stop, .clear, vma: snapshot(vma)), start, stop, keepGuards: true)
        }
    }
}
