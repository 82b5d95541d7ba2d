import Synchronization

extension AddressSpace {
    /// Seals `[address, address + length)` (`mseal`, syscall 462): `sl` on every VMA in the range.
    ///
    /// Linux rules (measured on 6.18): nonzero `flags` is `EINVAL`; an unaligned address is
    /// `EINVAL`; a length that overflows when rounded or added is `EINVAL`; zero length succeeds;
    /// a range with a hole (or past every VMA) is `ENOMEM` before anything changes. VMAs are split
    /// at the bounds (`ENOMEM` past `maxMapCount`) and merged with sealed neighbours.
    ///
    /// What sealing blocks, each with `EPERM`: munmap over a sealed VMA (nothing unmapped);
    /// mmap(`MAP_FIXED`) over one; mprotect reaching one (VMAs before it already changed); mremap
    /// of a sealed source; brk shrinking over one (refused); and on sealed read-only private
    /// VMAs the discarding advices (`MADV_DONTNEED`, `MADV_DONTNEED_LOCKED`, `MADV_FREE`,
    /// `MADV_REMOVE`, `MADV_DONTFORK`, `MADV_WIPEONFORK`, `MADV_GUARD_INSTALL`). mlock, munlock, msync and the other advices
    /// still work. Sends no invalidation.
    public func seal(address: UInt64, length: UInt64, flags: UInt64 = 0) throws(MemoryError) {
        guard flags == 0, Self.isPageAligned(address), let rounded = Self.pageAlign(length),
            !address.addingReportingOverflow(rounded).overflow
        else { throw .invalidArgument }
        if length == 0 { return }
        guard rounded != 0 else { throw .invalidArgument }
        let end = address + rounded
        try mmapLock.withWriteLock { () throws(MemoryError) in
            try checkAlive()
            _ = try coveringVMAs(address, end)
            let edit = VMAEdit(self)
            defer { edit.finish() }
            try walkVMAs(address, end, stopAtHole: true) { vma, start, stop throws(MemoryError) in
                try modifyVMA(vma, start, stop, protection: vma.protection, flags: vma.flags.union(.sealed), edit: edit)
            }
        }
    }

    /// Sets flags on the VMAs of `[address, address + length)` that no anonymous-memory syscall
    /// reaches (``VMFlags/dontExpand`` and the like), splitting and merging as needed — a
    /// mirroring aid for building a space that copies another process's layout. Access bits are
    /// ignored (use protect).
    public func setFlags(address: UInt64, length: UInt64, adding: VMFlags, removing: VMFlags = []) throws(MemoryError) {
        let end = try Self.userRangeEnd(address, length, nonEmpty: true)
        try mmapLock.withWriteLock { () throws(MemoryError) in
            try checkAlive()
            _ = try coveringVMAs(address, end)
            let edit = VMAEdit(self)
            defer { edit.finish() }
            try walkVMAs(address, end, stopAtHole: true) { vma, start, stop throws(MemoryError) in
                let flags = vma.flags.union(adding.subtracting(.access)).subtracting(removing.subtracting(.access))
                try modifyVMA(vma, start, stop, protection: vma.protection, flags: flags, edit: edit)
            }
        }
    }
}
