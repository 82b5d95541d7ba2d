import Synchronization
extension PageTable {
    /// Visits every populated leaf run of `[start, end)` with the right lock held:
    /// - for a huge PMD slot: `huge(pmdTable, index, entry, chunkStart, chunkEnd)` under `pmd_lock`;
    /// - for a PTE table: `pte(table, firstIndex, endIndex, chunkStart)` under its split lock, then
    ///   `flush(chunkStart, chunkEnd)` still under the lock (the secondary-TLB hook). `chunkStart`
    ///   is the address of `firstIndex`.
    ///
    /// The per-page loop lives in the caller's `pte` closure, called once per table (at most 512
    /// pages), so no per-page dispatch happens here. Does not allocate tables.
    ///
    /// - Precondition: the mmap lock is held (read or write), so PTE tables cannot be detached
    ///   underneath; no split lock is held by the caller.
    func forEachLockedLeafRun(
        from start: UInt64, to end: UInt64,
        huge: (TableBlock, Int, PageTableEntry, UInt64, UInt64) -> Void,
        pte: (TableBlock, Int, Int, UInt64) -> Void,
        flush: (UInt64, UInt64) -> Void
    ) {
        forEachPMDSlot(from: start, to: end) { pmd, pmdIndex, chunkStart, chunkEnd in
            var entry = pmd.load(pmdIndex)
            if entry.isNone { return }
            if entry.isHuge {
                let lock = pmdLock(pmd)
                lock.lock()
                entry = pmd.load(pmdIndex)
                if entry.isHuge {
                    huge(pmd, pmdIndex, entry, chunkStart, chunkEnd)
                    flush(chunkStart, chunkEnd)
                    lock.unlock()
                    return
                }
                lock.unlock()
                if entry.isNone { return }
            }
            let table = TableBlock(entry: entry)
            let first = Self.index(chunkStart, level: 0)
            let last = first &+ Int(truncatingIfNeeded: (chunkEnd &- chunkStart) &>> 12)
            let lock = pteLock(table)
            lock.lock()
            pte(table, first, last, chunkStart)
            flush(chunkStart, chunkEnd)
            lock.unlock()
        }
    }
}

/// What a zap removed.
@frozen @usableFromInline
struct ZapResult {
    /// 4 KiB entries cleared (present or PROT_NONE).
    @usableFromInline var pages = 0
    /// Huge entries cleared.
    @usableFromInline var hugePages = 0
    /// Swap entries cleared.
    @usableFromInline var swapEntries = 0

    @inlinable init() {}
}

extension PageTable {
    /// Clears every leaf entry in `[start, end)` (the kernel's `zap_pte_range` family): frames
    /// whose last mapping disappears are appended to `chain`, swap slots are released.
    ///
    /// - Precondition: the invalidation covering the range has started (outside any split lock),
    ///   the mmap lock is held, and partly covered huge mappings were split beforehand.
    /// - Postcondition: the caller ends the invalidation, then releases `chain`.
    func zap(
        from start: UInt64, to end: UInt64, memory: PhysicalMemory, chain: inout FrameChain,
        keepGuards: Bool = false, flush: (UInt64, UInt64) -> Void
    ) -> ZapResult {
        var result = ZapResult()
        forEachLockedLeafRun(
            from: start, to: end,
            huge: { pmd, index, entry, chunkStart, chunkEnd in
                // A huge entry the range covers only partly is left alone: callers split those
                // first, and under the mmap read lock a concurrent fault may have created one.
                guard chunkEnd &- chunkStart == Self.hugePageSize else { return }
                pmd[index].pointee.store(0, ordering: .relaxed)
                memory.unmapHugeFrame(entry.number, into: &chain)
                result.hugePages &+= 1
            },
            pte: { table, first, last, _ in
                let cleared = Self.zapEntries(table, first, last, memory: memory, chain: &chain, keepGuards: keepGuards)
                result.pages &+= cleared.pages
                result.swapEntries &+= cleared.swapEntries
            },
            flush: flush)
        return result
    }

    /// The per-page loop of a zap over entries `first..<last` of one PTE table (split lock held).
    ///
    /// The first pass clears entries that map frames and contains no call, so the chain, the base
    /// pointers and the counters stay in registers (a call on a rare path would spill them for
    /// every page); swap entries, rare, are left for a second pass that releases their slots. Out
    /// of line so it gets its own register allocation.
    @inline(never)
    static func zapEntries(
        _ table: TableBlock, _ first: Int, _ last: Int, memory: PhysicalMemory, chain: inout FrameChain,
        keepGuards: Bool = false
    ) -> (pages: Int, swapEntries: Int) {
        let counts = memory.counts
        let links = memory.links
        var head = chain.first
        var tail = chain.last
        var gathered = chain.count
        // The entries this pass leaves: empty ones counted in the low 16 bits, swap entries above
        // (a table has 512 entries; 1 << 16 is an immediate operand, no constant register).
        // Counting those, rare in a populated range, instead of the cleared ones keeps a counter
        // update out of the common path.
        var skipped = 0
        var entry = table[first]
        let end = table[last]
        // The chain's tail is set by the first frame appended to an empty chain: only while the
        // chain is empty does the loop track it (one table of a zap), so the loop that runs for
        // the rest does not test for it per page.
        if gathered == 0 {
            while entry < end {
                let frame = Self.zapEntry(entry, counts: counts, skipped: &skipped)
                entry += 1
                if frame != PhysicalMemory.zeroFrame {
                    links[Int(truncatingIfNeeded: frame)].store(UInt32(truncatingIfNeeded: head), ordering: .relaxed)
                    tail = frame
                    head = frame
                    gathered = 1
                    break
                }
            }
        }
        while entry < end {
            let frame = Self.zapEntry(entry, counts: counts, skipped: &skipped)
            entry += 1
            if frame != PhysicalMemory.zeroFrame {
                links[Int(truncatingIfNeeded: frame)].store(UInt32(truncatingIfNeeded: head), ordering: .relaxed)
                head = frame
                gathered &+= 1
            }
        }
        let pages = (last &- first) &- (skipped & 0xFFFF) &- (skipped &>> 16)
        let sawSwap = skipped &>> 16 != 0
        chain.first = head
        chain.last = tail
        chain.count = gathered
        var swapEntries = 0
        if sawSwap {
            for index in first..<last {
                let raw = table[index].pointee.load(ordering: .relaxed)
                guard raw & (PageTableEntry.present | PageTableEntry.swap) == PageTableEntry.swap else { continue }
                if raw & PageTableEntry.guardMarker != 0 {
                    // Guard markers survive madvise zaps; munmap and teardown clear them.
                    if !keepGuards { table[index].pointee.store(0, ordering: .relaxed) }
                    continue
                }
                table[index].pointee.store(0, ordering: .relaxed)
                memory.swap.release(UInt32(truncatingIfNeeded: (raw & PageTableEntry.numberMask) &>> 12))
                swapEntries &+= 1
            }
        }
        return (pages, swapEntries)
    }

    /// One entry of `zapEntries`' first pass: clears it unless it is empty or a swap entry
    /// (counted in `skipped`), and returns the frame whose last mapping it was, or the zero frame
    /// when none was freed.
    @inline(__always)
    static func zapEntry(
        _ entry: UnsafeMutablePointer<Atomic<UInt64>>, counts: UnsafeMutablePointer<Atomic<UInt64>>,
        skipped: inout Int
    ) -> UInt64 {
        let raw = entry.pointee.load(ordering: .relaxed)
        // Present entries are cleared; of the others, empty entries and swap entries (left for
        // the second pass) are skipped and PROT_NONE entries cleared.
        if raw & PageTableEntry.present == 0 {
            if raw == 0 {
                skipped &+= 1
                return PhysicalMemory.zeroFrame
            }
            if raw & PageTableEntry.swap != 0 {
                skipped &+= 1 &<< 16
                return PhysicalMemory.zeroFrame
            }
        }
        // Relaxed: the split lock orders this against other writers; lockless readers load
        // atomically and revalidate.
        entry.pointee.store(0, ordering: .relaxed)
        // The frame number, bits 12..<52 (numberMask).
        let frame = (raw &<< 12) &>> 24
        #if SHOOTDOWN_INTERNAL_CHECKS
        checkInvariant(frame == (raw & PageTableEntry.numberMask) &>> 12, "frame number extraction")
        #endif
        if frame == PhysicalMemory.zeroFrame { return frame }
        let word = counts + Int(truncatingIfNeeded: frame)
        // Exclusive fast path (see PhysicalMemory): the split lock we hold is the only way to
        // reach a frame mapped once, so no atomic RMW is needed, and a free frame's counts are
        // dead state (allocation sets them), so release builds do not even clear them; checked
        // builds do.
        if word.pointee.load(ordering: .relaxed) == PhysicalMemory.exclusivelyMapped {
            #if SHOOTDOWN_INTERNAL_CHECKS
            word.pointee.store(0, ordering: .relaxed)
            #endif
            return frame
        }
        let remaining = word.pointee.wrappingSubtract(
            PhysicalMemory.refOne | PhysicalMemory.mapOne, ordering: .acquiringAndReleasing
        ).newValue
        #if SHOOTDOWN_INTERNAL_CHECKS
        checkInvariant(remaining & 0xFFFF_FFFF != 0xFFFF_FFFF, "frame \(frame) refcount underflow")
        #endif
        return remaining == 0 ? frame : PhysicalMemory.zeroFrame
    }
}
