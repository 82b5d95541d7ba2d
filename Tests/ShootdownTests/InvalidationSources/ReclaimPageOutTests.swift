import Testing

@testable import Shootdown

private let p = NotifierTestConstants.page
private let base = NotifierTestConstants.base

/// Reclaim and MADV_PAGEOUT: pages go to swap under `clear`, content survives the round trip,
/// young pages (by the accessed bit or through a subscriber) get a second chance.
@Suite struct ReclaimPageOutTests {
    private func makeSpace(pages: Int = 8) throws -> (AddressSpace, PhysicalMemory) {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 256)
        let space = try AddressSpace(memory: memory)
        try space.map(length: UInt64(pages) * p, placement: .fixed(base))
        for index in 0..<pages { try space.write(0x100 + UInt64(index), at: base + UInt64(index) * p) }
        return (space, memory)
    }

    @Test func pageOutRoundTripKeepsContent() throws {
        let (space, memory) = try makeSpace(pages: 16)
        try space.advise(address: base, length: 16 * p, advice: .pageOut)
        for index in 0..<16 { #expect(space.translate(pageAddress(index))?.isSwap == true) }
        #expect(memory.framesInUse == 0)
        #expect(space.statistics[.pagesSwappedOut] == 16)
        for index in 0..<16 { #expect(try space.read(at: pageAddress(index)) == 0x100 + UInt64(index)) }
        #expect(space.statistics[.swapInFaults] == 16)
        #expect(memory.framesInUse == 16)
        // Swapped in for a read: read-only until written; a write reuses the frame.
        #expect(space.translate(pageAddress(3))?.isWritable == false)
        let frame = space.translate(pageAddress(3))!.number
        try space.write(7, at: pageAddress(3))
        #expect(space.translate(pageAddress(3))?.number == frame)
        // Unmapping swap entries releases their slots.
        try space.advise(address: base, length: 2 * p, advice: .pageOut)
        try space.unmap(address: base, length: 16 * p)
        #expect(space.statistics[.swapEntriesZapped] == 2)
        #expect(memory.framesInUse == 0)
    }

    /// Zero pages and frames a fork shares stay mapped. A written shared page (the child maps
    /// none of the parent's shared pages: fork copies no entries of a shared VMA) is unmapped,
    /// as reclaim unmaps it, but stays in its object: it is dirty and there is no swap for shmem.
    @Test func pageOutLeavesZeroPagesAndForkedFramesAloneAndKeepsDirtySharedPages() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 64)
        let space = try AddressSpace(memory: memory)
        try space.map(length: 4 * p, placement: .fixed(base))
        try space.map(length: 4 * p, placement: .fixed(base + 64 * p), options: [.shared])
        _ = try space.read(at: base)  // zero page
        try space.write(1, at: base + p)
        try space.write(2, at: base + 64 * p)
        let child = try space.fork()  // base + p now shared by two spaces
        try space.advise(address: base, length: 4 * p, advice: .pageOut)
        try space.advise(address: base + 64 * p, length: 4 * p, advice: .pageOut)
        #expect(space.translate(base)?.number == PhysicalMemory.zeroFrame)
        #expect(space.translate(base + p)?.isPresent == true)
        #expect(space.translate(base + 64 * p)?.isPresent != true)
        #expect(space.residencyString(base + 64 * p, pages: 2) == "10")
        #expect(try space.read(at: base + 64 * p) == 2)
        #expect(space.statistics[.pagesSwappedOut] == 0)
        child.teardown()
        try space.advise(address: base, length: 4 * p, advice: .pageOut)
        #expect(space.translate(base + p)?.isSwap == true)
    }

    @Test func reclaimGivesYoungPagesASecondChance() throws {
        let (space, memory) = try makeSpace()
        #expect(try space.age(address: base, length: 8 * p) == 8)  // all old now
        for index in 0..<4 { _ = try space.read(at: pageAddress(index)) }  // young again
        #expect(try space.reclaim(pages: 4) == 4)
        for index in 0..<4 { #expect(space.translate(pageAddress(index))?.isPresent == true) }
        for index in 4..<8 { #expect(space.translate(pageAddress(index))?.isSwap == true) }
        #expect(memory.framesInUse == 4)
        // The pass cleared their accessed bits: the next reclaim takes them on its second pass.
        #expect(try space.reclaim(pages: 4) == 4)
        for index in 0..<4 { #expect(space.translate(pageAddress(index))?.isSwap == true) }
        #expect(memory.framesInUse == 0)
        #expect(try space.reclaim(pages: 4) == 0)  // nothing reclaimable left
        for index in 0..<8 { #expect(try space.read(at: pageAddress(index)) == 0x100 + UInt64(index)) }
    }

    @Test func pagesYoungThroughAMirrorGetASecondChance() throws {
        let (space, memory) = try makeSpace()
        let mirror = try SoftwareMirror(space: space, start: base, length: 8 * p)
        try mirror.populate(address: base, length: 8 * p, write: false)
        #expect(try space.age(address: base, length: 8 * p) == 8)  // clears the CPU bits
        // Device accesses: young in the mirror only; the CPU accessed bits stay clear.
        for index in 0..<4 { #expect(try mirror.read(at: pageAddress(index)) == 0x100 + UInt64(index)) }
        for index in 0..<8 { #expect(space.translate(pageAddress(index))?.isAccessed == false) }
        #expect(space.testYoung(at: pageAddress(0)))
        #expect(!space.testYoung(at: pageAddress(5)))

        #expect(try space.reclaim(pages: 4) == 4)
        for index in 0..<4 { #expect(space.translate(pageAddress(index))?.isPresent == true, "page \(index) was young") }
        for index in 4..<8 { #expect(space.translate(pageAddress(index))?.isSwap == true) }
        #expect(memory.framesInUse == 4)
        // The reclaim's clear dropped the mirror's translations; a device read faults back in.
        #expect(mirror.translation(for: pageAddress(5)) == nil)
        #expect(try mirror.read(at: pageAddress(5)) == 0x105)
        mirror.detach()
    }

    @Test func reclaimSkipsLockedSharedAndHugeMemory() throws {
        let memory = PhysicalMemory(capacity: 4096, swapSlots: 64)
        let space = try AddressSpace(memory: memory)
        try space.map(length: 4 * p, placement: .fixed(base), options: [.locked])
        try space.map(length: 4 * p, placement: .fixed(base + 64 * p), options: [.shared])
        try space.map(length: NotifierTestConstants.huge, placement: .fixed(base + NotifierTestConstants.huge), options: [.hugePage])
        try space.write(1, at: base)
        try space.write(1, at: base + 64 * p)
        try space.write(1, at: base + NotifierTestConstants.huge)
        _ = try space.age(address: base, length: 2 * NotifierTestConstants.huge)
        #expect(try space.reclaim(pages: 100) == 0)
        #expect(throws: MemoryError.invalidArgument) { try space.advise(address: base, length: p, advice: .pageOut) }
        #expect(try space.reclaim(pages: 0) == 0)
        space.teardown()
        #expect(throws: MemoryError.addressSpaceDead) { try space.reclaim(pages: 1) }
    }

    @Test func aFullSwapStopsEviction() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 3)
        let space = try AddressSpace(memory: memory)
        try space.map(length: 8 * p, placement: .fixed(base))
        for index in 0..<8 { try space.write(UInt64(index) + 1, at: base + UInt64(index) * p) }
        _ = try space.age(address: base, length: 8 * p)
        #expect(try space.reclaim(pages: 8) == 3)
        #expect(memory.framesInUse == 5)
        for index in 0..<8 { #expect(try space.read(at: base + UInt64(index) * p) == UInt64(index) + 1) }
    }
}
