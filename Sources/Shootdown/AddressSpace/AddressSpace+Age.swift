import Synchronization

extension AddressSpace {
    /// Ages `[address, address + length)`: test-and-clears the accessed bit of every present page
    /// and asks subscribers (`clearFlushYoung`, or `clearYoung` when `flush` is false) about the
    /// same page, OR-combining the answers (`ptep_clear_flush_young_notify`).
    ///
    /// - Returns: the number of 4 KiB pages that were young (a young huge mapping counts 512).
    /// - Throws: `EINVAL` for an unaligned or overflowing range; ``MemoryError/addressSpaceDead``.
    public func age(address: UInt64, length: UInt64, flush: Bool = true) throws(MemoryError) -> Int {
        let end = try Self.userRangeEnd(address, length)
        return try mmapLock.withReadLock { () throws(MemoryError) -> Int in
            try checkAlive()
            let subscriptions = subscriptionsPointer?.takeUnretainedValue()
            let askSubscribers = subscriptions?.wantsYoung ?? false
            var young = 0
            pageTable.forEachLockedLeafRun(
                from: address, to: end,
                huge: { pmd, index, entry, chunkStart, _ in
                    guard entry.isPresent else { return }
                    var wasYoung = entry.isAccessed
                    if wasYoung { pmd[index].pointee.store(entry.without(PageTableEntry.accessed).rawValue, ordering: .relaxed) }
                    if askSubscribers {
                        let hugeStart = chunkStart & ~(Self.hugePageSize - 1)
                        wasYoung = subscriptions!.clearYoung(start: hugeStart, end: hugeStart + Self.hugePageSize, flush: flush)
                            || wasYoung
                    }
                    if wasYoung { young += 512 }
                },
                pte: { table, first, last, chunkStart in
                    for index in first..<last {
                        let entry = PageTableEntry(rawValue: table[index].pointee.load(ordering: .relaxed))
                        guard entry.isPresent else { continue }
                        var wasYoung = entry.isAccessed
                        if wasYoung {
                            table[index].pointee.store(entry.without(PageTableEntry.accessed).rawValue, ordering: .relaxed)
                        }
                        if askSubscribers {
                            let page = chunkStart + UInt64(index - first) * Self.pageSize
                            wasYoung = subscriptions!.clearYoung(start: page, end: page + Self.pageSize, flush: flush)
                                || wasYoung
                        }
                        if wasYoung { young += 1 }
                    }
                },
                flush: { _, _ in })
            return young
        }
    }

    /// Whether the page at `address` was accessed, by the CPU (accessed bit) or through any
    /// subscriber (`testYoung`, stopping at the first that says yes). Clears nothing.
    public func testYoung(at address: UInt64) -> Bool {
        if let entry = translate(address), entry.isPresent, entry.isAccessed { return true }
        return subscriptionsPointer?.takeUnretainedValue().testYoung(address: address & ~(Self.pageSize - 1)) ?? false
    }
}
