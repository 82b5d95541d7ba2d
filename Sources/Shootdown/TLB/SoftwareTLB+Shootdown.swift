import CInterop
import Synchronization

extension SoftwareTLB {
    /// The initiator's side of a shootdown (`flush_tlb_mm_range`), after translations in
    /// `[start, end)` were removed or downgraded in the page table:
    ///
    /// 1. bump the generation and record the range with it (`inc_mm_tlb_gen` + `flush_tlb_info`);
    /// 2. if any other slot holds entries for the space, force a full barrier on every CPU running
    ///    the process (`membarrier`, the IPI of this model; a fence in fenced mode);
    /// 3. wait for every such slot whose sequence is odd — an access that may have missed the bump —
    ///    until that sequence moves (the access ended). Slots outside an access ("lazy", in x86
    ///    terms) are not waited for: they compare generations at their next access.
    ///
    /// When this returns, no access that starts afterwards can use a translation of the range
    /// as it was, and no access that could have used one is still in flight. Callers then free the
    /// frames they unmapped (`tlb_finish_mmu` after the flush).
    ///
    /// Ordering: the bump is a sequentially consistent increment (it releases the page-table
    /// changes before it and is ordered before the mask load, see ``catchUp(_:_:_:)``); the record
    /// is published under its sequence (``publishRecord(_:_:)``); the slot sequence loads acquire
    /// (they pair with the access's releasing end).
    ///
    /// Context: may run under a split lock (copy-on-write, page-out, migration and collapse flush
    /// before copying content) or none; never sleeps (waits spin, then yield) and takes no lock.
    /// Accesses take no lock either, so waiting for one cannot deadlock. The caller must not be
    /// inside an access of this space (it never is: accesses call nothing that changes entries).
    func shootDown(_ start: UInt64, _ end: UInt64, counters: SlotCounters) {
        // Sequentially consistent: see the ordering note above.
        let generation = space(Self.generation).pointee.wrappingAdd(1, ordering: .sequentiallyConsistent).newValue
        testHook(.tlbShootdownBeforeRecord)
        publishRecord(generation, Self.record(start: start, end: end))
        counters.increment(SpaceCounter.tlbShootdowns.rawValue)
        // Sequentially consistent: a slot joining concurrently is either seen here or sees the bump.
        var others = space(Self.slotMask).pointee.load(ordering: .sequentiallyConsistent)
        let me = ThreadSlot.current
        if me != ThreadSlot.shared { others &= ~(1 &<< UInt64(me)) }
        if others == 0 { return }
        if membarrier {
            Membarrier.run()
            counters.increment(SpaceCounter.tlbShootdownBarriers.rawValue)
        } else {
            // Sequentially consistent: pairs with the fence every access makes in fenced mode.
            atomicMemoryFence(ordering: .sequentiallyConsistent)
        }
        var waitStarted: UInt64 = 0
        while others != 0 {
            let slot = others.trailingZeroBitCount
            others &= others &- 1
            let word = block(slot) + Self.sequence
            // Acquiring: an even value (or a moved one) means the access that may have used an
            // old translation is over, and its load or store happened before this.
            let observed = word.pointee.load(ordering: .acquiring)
            if observed & 1 == 0 { continue }
            if waitStarted == 0 { waitStarted = cinterop_monotonic_ns() }
            counters.increment(SpaceCounter.tlbShootdownWaits.rawValue)
            var rounds = 0
            while word.pointee.load(ordering: .acquiring) == observed {
                rounds &+= 1
                // The access holds no lock and never blocks; if its thread was preempted inside
                // it, let it run. Never sleep: this may run under a split lock.
                if rounds < 128 { cinterop_cpu_relax() } else { cinterop_yield() }
            }
        }
        if waitStarted != 0 {
            counters.add(
                SpaceCounter.tlbShootdownWaitNanoseconds.rawValue, Int64(cinterop_monotonic_ns() &- waitStarted))
        }
    }

    /// Stores the record of the flush of `generation` unless a newer generation's record is
    /// there already (an initiator preempted between its bump and this store must not replace the
    /// record of a later flush: a slot one generation behind would flush the wrong range). Writers
    /// exclude each other by making ``recordSequence`` odd (a few stores long; spins, never
    /// sleeps); catch-ups read the record as a seqcount reader (``recordedRange(of:)``), so they
    /// see the full 64-bit generation and the range of one and the same flush.
    func publishRecord(_ generation: UInt64, _ record: UInt64) {
        let sequence = space(Self.recordSequence)
        var current = sequence.pointee.load(ordering: .relaxed)
        var rounds = 0
        while true {
            // Acquiring: the previous writer's stores are visible before this one compares
            // generations.
            if current & 1 == 0,
                sequence.pointee.compareExchange(
                    expected: current, desired: current &+ 1, ordering: .acquiring
                ).exchanged
            {
                break
            }
            rounds &+= 1
            if rounds < 128 { cinterop_cpu_relax() } else { cinterop_yield() }
            current = sequence.pointee.load(ordering: .relaxed)
        }
        // Releasing fence: a reader that sees any of the stores below also sees the odd sequence
        // (the write side of a seqcount).
        atomicMemoryFence(ordering: .releasing)
        // A full generation never wraps (2^64 shootdowns), so "newer" is a plain comparison.
        if space(Self.recordGeneration).pointee.load(ordering: .relaxed) < generation {
            space(Self.recordGeneration).pointee.store(generation, ordering: .relaxed)
            space(Self.record).pointee.store(record, ordering: .relaxed)
        }
        // Releasing: a catch-up that reads this even sequence sees the record, the bump of its
        // generation and the page-table changes before that bump.
        sequence.pointee.store(current &+ 2, ordering: .releasing)
    }
}
