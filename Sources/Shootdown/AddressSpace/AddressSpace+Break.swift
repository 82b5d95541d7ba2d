import Synchronization

extension AddressSpace {
    /// The program break (`brk`), raw syscall semantics: returns the new break, or the current one
    /// when it refuses (it never throws for a refusal).
    ///
    /// Linux rules (measured on 6.18): the break starts at `programBreakStart` (a space without one
    /// refuses everything and returns 0); `brk(0)` or any address below the start returns the
    /// current break; the break itself may be unaligned, the heap VMA ends at it rounded up to a
    /// page. Shrinking unmaps the freed pages (`unmap`; refused if nothing is mapped there, and if
    /// sealed, after splitting the VMA at the new end as munmap does); growing needs the new
    /// end plus one page to stay below the next VMA (its stack guard gap included) and within
    /// `userLimit`, and the locked-memory limit after `mlockall(MCL_FUTURE)`; the new pages join
    /// the previous VMA when compatible and it reaches above the break's start (the `[heap]` VMA:
    /// `rd wr mr mw me ac`; a VMA ending at the start, like the bss, never grows), and are populated
    /// when locked, and refused past ``Configuration/commitLimit``. Regrown pages read zero.
    ///
    /// - Throws: only ``MemoryError/addressSpaceDead``.
    @discardableResult
    public func setBreak(_ address: UInt64) throws(MemoryError) -> UInt64 {
        var populate: (UInt64, UInt64)? = nil
        let result = try mmapLock.withWriteLock { () throws(MemoryError) -> UInt64 in
            try checkAlive()
            guard let startBreak = configuration.programBreakStart else { return 0 }
            if address < startBreak { return programBreak }
            guard let newEnd = Self.pageAlign(address), let oldEnd = Self.pageAlign(programBreak) else {
                return programBreak
            }
            if newEnd == oldEnd {
                programBreak = address
                return address
            }
            if newEnd < oldEnd {
                // Nothing mapped in the range given up: refused (Linux looks for the brk VMA there).
                if !index.contains(intersecting: newEnd, oldEnd, where: { _ in true }) { return programBreak }
                let edit = VMAEdit(self)
                defer { edit.finish() }
                // munmap's checks, with its split before a sealed VMA (oracle).
                do throws(MemoryError) {
                    try checkNotSealed(newEnd, oldEnd, splittingWith: edit)
                } catch {
                    return programBreak
                }
                if exceedsMapCount(splitting: splitsNeeded(newEnd, oldEnd)) { return programBreak }
                unmapLocked(newEnd, oldEnd, edit: edit)
                programBreak = address
                return address
            }
            guard newEnd <= Self.userLimit - Self.pageSize else { return programBreak }
            // Heuristic overcommit: a growth larger than RAM plus swap (measured).
            if let limit = configuration.commitLimit, newEnd - oldEnd > limit { return programBreak }
            if let next = index.findFirst(endingAfter: oldEnd), newEnd + Self.pageSize > gapStart(next) {
                return programBreak
            }
            var flags: VMFlags = [.mayRead, .mayWrite, .mayExec, .account, .softDirty]
            flags.formUnion(defaultFlags)
            if flags.contains(.locked) {
                if !configuration.capabilities.contains(.ipcLock), let limit = configuration.lockedMemoryLimit,
                    (lockedPages() * Self.pageSize + (newEnd - oldEnd)) > limit
                {
                    return programBreak
                }
            }
            if index.count >= configuration.maxMapCount { return programBreak }
            let edit = VMAEdit(self)
            let vma = VMA(start: oldEnd, end: newEnd, protection: .readWrite, flags: flags)
            edit.insert(vma)
            // Only a VMA reaching above the break's start can absorb the growth (`vma_prev_limit`
            // from `start_brk`): the executable's bss, ending where the heap starts, never grows
            // into an empty heap (oracle), though a heap merged into it does; nothing follows
            // within the guard gap.
            if let previous = vma.previous, previous.end > startBreak { edit.mergeNeighbours(vma) }
            edit.finish()
            if flags.contains(.locked) && !flags.contains(.lockOnFault) { populate = (oldEnd, newEnd - oldEnd) }
            programBreak = address
            return address
        }
        if let (start, length) = populate { try? self.populate(start, length: length, write: true) }
        return result
    }
}
