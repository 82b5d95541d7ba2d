import Testing
@testable import Shootdown

@Suite struct SmokeTests {
    @Test func mapFaultUnmap() throws {
        let memory = PhysicalMemory(capacity: 4096)
        let space = try AddressSpace(memory: memory)
        let base = try space.map(length: 64 * 4096)
        #expect(space.mappings().count == 1)
        for page in 0..<64 { try space.fault(at: base + UInt64(page) * 4096, access: .write) }
        #expect(space.translate(base)?.isWritable == true)
        #expect(memory.framesInUse == 64)
        let stats = space.statistics
        // The first fault finds no page table: the speculative path never allocates one, so that
        // fault runs on the classic path; the other 63 find the table and stay speculative.
        #expect(stats[.speculativeFaults] == 63 && stats[.classicFaults] == 1)
        #expect(stats[.speculativeAbortNoTable] == 1 && stats.speculativeAborts == 1)
        try space.unmap(address: base, length: 64 * 4096)
        #expect(space.translate(base) == nil)
        #expect(memory.framesInUse == 0)
        let audit = space.audit()
        #expect(audit.entriesOutsideVMAs == 0 && audit.deadTablesReached == 0 && audit.tablesInHoles == 0)
        space.teardown()
    }
}

@Suite struct SmokeOperationTests {
    let page: UInt64 = 4096

    @Test func protectSplitsAndMerges() throws {
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 4096))
        let base = try space.map(length: 16 * page)
        for i in 0..<16 { try space.write(UInt64(i), at: base + UInt64(i) * page) }
        try space.protect(address: base + 4 * page, length: 4 * page, protection: .read)
        #expect(space.mappings().count == 3)
        #expect(space.translate(base + 4 * page)?.isWritable == false)
        #expect(space.translate(base)?.isWritable == true)
        #expect(throws: MemoryError.segmentationFault) { try space.write(9, at: base + 5 * page) }
        try space.protect(address: base + 4 * page, length: 4 * page, protection: .readWrite)
        #expect(space.mappings().count == 1)
        try space.write(99, at: base + 5 * page)
        #expect(try space.read(at: base + 5 * page) == 99)
        #expect(space.audit().unmergedNeighbours == 0)
    }

    @Test func remapMovesPages() throws {
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 4096))
        let base = try space.map(length: 8 * page)
        for i in 0..<8 { try space.write(100 + UInt64(i), at: base + UInt64(i) * page) }
        _ = try space.map(length: page, placement: .fixed(base + 8 * page), options: [.shared])
        let moved = try space.remap(address: base, oldLength: 8 * page, newLength: 16 * page, move: .mayMove)
        #expect(moved != base)
        for i in 0..<8 { #expect(try space.read(at: moved + UInt64(i) * page) == 100 + UInt64(i)) }
        #expect(space.translate(base) == nil)
        let audit = space.audit()
        #expect(audit.entriesOutsideVMAs == 0)
    }

    @Test func forkCopyOnWrite() throws {
        let memory = PhysicalMemory(capacity: 4096)
        let parent = try AddressSpace(memory: memory)
        let base = try parent.map(length: 4 * page)
        for i in 0..<4 { try parent.write(UInt64(i + 1), at: base + UInt64(i) * page) }
        let child = try parent.fork()
        #expect(memory.framesInUse == 4)
        try child.write(42, at: base)
        #expect(try parent.read(at: base) == 1)
        #expect(try child.read(at: base) == 42)
        #expect(memory.framesInUse == 5)
        child.teardown()
        #expect(memory.framesInUse == 4)
        try parent.write(7, at: base + page)  // exclusive again: reused in place
        #expect(memory.framesInUse == 4)
        parent.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test func dontNeedAndPageOut() throws {
        let memory = PhysicalMemory(capacity: 4096)
        let space = try AddressSpace(memory: memory)
        let base = try space.map(length: 4 * page)
        for i in 0..<4 { try space.write(UInt64(i + 1), at: base + UInt64(i) * page) }
        try space.advise(address: base, length: page, advice: .dontNeed)
        #expect(try space.read(at: base) == 0)
        try space.advise(address: base + page, length: 3 * page, advice: .pageOut)
        #expect(space.translate(base + page)?.isSwap == true)
        #expect(memory.swap.slotsInUse == 3)
        #expect(try space.read(at: base + 2 * page) == 3)
        #expect(memory.swap.slotsInUse == 2)
        space.teardown()
        #expect(memory.swap.slotsInUse == 0)
        #expect(memory.framesInUse == 0)
    }

    @Test func hugePagesAndCollapse() throws {
        let memory = PhysicalMemory(capacity: 8192)
        let space = try AddressSpace(memory: memory)
        let base = try space.map(length: 8 << 20, options: [.hugePage])
        let aligned = (base + (2 << 20) - 1) & ~UInt64((2 << 20) - 1)
        try space.write(5, at: aligned + 3 * page)
        #expect(space.audit().hugeMappings == 1)
        #expect(try space.read(at: aligned + 3 * page) == 5)
        try space.unmap(address: aligned + page, length: page)  // splits the huge mapping
        #expect(space.audit().hugeMappings == 0)
        #expect(try space.read(at: aligned + 3 * page) == 5)
        try space.map(length: page, placement: .fixed(aligned + page))
        try space.protect(address: aligned, length: 2 << 20, protection: .readWrite)
        try space.advise(address: aligned, length: 2 << 20, advice: .hugePage)
        #expect(try space.collapse(address: aligned, length: 2 << 20) == 1)
        #expect(space.audit().hugeMappings == 1)
        #expect(try space.read(at: aligned + 3 * page) == 5)
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test func mirrorFollowsInvalidations() throws {
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 4096))
        let base = try space.map(length: 16 * page)
        let mirror = try SoftwareMirror(space: space, start: base, length: 16 * page)
        try mirror.populate(address: base, length: 16 * page, write: true)
        #expect(mirror.count == 16)
        try space.advise(address: base, length: 4 * page, advice: .dontNeed)
        #expect(mirror.count == 12)
        try space.protect(address: base + 4 * page, length: 4 * page, protection: .read)
        #expect(mirror.translation(for: base + 4 * page)?.writable == false)
        try space.unmap(address: base, length: 16 * page)
        #expect(mirror.count == 0)
        space.teardown()
        mirror.detach()
    }
}

/// The speculative fault pops a frame from the calling thread's free list inline and refills an
/// empty list itself (out of line); it aborts to the classic path only when memory is exhausted,
/// never merely because its own list ran dry (that would send it to the mmap lock).
@Suite struct SpeculativeFrameAllocationTests {
    @Test func speculativeFaultRefillsItsFreeListAndAbortsOnlyWhenMemoryIsExhausted() throws {
        // Two 512-frame blocks of usable memory; the mapping starts 256 pages into a PTE table, so
        // the free list runs dry in the middle of a table, not where the classic path refills it
        // anyway for a missing table.
        let memory = PhysicalMemory(capacity: 1024)
        let space = try AddressSpace(memory: memory)
        let base: UInt64 = 0x4000_0000 + 256 * 4096
        _ = try space.map(length: 1025 * 4096, placement: .fixed(base))
        for page in 0..<1024 { try space.fault(at: base + UInt64(page) * 4096, access: .write) }
        #expect(memory.framesInUse == 1024 && memory.framesFree == 0)
        var stats = space.statistics
        // Classic: only the first fault of each of the three tables (pages 0, 256 and 768); page
        // 512, where the first block's frames ran out, refilled the list speculatively.
        #expect(stats[.speculativeAbortNoTable] == 3 && stats[.speculativeAbortNoMemory] == 0, "\(stats.nonZero)")
        #expect(stats[.classicFaults] == 3 && stats[.speculativeFaults] == 1021, "\(stats.nonZero)")
        // Every frame is in use: the speculative fault aborts and the classic one reports it.
        #expect(throws: MemoryError.outOfMemory) { try space.fault(at: base + 1024 * 4096, access: .write) }
        stats = space.statistics
        #expect(stats[.speculativeAbortNoMemory] == 1 && stats[.outOfMemoryFaults] == 1, "\(stats.nonZero)")
        try space.unmap(address: base, length: 1025 * 4096)
        #expect(memory.framesInUse == 0)
        space.teardown()
    }

    /// Another fault installs the entry between the speculative first write's allocation and its
    /// split lock: the revalidation under the lock must see it, drop the unmapped frame and abort
    /// (the classic path then finds a spurious fault). Without it the other fault's page and its
    /// content would be replaced and its frame leaked.
    @Test func speculativeFirstWriteThatLostItsRaceDropsItsFrame() throws {
        let memory = PhysicalMemory(capacity: 64, swapSlots: 0)
        let space = try AddressSpace(memory: memory)
        let base: UInt64 = 0x4000_0000
        try space.map(length: 2 * 4096, placement: .fixed(base))
        try space.write(1, at: base)  // the PTE table and the anon_vma exist now
        let before = space.statistics
        let ran = SharedFlag()
        TestHooks.arm(.speculativeFirstWriteBeforeLock) {
            let other = TestThread("other fault") {
                if (try? space.write(9, at: base + 4096)) != nil { ran.set() }
            }
            other.join("other fault")
        }
        defer { TestHooks.disarm(.speculativeFirstWriteBeforeLock) }
        try space.fault(at: base + 4096, access: .write)
        #expect(ran.isSet)
        #expect(try space.read(at: base + 4096) == 9, "the losing fault replaced the winner's page")
        #expect(memory.framesInUse == 2, "the losing fault's frame was not dropped")
        let counts = space.statistics.since(before)
        #expect(counts[.speculativeAbortEntryChanged] == 1 && counts[.spuriousFaults] == 1, "\(counts.nonZero)")
        space.teardown()
    }
}
