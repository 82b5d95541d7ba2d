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
            let subscriptions = youngSubscriptions
            var young = 0
            pageTable.forEachLockedLeafRun(
                from: address, to: end,
                huge: { pmd, index, entry, chunkStart, _ in
                    guard entry.isPresent else { return }
                    let hugeStart = chunkStart & ~(Self.hugePageSize - 1)
                    if clearYoung(pmd[index], entry, hugeStart, hugeStart + Self.hugePageSize, subscriptions, flush: flush) {
                        young += 512
                    }
                },
                pte: { table, first, last, chunkStart in
                    for index in first..<last {
                        let entry = PageTableEntry(rawValue: table[index].pointee.load(ordering: .relaxed))
                        guard entry.isPresent else { continue }
                        let page = chunkStart + UInt64(index - first) * Self.pageSize
                        if clearYoung(table[index], entry, page, page + Self.pageSize, subscriptions, flush: flush) {
                            young += 1
                        }
                    }
                },
                flush: { _, _ in })
            return young
        }
    }

    /// The subscriptions to ask about young pages, or `nil` when no subscriber implements a young
    /// callback.
    var youngSubscriptions: NotifierSubscriptions? {
        guard let subscriptions = subscriptionsPointer?.takeUnretainedValue(), subscriptions.wantsYoung else {
            return nil
        }
        return subscriptions
    }

    /// Test-and-clears the accessed bit of the present leaf `entry` in `slot`, then asks
    /// `subscriptions` (if any) about `[start, end)`; young if either says so. Caller: the lock of
    /// the table holding `slot`.
    func clearYoung(
        _ slot: UnsafeMutablePointer<Atomic<UInt64>>, _ entry: PageTableEntry, _ start: UInt64, _ end: UInt64,
        _ subscriptions: NotifierSubscriptions?, flush: Bool
    ) -> Bool {
        var young = entry.isAccessed
        if young { slot.pointee.store(entry.without(PageTableEntry.accessed).rawValue, ordering: .relaxed) }
        if let subscriptions { young = subscriptions.clearYoung(start: start, end: end, flush: flush) || young }
        return young
    }

    /// Whether the page at `address` was accessed, by the CPU (accessed bit) or through any
    /// subscriber (`testYoung`, stopping at the first that says yes). Clears nothing.
    public func testYoung(at address: UInt64) -> Bool {
        if let entry = translate(address), entry.isPresent, entry.isAccessed { return true }
        return subscriptionsPointer?.takeUnretainedValue().testYoung(address: address & ~(Self.pageSize - 1)) ?? false
    }
}
