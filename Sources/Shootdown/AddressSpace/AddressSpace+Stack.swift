import Synchronization

extension AddressSpace {
    /// Grows the growsdown VMA just above `address` down to `address`'s page (`expand_downwards`,
    /// on a fault below a stack). Takes the mmap write lock; returns whether the VMA now covers
    /// `address`.
    ///
    /// Linux rules (measured on 6.18; the fault that needs the growth then checks access as
    /// usual, so a write below a read-only stack grows it and still faults):
    /// - only when the first VMA above `address` has ``VMFlags/growsDown``; there is no limit on
    ///   the distance from the old start;
    /// - not below `hintMinAddress` (the effective `mmap_min_addr`, 65536 here, whatever the
    ///   capabilities);
    /// - the VMA below must stay `stackGuardGap` (256 pages) away from the new start unless it
    ///   is growsdown itself or `PROT_NONE` (then the stack may grow up to its end);
    /// - the grown VMA may not exceed `stackLimit` (`RLIMIT_STACK`), nor, when locked, push the
    ///   locked total past `RLIMIT_MEMLOCK` without `CAP_IPC_LOCK`;
    /// - growing gives the VMA its `anon_vma` identity (`anon_vma_prepare`), before the size and
    ///   lock checks, so a growth they refuse leaves it too; the new pages are not populated, not
    ///   even in a locked VMA. No invalidation is sent (nothing was mapped there).
    func expandStack(to address: UInt64) -> Bool {
        mmapLock.withWriteLock { () -> Bool in
            guard !dead.load(ordering: .relaxed) else { return false }
            let newStart = address & ~(Self.pageSize - 1)
            guard let vma = index.findFirst(endingAfter: address) else { return false }
            if vma.start <= address { return true }  // another fault grew it meanwhile
            guard vma.flags.contains(.growsDown), newStart >= configuration.hintMinAddress else { return false }
            if let below = vma.previous {
                if below.end > newStart { return false }
                if !below.flags.contains(.growsDown) && !below.protection.isEmpty
                    && newStart - below.end < Self.stackGuardGap
                {
                    return false
                }
            }
            // `anon_vma_prepare` comes before the size and lock checks: a refused growth still
            // leaves the VMA its identity (measured: a later read-only mprotect keeps `ac`).
            if vma.anonVMA == 0 && vma.sharedObject == nil { prepareAnonVMA(vma) }
            if vma.end - newStart > configuration.stackLimit { return false }
            if vma.isLocked {
                do throws(MemoryError) {
                    try checkLockLimit(adding: vma.start - newStart, mapping: false)
                } catch {
                    return false
                }
            }
            let edit = VMAEdit(self)
            edit.setBounds(vma, start: newStart, end: vma.end)
            edit.finish()
            return true
        }
    }
}
