import Synchronization

extension AddressSpace {
    /// The bits of the subscriptions a space with TLBs gets at once (``subscriptionsWord``), carrying
    /// the TLBs, so that every invalidation's end shoots them down: the one choke point every source
    /// of change already passes (see ``NotifierSubscriptions/tlb``). Called by `init` (no method of
    /// the space is called there: that would cost a retain and a release of every new space).
    static func tlbSubscriptions(
        _ tlb: SoftwareTLB, space id: UInt64, _ configuration: Configuration, _ counters: SlotCounters
    ) -> UInt {
        let created = NotifierSubscriptions(
            space: id, protection: configuration.notifierList, domain: SleepableRCU.notifiers, counters: counters,
            tlb: tlb)
        return UInt(bitPattern: Unmanaged.passRetained(created).toOpaque())
    }

    /// Shoots the TLBs down over `[start, end)` now, for a change that copies content out of the
    /// frames it replaces (copy-on-write, page-out, migration, collapse) and so cannot wait for the
    /// end of its invalidation: a store through a stale TLB entry after the copy would be lost.
    /// The caller then ends its scope with ``InvalidationScope/endWithoutTLBShootdown()``.
    ///
    /// Caller: holds the split lock of every entry in the range, and calls this before reading
    /// content out of the old frames. Flushing before the entries change is as good as after:
    /// this model's page walk (a TLB fill) takes the split lock, so no TLB can load an entry of the
    /// range again until the caller unlocks, and by then the entries are the new ones. A no-op
    /// without TLBs (one test).
    @inline(__always)
    func shootDownTLBsLocked(_ start: UInt64, _ end: UInt64) {
        if let tlb { tlb.shootDown(start, end, counters: counters) }
    }

    /// ``shootDownTLBsLocked(_:_:)`` over the run of entries `first..<last` of the PTE table
    /// `table` (starting at address `chunkStart`), if any entry there is one `candidate` selects:
    /// a change that will copy content out of those entries flushes before it does.
    ///
    /// Caller: holds the table's split lock (inside a ``PageTable/forEachLockedLeafRun`` closure).
    @inline(__always)
    func shootDownTLBsLocked(
        _ table: TableBlock, _ first: Int, _ last: Int, _ chunkStart: UInt64, where candidate: (PageTableEntry) -> Bool
    ) {
        guard tlb != nil else { return }
        for index in first..<last where candidate(table.load(index)) {
            shootDownTLBsLocked(chunkStart, chunkStart &+ UInt64(last &- first) &<< 12)
            return
        }
    }

    /// Adds the counters the TLBs keep per slot (hits, misses, flushes) to `values`.
    func addTLBCounters(to values: inout [Int64]) {
        guard let tlb else { return }
        let sums = tlb.counterSums()
        values[SpaceCounter.tlbHits.rawValue] += sums.accesses - sums.misses
        values[SpaceCounter.tlbMisses.rawValue] += sums.misses
        values[SpaceCounter.tlbPartialFlushes.rawValue] += sums.partial
        values[SpaceCounter.tlbFullFlushes.rawValue] += sums.full
        values[SpaceCounter.tlbPagesFlushed.rawValue] += sums.pages
    }

    /// The space's TLB generation (`tlb_gen`), or `nil` without TLBs. For tests and diagnostics.
    @_spi(Benchmarking)
    public var tlbGeneration: UInt64? { tlb?.currentGeneration }
}
