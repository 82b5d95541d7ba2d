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
    /// - Throws: ``MemoryError/addressSpaceDead``; ``MemoryError/outOfMemory`` if the child's
    ///   page-table root cannot be allocated.
    public func fork() throws(MemoryError) -> AddressSpace {
        try mmapLock.withWriteLock { () throws(MemoryError) -> AddressSpace in
            try checkAlive()
            let child = try AddressSpace(configuration: configuration, memory: memory)
            child.freeAreaCache = freeAreaCache
            let childEdit = VMAEdit(child)
            for vma in index.all {
                // Faults under the VMA lock must not change the parent's entries (or install a
                // huge mapping after the split below) while they are copied (`dup_mmap` does this).
                writeLockVMA(vma)
                let cow = vma.isAnonymousPrivate
                if cow { splitHugeMappings(vma.start, vma.end) }
                childEdit.insert(
                    VMA(start: vma.start, end: vma.end, protection: vma.protection, flags: vma.flags,
                        sharedObject: vma.sharedObject, pageOffset: vma.pageOffset))
                if cow {
                    let scope = beginInvalidation(vma.start, vma.end, .protectionPage, vma: snapshot(vma))
                    copyPageRange(to: child, vma.start, vma.end, copyOnWrite: true)
                    scope.end()
                } else {
                    copyPageRange(to: child, vma.start, vma.end, copyOnWrite: false)
                }
            }
            childEdit.finish()
            return child
        }
    }


    /// `copy_page_range`: copies the entries of `[start, end)` into `child` (not yet visible to any
    /// other thread), taking a reference for each, and write-protects both sides when
    /// `copyOnWrite`.
    private func copyPageRange(to child: AddressSpace, _ start: UInt64, _ end: UInt64, copyOnWrite: Bool) {
        var protected = 0
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
                        if entry.isSwap {
                            memory.swap.duplicate(UInt32(truncatingIfNeeded: entry.number))
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
    }
}
