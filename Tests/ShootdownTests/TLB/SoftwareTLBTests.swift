import Dispatch
import Synchronization
import Testing

@testable import Shootdown

private let p = AddressSpace.pageSize
private let huge = AddressSpace.hugePageSize
private let base: UInt64 = 0x4000_0000

/// A space with per-thread TLBs.
private func tlbSpace(_ memory: PhysicalMemory, mode: TLBMode = .perThread) throws -> AddressSpace {
    try AddressSpace(configuration: AddressSpace.Configuration(tlb: mode), memory: memory)
}

/// Hits, misses and flushes of the software TLBs, single-threaded: every source of change the
/// notifiers know must reach the calling thread's own TLB (its next access catches up with the
/// generation). Each test fills the TLB first and would read a stale translation if its source
/// did not shoot the TLBs down (checked by disabling the shootdown: docs/tlb.md, "Tests").
@Suite struct SoftwareTLBTests {
    @Test(arguments: [TLBMode.perThread, .perThreadFenced])
    func hitsMissesAndFills(mode: TLBMode) throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 0)
        let space = try tlbSpace(memory, mode: mode)
        try space.map(length: 16 * p, placement: .fixed(base))
        _ = space.translate(base)  // registers this thread (its first access would otherwise walk)
        let before = space.statistics
        for index in 0..<16 { try space.write(UInt64(index) + 100, at: base + UInt64(index) * p) }
        var stats = space.statistics.since(before)
        #expect(stats[.tlbMisses] == 16 && stats[.tlbHits] == 0, "\(stats.nonZero)")
        for index in 0..<16 { #expect(try space.read(at: base + UInt64(index) * p) == UInt64(index) + 100) }
        for index in 0..<16 { try space.write(UInt64(index) + 200, at: base + UInt64(index) * p) }
        stats = space.statistics.since(before)
        #expect(stats[.tlbMisses] == 16 && stats[.tlbHits] == 32, "\(stats.nonZero)")
        // What the TLB wrote is in the frames.
        for index in 0..<16 {
            let frame = try #require(space.translate(base + UInt64(index) * p)?.frame)
            #expect(memory.token(of: frame) == UInt64(index) + 200)
        }
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    /// A read of an untouched page maps the zero page read-only: the TLB entry must not let a write
    /// through, and a clean writable entry must walk once to set the dirty bit.
    @Test func writesWalkUntilTheEntryIsWritableAndDirty() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 0)
        let space = try tlbSpace(memory)
        try space.map(length: 2 * p, placement: .fixed(base))
        #expect(try space.read(at: base) == 0)  // zero page, read-only entry
        try space.write(5, at: base)  // must fault: a new frame
        #expect(space.translate(base)?.frame != PhysicalMemory.zeroFrame)
        #expect(try space.read(at: base) == 5)
        #expect(space.statistics[.zeroPageFaults] == 1)
        space.teardown()
    }

    /// Found by the differential run: a fill tagged the entry with the access's address instead of
    /// its page's, so a load at an offset with bit 1 set made a read-only entry (here the zero
    /// page) writable, and a later store wrote the zero page.
    @Test func unalignedLoadsDoNotMakeEntriesWritable() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 0)
        let space = try tlbSpace(memory)
        try space.map(length: 2 * p, protection: .read, placement: .fixed(base))
        #expect(try space.read(at: base + 0xB72) == 0)
        #expect(throws: MemoryError.segmentationFault) { try space.write(7, at: base + 0x638) }
        try space.map(length: p, placement: .fixed(base + 8 * p))
        #expect(try space.read(at: base + 8 * p + 0xB72) == 0)  // zero page, read-only entry
        try space.write(7, at: base + 8 * p + 0x638)  // must fault: a new frame
        #expect(memory.token(of: PhysicalMemory.zeroFrame) == 0)
        #expect(try space.read(at: base + p) == 0)
        space.teardown()
    }

    @Test func partialAndFullFlushes() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 0)
        let space = try tlbSpace(memory)
        try space.map(length: 128 * p, placement: .fixed(base))
        for index in 0..<128 { try space.write(1, at: base + UInt64(index) * p) }
        var before = space.statistics
        try space.unmap(address: base + 5 * p, length: 2 * p)  // 2 pages: within the ceiling
        #expect(throws: MemoryError.segmentationFault) { try space.read(at: base + 5 * p) }
        var stats = space.statistics.since(before)
        #expect(stats[.tlbPartialFlushes] == 1 && stats[.tlbPagesFlushed] == 2 && stats[.tlbFullFlushes] == 0,
                "\(stats.nonZero)")
        #expect(try space.read(at: base + 4 * p) == 1)  // not flushed: still a hit
        before = space.statistics
        try space.unmap(address: base + 64 * p, length: 64 * p)  // above the ceiling: everything
        #expect(try space.read(at: base) == 1)
        stats = space.statistics.since(before)
        #expect(stats[.tlbFullFlushes] == 1 && stats[.tlbMisses] == 1, "\(stats.nonZero)")
        // Two changes before the next access: two generations behind, a full flush.
        before = space.statistics
        try space.protect(address: base, length: p, protection: .read)
        try space.protect(address: base + p, length: p, protection: .read)
        #expect(try space.read(at: base + 2 * p) == 1)
        stats = space.statistics.since(before)
        #expect(stats[.tlbFullFlushes] == 1 && stats[.tlbShootdowns] == 2, "\(stats.nonZero)")
        space.teardown()
    }

    // MARK: - Every source of change

    @Test func unmapFlushes() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 0)
        let space = try tlbSpace(memory)
        try space.map(length: 4 * p, placement: .fixed(base))
        try space.write(5, at: base)
        try space.unmap(address: base, length: p)
        #expect(throws: MemoryError.segmentationFault) { try space.read(at: base) }
        #expect(throws: MemoryError.segmentationFault) { try space.write(6, at: base) }
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test func protectFlushes() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 0)
        let space = try tlbSpace(memory)
        try space.map(length: 4 * p, placement: .fixed(base))
        try space.write(5, at: base)
        try space.write(5, at: base + p)
        try space.protect(address: base, length: p, protection: .read)
        #expect(throws: MemoryError.segmentationFault) { try space.write(6, at: base) }
        #expect(try space.read(at: base) == 5)
        try space.protect(address: base + p, length: p, protection: [])
        #expect(throws: MemoryError.segmentationFault) { try space.read(at: base + p) }
        space.teardown()
    }

    @Test func discardsFlush() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 0)
        let space = try tlbSpace(memory)
        try space.map(length: 4 * p, placement: .fixed(base))
        try space.write(5, at: base)
        try space.advise(address: base, length: p, advice: .dontNeed)
        #expect(try space.read(at: base) == 0)
        // MAP_FIXED over a mapping replaces it (an unmap inside mmap).
        try space.write(6, at: base + p)
        try space.map(length: p, placement: .fixed(base + p))
        #expect(try space.read(at: base + p) == 0)
        space.teardown()
    }

    @Test func remapFlushesTheOldAddress() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 0)
        let space = try tlbSpace(memory)
        try space.map(length: 4 * p, placement: .fixed(base))
        try space.write(5, at: base)
        let target = base + 1024 * p
        #expect(try space.remap(address: base, oldLength: 4 * p, newLength: 4 * p, move: .fixed(target)) == target)
        #expect(throws: MemoryError.segmentationFault) { try space.read(at: base) }
        #expect(try space.read(at: target) == 5)
        // Shrinking in place unmaps the tail.
        try space.write(7, at: target + 3 * p)
        try space.remap(address: target, oldLength: 4 * p, newLength: 2 * p)
        #expect(throws: MemoryError.segmentationFault) { try space.read(at: target + 3 * p) }
        space.teardown()
    }

    @Test func pageOutAndReclaimFlush() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 64)
        let space = try tlbSpace(memory)
        try space.map(length: 4 * p, placement: .fixed(base))
        try space.write(5, at: base)
        try space.advise(address: base, length: p, advice: .pageOut)
        #expect(space.translate(base)?.isSwap == true)
        try space.write(6, at: base)  // must swap in, not store into the freed frame
        #expect(space.statistics[.swapInFaults] == 1)
        #expect(try space.read(at: base) == 6)
        try space.write(8, at: base + p)
        #expect(try space.reclaim(pages: 4) >= 1)
        #expect(space.translate(base + p)?.isSwap == true)
        #expect(try space.read(at: base + p) == 8)
        #expect(space.statistics[.swapInFaults] >= 2)
        space.teardown()
        #expect(memory.framesInUse == 0 && memory.swap.slotsInUse == 0)
    }

    @Test func migrationFlushes() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 0)
        let space = try tlbSpace(memory)
        try space.map(length: 4 * p, placement: .fixed(base))
        try space.write(5, at: base)
        let old = try #require(space.translate(base)?.frame)
        #expect(try space.migrate(address: base, length: p) == 1)
        try space.write(6, at: base)  // must reach the new frame
        let new = try #require(space.translate(base)?.frame)
        #expect(new != old)
        #expect(memory.token(of: new) == 6)
        space.teardown()
    }

    @Test func forkWriteProtectionFlushes() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 0)
        let parent = try tlbSpace(memory)
        try parent.map(length: 4 * p, placement: .fixed(base))
        try parent.write(5, at: base)
        let child = try parent.fork()
        try parent.write(6, at: base)  // must copy on write, not write the shared frame
        #expect(try child.read(at: base) == 5)
        #expect(try parent.read(at: base) == 6)
        child.teardown()
        parent.teardown()
        #expect(memory.framesInUse == 0)
    }

    /// The copy-on-write replacement is flushed before the new entry is used: another thread's TLB
    /// still mapping the old (shared) frame must not read it after the copy's write returned.
    @Test func copyOnWriteReplacementIsFlushedForOtherThreads() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 0)
        let parent = try tlbSpace(memory)
        try parent.map(length: 4 * p, placement: .fixed(base))
        try parent.write(5, at: base)
        let child = try parent.fork()
        let loaded = DispatchSemaphore(value: 0)
        let written = DispatchSemaphore(value: 0)
        let seen = Atomic<UInt64>(0)
        let reader = TestThread("tlb-reader") {
            _ = try? parent.read(at: base)  // fills this thread's TLB with the shared frame
            loaded.signal()
            written.wait()
            seen.store((try? parent.read(at: base)) ?? 0, ordering: .releasing)
        }
        loaded.wait()
        try parent.write(6, at: base)  // copy-on-write on this thread
        written.signal()
        reader.join("reader")
        #expect(seen.load(ordering: .acquiring) == 6)
        #expect(try child.read(at: base) == 5)
        child.teardown()
        parent.teardown()
    }

    @Test func softDirtyClearingFlushes() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 0)
        let space = try tlbSpace(memory)
        try space.map(length: 4 * p, placement: .fixed(base))
        try space.write(5, at: base)
        try space.clearSoftDirty(address: base, length: 4 * p)
        #expect(try space.softDirtyPages(address: base, length: 4 * p).isEmpty)
        try space.write(6, at: base)  // must fault and record itself
        #expect(try space.softDirtyPages(address: base, length: 4 * p) == [base])
        space.teardown()
    }

    @Test func collapseAndSplitFlush() throws {
        let memory = PhysicalMemory(capacity: 4096, swapSlots: 0)
        let space = try tlbSpace(memory)
        try space.map(length: huge, placement: .fixed(base), options: .hugePage)
        try space.advise(address: base, length: huge, advice: .noHugePage)
        for index in 0..<512 { try space.write(UInt64(index), at: base + UInt64(index) * p) }
        try space.advise(address: base, length: huge, advice: .hugePage)
        #expect(try space.collapse(address: base, length: huge) == 1)
        try space.write(1000, at: base + 3 * p)  // must reach the huge frame
        let entry = try #require(space.translate(base + 3 * p))
        #expect(entry.isHuge)
        #expect(memory.token(of: try #require(entry.frame)) == 1000)
        #expect(try space.read(at: base + 4 * p) == 4)
        // Splitting (mprotect of half) keeps frames; the read-only half must refuse writes.
        try space.protect(address: base, length: huge / 2, protection: .read)
        #expect(throws: MemoryError.segmentationFault) { try space.write(1, at: base + 3 * p) }
        try space.write(2, at: base + huge / 2)
        #expect(space.statistics[.hugePagesSplit] == 1)
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test func reapAndTeardownFlush() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 0)
        let space = try tlbSpace(memory)
        try space.map(length: 4 * p, placement: .fixed(base))
        try space.write(5, at: base)
        #expect(try space.reap().pagesReaped == 1)
        #expect(try space.read(at: base) == 0)
        try space.write(6, at: base)
        space.teardown()
        #expect(throws: MemoryError.segmentationFault) { try space.read(at: base) }  // faults after teardown
        #expect(memory.framesInUse == 0)
    }

    /// Without TLBs nothing changes: no TLB counter moves and no shootdown happens.
    @Test func noneModeCountsNothing() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 0)
        let space = try AddressSpace(memory: memory)
        try space.map(length: 4 * p, placement: .fixed(base))
        try space.write(5, at: base)
        #expect(try space.read(at: base) == 5)
        try space.unmap(address: base, length: p)
        let stats = space.statistics
        #expect(stats[.tlbHits] == 0 && stats[.tlbMisses] == 0 && stats[.tlbShootdowns] == 0)
        space.teardown()
    }
}
