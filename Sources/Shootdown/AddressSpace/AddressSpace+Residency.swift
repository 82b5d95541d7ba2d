import Synchronization

extension AddressSpace {
    /// Which pages of `[address, address + length)` are resident (`mincore`), one `Bool` per page.
    ///
    /// Linux rules (measured on 6.18): an unaligned address is `EINVAL` (even with zero length);
    /// zero length returns `[]`; a length that overflows when rounded, a range past `userLimit`, or
    /// any hole is `ENOMEM` (no partial result).
    ///
    /// Residency as this kernel reports anonymous memory: a present entry (the zero page
    /// included, PROT_NONE entries too) is resident; a never-touched page, a guard marker, and a
    /// swap entry (no swap cache is modelled) are not. Shared memory reports its object's pages:
    /// resident once any mapping faulted them in, even where this VMA has no entry.
    public func residency(address: UInt64, length: UInt64) throws(MemoryError) -> [Bool] {
        guard Self.isPageAligned(address) else { throw .invalidArgument }
        if length == 0 { return [] }
        guard let rounded = Self.pageAlign(length), rounded != 0, address <= Self.userLimit,
            rounded <= Self.userLimit - address
        else { throw .noMemory }
        let end = address + rounded
        return try mmapLock.withReadLock { () throws(MemoryError) -> [Bool] in
            try checkAlive()
            // Holes first, without allocating: a huge range with a hole is ENOMEM, not a vector
            // of billions of entries (oracle: mincore(0x10000, 0x7ffff3b88000) aborted).
            try walkVMAs(address, end, stopAtHole: true) { _, _, _ throws(MemoryError) in }
            var result: [Bool] = []
            result.reserveCapacity(Int(rounded / Self.pageSize))
            try walkVMAs(address, end, stopAtHole: true) { vma, start, stop throws(MemoryError) in
                var page = start
                while page < stop {
                    if let object = vma.sharedObject {
                        result.append(object.isCached(vma.pageOffset + (page - vma.start) / Self.pageSize))
                    } else if let entry = translate(page) {
                        result.append(entry.isPresent || entry.isProtNone)
                    } else {
                        result.append(false)
                    }
                    page += Self.pageSize
                }
            }
            return result
        }
    }
}

extension SharedMemoryObject {
    /// Whether page `offset` is in the object's cache.
    func isCached(_ offset: UInt64) -> Bool {
        pages.withLock { $0[offset] != nil }
    }
}
