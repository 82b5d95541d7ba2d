import Synchronization

extension AddressSpace {
    /// A reclaim pass (`shrink_page_list` over this space, second-chance order): evicts up to
    /// `pages` exclusive private pages to swap. A page that is young, by its accessed bit or through
    /// any subscriber's `clearFlushYoung`, gets a second chance: its bit is cleared and it stays
    /// (aging removes no translation, so it needs no invalidation, like the kernel's
    /// `page_referenced`); a second pass evicts what stayed old. Only the runs of pages actually
    /// evicted are invalidated (event `clear`), so mirrors keep their translations of the pages that
    /// stay. Locked VMAs, shared memory, the zero page and huge mappings are left alone. A later
    /// fault reads an evicted page back from swap.
    ///
    /// - Returns: pages evicted (fewer when nothing more is reclaimable or swap is full).
    /// - Throws: ``MemoryError/addressSpaceDead``.
    public func reclaim(pages: Int) throws(MemoryError) -> Int {
        guard pages > 0 else { return 0 }
        return try mmapLock.withReadLock { () throws(MemoryError) -> Int in
            try checkAlive()
            let vmas = index.all.filter { $0.isAnonymousPrivate && !$0.flags.contains(.locked) }
            var evicted = 0
            for _ in 0..<2 where evicted < pages {
                for vma in vmas where evicted < pages {
                    let edit = VMAEdit(self, writerLocks: true)
                    edit.touch(vma)
                    for run in oldPageRuns(vma.start, vma.end, limit: pages - evicted) where evicted < pages {
                        evicted += pageOut(run.lowerBound, run.upperBound, vma: vma, limit: pages - evicted)
                    }
                    edit.finish()
                }
            }
            return evicted
        }
    }

    /// Drops the page of shared anonymous memory (shmem) at `address` from its object's cache, if
    /// no page-table entry in any space maps it, nothing pins it and it is clean: what
    /// the kernel's reclaim may do to such a page at any moment (kswapd, direct reclaim, or a
    /// proactive reclaimer such as a DAMON `pageout` scheme over unmapped page cache). A later
    /// access faults in a zero-filled page, as Linux's does for shmem without swap. Nothing is
    /// mapped, so no mirror needs an invalidation.
    ///
    /// Takes the mmap read lock and the object's cache lock; no split lock.
    ///
    /// - Returns: whether the page was dropped (`false`: not cached, or mapped, pinned or dirty).
    /// - Throws: ``MemoryError/invalidArgument`` for an unaligned address,
    ///   ``MemoryError/noMemory`` when no VMA of shared anonymous memory holds `address`,
    ///   ``MemoryError/addressSpaceDead`` after teardown.
    public func reclaimUnmappedObjectPage(at address: UInt64) throws(MemoryError) -> Bool {
        guard Self.isPageAligned(address), address < Self.userLimit else { throw .invalidArgument }
        return try mmapLock.withReadLock { () throws(MemoryError) -> Bool in
            try checkAlive()
            guard let vma = index.find(containing: address), let object = vma.sharedObject, vma.isShared,
                object.path == nil
            else {
                throw .noMemory
            }
            let offset = vma.pageOffset + (address - vma.start) / Self.pageSize
            guard let frame = object.pages.withLock({ $0[offset] }), !memory.isStillLocked(frame) else { return false }
            let dropped = object.dropCleanPages([(offset, frame)])
            if dropped > 0 { count(.sharedPagesReclaimed, dropped) }
            return dropped > 0
        }
    }

    /// Ages `[start, end)` and returns the runs of evictable pages that were old (neither the
    /// accessed bit nor any subscriber reported them young), at most `limit` pages. Young pages
    /// have their accessed state cleared (second chance).
    ///
    /// - Precondition: mmap lock held.
    private func oldPageRuns(_ start: UInt64, _ end: UInt64, limit: Int) -> [Range<UInt64>] {
        let subscriptions = youngSubscriptions
        var runs: [Range<UInt64>] = []
        var found = 0
        pageTable.forEachLockedLeafRun(
            from: start, to: end, huge: { _, _, _, _, _ in },
            pte: { table, first, last, chunkStart in
                for index in first..<last where found < limit {
                    let entry = PageTableEntry(rawValue: table[index].pointee.load(ordering: .relaxed))
                    guard entry.isPresent, memory.isExclusive(entry.number) else { continue }  // not the zero page
                    let page = chunkStart + UInt64(index - first) * Self.pageSize
                    if clearYoung(table[index], entry, page, page + Self.pageSize, subscriptions, flush: true) { continue }
                    found += 1
                    if let previous = runs.last, previous.upperBound == page {
                        runs[runs.count - 1] = previous.lowerBound..<(page + Self.pageSize)
                    } else {
                        runs.append(page..<(page + Self.pageSize))
                    }
                }
            },
            flush: { _, _ in })
        return runs
    }

    /// Migrates the exclusive private pages of `[address, address + length)` to new frames
    /// (`migrate_vma`), under one `migrate` invalidation per VMA tagged with `owner`, so a mirror can
    /// recognise migrations it asked for. Content tokens follow the pages; entry bits are kept.
    /// Software TLBs are shot down under each table's lock before its content is copied.
    /// Shared frames (fork, shared memory) and the zero page stay where they are.
    ///
    /// Linux rules: unaligned or overflowing range `EINVAL`; a hole `ENOMEM` (nothing changes).
    ///
    /// - Returns: 4 KiB pages migrated (a huge mapping counts 512); fewer if frames run out.
    public func migrate(address: UInt64, length: UInt64, owner: InvalidationOwner = .none) throws(MemoryError) -> Int {
        let end = try Self.userRangeEnd(address, length, nonEmpty: true)
        return try mmapLock.withReadLock { () throws(MemoryError) -> Int in
            try checkAlive()
            let vmas = try coveringVMAs(address, end)
            let edit = VMAEdit(self, writerLocks: true)
            for vma in vmas { edit.touch(vma) }
            var migrated = 0
            for vma in vmas where vma.isAnonymousPrivate {
                let start = max(address, vma.start)
                let stop = min(end, vma.end)
                let scope = beginInvalidation(start, stop, .migrate, vma: snapshot(vma), owner: owner)
                var chain = FrameChain()
                withSecondaryTLBHook { hook in
                    pageTable.forEachLockedLeafRun(
                        from: start, to: stop,
                        huge: { pmd, index, entry, chunkStart, chunkEnd in
                            guard entry.isPresent, chunkEnd - chunkStart == Self.hugePageSize,
                                let head = memory.allocateHuge()
                            else { return }
                            shootDownTLBsLocked(chunkStart, chunkEnd)
                            for offset in 0..<UInt64(PhysicalMemory.framesPerHugePage) {
                                memory.setToken(memory.token(of: entry.number + offset), of: head + offset)
                            }
                            pmd[index].pointee.store(entry.with(number: head).rawValue, ordering: .releasing)
                            memory.unmapHugeFrame(entry.number, into: &chain)
                            migrated += PhysicalMemory.framesPerHugePage
                        },
                        pte: { table, first, last, chunkStart in
                            shootDownTLBsLocked(table, first, last, chunkStart) {
                                $0.isPresent && memory.isExclusive($0.number)
                            }
                            for index in first..<last {
                                let entry = PageTableEntry(rawValue: table[index].pointee.load(ordering: .relaxed))
                                // isExclusive is false for the zero page.
                                guard entry.isPresent, memory.isExclusive(entry.number), let fresh = memory.allocate()
                                else { continue }
                                memory.setToken(memory.token(of: entry.number), of: fresh)
                                table[index].pointee.store(entry.with(number: fresh).rawValue, ordering: .releasing)
                                memory.unmapFrame(entry.number, into: &chain)
                                migrated += 1
                            }
                        },
                        flush: hook)
                }
                scope.endWithoutTLBShootdown()  // shot down per table above
                memory.release(chain)
            }
            edit.finish()
            count(.pagesMigrated, migrated)
            return migrated
        }
    }
}
