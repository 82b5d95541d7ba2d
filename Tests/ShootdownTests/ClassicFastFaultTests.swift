import Testing

@testable import Shootdown

private let p = NotifierTestConstants.page
private let base = NotifierTestConstants.base

/// The classic fault's straight-line fast path (`AddressSpace.anonymousFastFault`): a missing
/// entry of private anonymous memory whose PTE table exists. It must do exactly what the general
/// handler does, including when another fault installs the entry first.
@Suite struct ClassicFastFaultTests {
    /// A space on the classic path with two private anonymous pages at `base`, the first written
    /// (the general path then prepared the `anon_vma` and the PTE table: the second page's faults
    /// take the fast path).
    private func space(_ memory: PhysicalMemory) throws -> AddressSpace {
        let space = try AddressSpace(configuration: .init(faultPath: .mmapLock), memory: memory)
        try space.map(length: 2 * p, placement: .fixed(base))
        try space.write(1, at: base)
        return space
    }

    /// Another fault installs the entry between the fast path's allocation and its split lock:
    /// the re-check under the lock must see it, drop the unmapped frame, and leave the fault to
    /// the general path (a spurious fault then). Without the re-check the other fault's page (and
    /// its content) would be overwritten and its frame leaked.
    @Test func lostRaceDropsItsFrameAndKeepsTheWinnersPage() throws {
        let memory = PhysicalMemory(capacity: 64, swapSlots: 0)
        let space = try space(memory)
        let before = space.statistics
        let ran = SharedFlag()
        TestHooks.arm(.classicFastFaultBeforeLock) {
            // "Thread B" write-faults the same page (its own fault takes the fast path: the
            // point disarmed itself) and stores 9 there.
            let other = TestThread("other fault") {
                if (try? space.write(9, at: base + p)) != nil { ran.set() }
            }
            other.join("other fault")
        }
        defer { TestHooks.disarm(.classicFastFaultBeforeLock) }
        try space.fault(at: base + p, access: .write)
        #expect(ran.isSet)
        #expect(try space.read(at: base + p) == 9, "the losing fault replaced the winner's page")
        #expect(memory.framesInUse == 2, "the losing fault's frame was not dropped")
        let counts = space.statistics.since(before)
        #expect(counts[.classicFaults] == 2)
        #expect(counts[.spuriousFaults] == 1)
        space.teardown()
        RCU.barrier()
        #expect(memory.framesInUse == 0)
    }

    /// A read maps the zero page read-only and counts it; the write after it copies it (the
    /// general path's copy-on-write), as without the fast path.
    @Test func readMapsTheZeroPageAndWriteCopiesIt() throws {
        let memory = PhysicalMemory(capacity: 64, swapSlots: 0)
        let space = try space(memory)
        let before = space.statistics
        try space.fault(at: base + p, access: .read)
        let entry = try #require(space.translate(base + p))
        #expect(entry.isPresent && !entry.isWritable && entry.number == PhysicalMemory.zeroFrame)
        #expect(space.statistics.since(before)[.zeroPageFaults] == 1)
        #expect(memory.framesInUse == 1)
        try space.write(5, at: base + p)
        #expect(try space.read(at: base + p) == 5)
        #expect(try space.read(at: base) == 1)
        #expect(space.translate(base + p)?.isWritable == true)
        #expect(memory.framesInUse == 2)
        space.teardown()
        RCU.barrier()
        #expect(memory.framesInUse == 0)
    }

    /// A write through the fast path maps a fresh, writable, dirty, soft-dirty frame, as the
    /// general path does.
    @Test func writeMapsAFreshDirtyFrame() throws {
        let memory = PhysicalMemory(capacity: 64, swapSlots: 0)
        let space = try space(memory)
        try space.fault(at: base + p, access: .write)
        let entry = try #require(space.translate(base + p))
        let first = try #require(space.translate(base))
        // Both pages were written once: the general path's entry and the fast path's agree but
        // for the frame.
        #expect(entry.rawValue & ~PageTableEntry.numberMask == first.rawValue & ~PageTableEntry.numberMask)
        #expect(try space.read(at: base + p) == 0)
        space.teardown()
        RCU.barrier()
        #expect(memory.framesInUse == 0)
    }
}
