import Synchronization

extension AddressSpace {
    /// Creates a child address space (`fork` / `dup_mmap`): the same VMAs; private anonymous
    /// pages shared copy-on-write (both sides' entries write-protected under one
    /// `protectionPage` invalidation of the parent per VMA); shared mappings shared outright;
    /// swap entries shared by reference. Frame and swap reference counts stay exact across any
    /// number of forks and exits.
    ///
    /// Huge mappings of private VMAs are split first (under a `clear` invalidation), so a compound
    /// frame is only ever mapped by one entry; Linux shares the huge page instead.
    ///
    /// Pinned pages (``pin(address:length:write:)``) are copied for the child at once instead of
    /// shared (`copy_present_page`): the parent keeps the pinned frame, writable as it was, so the
    /// device and the parent keep seeing one page.
    ///
    /// Linux rules (measured on 6.18): `dc` (`MADV_DONTFORK`) VMAs are not copied; `wf`
    /// (`MADV_WIPEONFORK`) VMAs are copied empty (the child reads zeros; the flag stays); `lo` and
    /// `lf` are cleared in the child, whose pages stay mapped copy-on-write; `mlockall(MCL_FUTURE)`
    /// is not inherited; guard markers are copied; VMAs are copied one for one, never merged; a
    /// private VMA without an `anon_vma` (only zero pages, never written) has no entries copied:
    /// the child faults them in when it touches them.
    ///
    /// - Throws: ``MemoryError/addressSpaceDead``; ``MemoryError/outOfMemory`` if the child's
    ///   page-table root or a copy of a pinned page cannot be allocated (the child is discarded).
    public func fork() throws(MemoryError) -> AddressSpace {
        try mmapLock.withWriteLock { () throws(MemoryError) -> AddressSpace in
            try checkAlive()
            let child = try AddressSpace(configuration: configuration, memory: memory)
            child.freeAreaCache = freeAreaCache
            child.programBreak = programBreak
            let childEdit = VMAEdit(child)
            for vma in index.all {
                // Faults under the VMA lock must not change the parent's entries (or install a
                // huge mapping after the split below) while they are copied: `dup_mmap`
                // write-locks every VMA, `dc` ones included, before it looks at its flags.
                writeLockVMA(vma)
                if vma.flags.contains(.dontCopy) { continue }
                let cow = vma.isAnonymousPrivate
                let wipe = cow && vma.flags.contains(.wipeOnFork)
                if cow && !wipe && vma.anonVMA != 0 { splitHugeMappings(vma.start, vma.end) }
                // `anon_vma_fork`: every child VMA gets an anon_vma of its own, even parts of one
                // parent VMA that share theirs (measured: the child's parts then never merge).
                let anon: UInt64 = vma.anonVMA != 0 && !wipe ? AnonVMA.make(inherited: true) : 0
                childEdit.insert(
                    VMA(start: vma.start, end: vma.end, protection: vma.protection,
                        flags: vma.flags.subtracting([.locked, .lockOnFault]),
                        sharedObject: vma.sharedObject, pageOffset: vma.pageOffset, anonVMA: anon))
                // `vma_needs_copy`: a VMA without an anon_vma copies no entries; the child faults
                // its pages in later (measured: mincore shows a private one's absent in the child;
                // a shared one's pages stay unmapped there, so the parent's `MADV_PAGEOUT` may take
                // them). Guard installation gives a private VMA an anon_vma; a shared VMA that ever
                // had guards (`gu`) is copied whole, entries and markers (measured).
                if wipe || (vma.anonVMA == 0 && !(vma.isShared && vma.flags.contains(.maybeGuard))) { continue }
                var copied = true
                if cow {
                    let scope = beginInvalidation(vma.start, vma.end, .protectionPage, vma: snapshot(vma))
                    copied = copyPageRange(
                        to: child, vma.start, vma.end, copyOnWrite: true, writable: vma.protection.contains(.write))
                    scope.end()
                } else {
                    copyPageRange(to: child, vma.start, vma.end, copyOnWrite: false, writable: false)
                }
                if !copied {
                    childEdit.finish()
                    child.teardown()
                    throw .outOfMemory
                }
            }
            childEdit.finish()
            return child
        }
    }


    /// `copy_page_range`: copies the entries of `[start, end)` into `child` (not yet visible to any
    /// other thread), taking a reference for each, and write-protects both sides when
    /// `copyOnWrite`, except for pinned pages, which the child gets a copy of (writable when
    /// `writable`). Returns `false` if such a copy could not be allocated.
    @discardableResult
    private func copyPageRange(
        to child: AddressSpace, _ start: UInt64, _ end: UInt64, copyOnWrite: Bool, writable: Bool
    ) -> Bool {
        var protected = 0
        var outOfMemory = false
        withSecondaryTLBHook { hook in
            pageTable.forEachLockedLeafRun(
                from: start, to: end,
                huge: { _, _, _, _, _ in
                    // Private VMAs were split above and shared ones never map huge pages.
                    checkInvariant(false, "huge mapping left for fork to copy")
                },
                pte: { table, first, last, chunkStart in
                    guard let childPMD = child.pageTable.pmdTable(for: chunkStart),
                        let childTable = child.pageTable.pteTable(in: childPMD, at: PageTable.index(chunkStart, level: 1))
                    else { preconditionFailure("out of host memory for page tables") }
                    for index in first..<last {
                        let raw = table[index].pointee.load(ordering: .relaxed)
                        if raw == 0 { continue }
                        var entry = PageTableEntry(rawValue: raw)
                        if entry.isGuard {
                            // Nothing to reference.
                        } else if entry.isSwap {
                            memory.swap.duplicate(UInt32(truncatingIfNeeded: entry.number))
                        } else if copyOnWrite && memory.isPinned(entry.number) {
                            // The device writes the parent's frame: the child gets its own copy
                            // now, and the parent's entry stays as it is (writable).
                            guard let copy = memory.allocate() else {
                                outOfMemory = true
                                continue
                            }
                            memory.setToken(memory.token(of: entry.number), of: copy)
                            // The parent's bits (a PROT_NONE entry stays one), writable where the
                            // VMA is (`maybe_mkwrite`).
                            entry = entry.with(number: copy).without(PageTableEntry.accessed)
                            if entry.isPresent && writable {
                                entry = entry.with(PageTableEntry.writable | PageTableEntry.dirty)
                            }
                        } else {
                            memory.mapAgain(entry.number)
                            if copyOnWrite && entry.isWritable {
                                entry = entry.without(PageTableEntry.writable)
                                table[index].pointee.store(entry.rawValue, ordering: .relaxed)
                                protected += 1
                            }
                            entry = entry.without(PageTableEntry.accessed)
                        }
                        childTable[index].pointee.store(entry.rawValue, ordering: .releasing)
                    }
                },
                // Without copy-on-write the parent's entries do not change: nothing to flush.
                flush: copyOnWrite ? hook : { _, _ in })
        }
        count(.pagesWriteProtected, protected)
        return !outOfMemory
    }
}
