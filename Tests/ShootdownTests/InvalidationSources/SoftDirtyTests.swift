import Testing

@testable import Shootdown

private let p = NotifierTestConstants.page
private let huge = NotifierTestConstants.huge
private let base = NotifierTestConstants.base

/// Soft-dirty tracking (`clear_refs` 4 and pagemap's soft-dirty bit).
@Suite struct SoftDirtyTests {
    private func pages(_ indices: [Int], from start: UInt64 = base) -> [UInt64] {
        indices.map { start + UInt64($0) * p }
    }

    @Test func aNewMappingIsSoftDirtyAsAWhole() throws {
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 1024, swapSlots: 64))
        try space.map(length: 8 * p, placement: .fixed(base))
        // VM_SOFTDIRTY: every page reads as soft-dirty, mapped or not.
        #expect(try space.softDirtyPages(address: base, length: 8 * p) == pages(Array(0..<8)))
        #expect(space.mappings().first?.flags.contains(.softDirty) == true)
    }

    @Test func clearWriteProtectsAndTheNextWriteMarksExactlyTheWrittenPages() throws {
        let log = NotifierCallLog()
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 64)
        let space = try AddressSpace(memory: memory)
        let recorder = RecordingNotifier("rec", log: log)
        try space.registerNotifier(recorder)
        try space.map(length: 8 * p, placement: .fixed(base))
        for index in 0..<8 { try space.write(UInt64(index) + 1, at: base + UInt64(index) * p) }
        let frames = (0..<8).map { space.translate(base + UInt64($0) * p)!.number }

        try space.clearSoftDirty()
        #expect(log.startRanges(of: "rec").map(\.event) == [.softDirty])
        #expect(try space.softDirtyPages(address: base, length: 8 * p) == [])
        #expect(space.mappings().first?.flags.contains(.softDirty) == false)
        for index in 0..<8 {
            let entry = space.translate(base + UInt64(index) * p)
            #expect(entry?.isPresent == true && entry?.isWritable == false && entry?.isSoftDirty == false)
        }
        #expect(space.statistics[.pagesWriteProtected] >= 8)

        try space.write(20, at: base + 2 * p)
        try space.write(50, at: base + 5 * p)
        _ = try space.read(at: base + 3 * p)  // reads do not count
        #expect(try space.softDirtyPages(address: base, length: 8 * p) == pages([2, 5]))
        // The write re-enabled write access on the same frame (no copy) and kept the content.
        #expect(space.translate(base + 2 * p)?.isWritable == true)
        #expect(space.translate(base + 2 * p)?.number == frames[2])
        #expect(space.translate(base + 3 * p)?.isWritable == false)
        #expect(try space.read(at: base + 2 * p) == 20 && space.read(at: base + 4 * p) == 5)
        #expect(space.statistics[.copyOnWriteFaults] == 0)
        #expect(memory.framesInUse == 8)
        // No invalidation for re-dirtying: only the one softDirty pair.
        #expect(log.startRanges(of: "rec").count == 1)

        // And again: a second round starts from clean.
        try space.clearSoftDirty()
        try space.write(1, at: base + 7 * p)
        #expect(try space.softDirtyPages(address: base, length: 8 * p) == pages([7]))
    }

    @Test func mappingsCreatedAfterAClearAreSoftDirty() throws {
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 1024, swapSlots: 64))
        try space.map(length: 8 * p, placement: .fixed(base))
        try space.write(1, at: base)
        try space.clearSoftDirty()
        try space.map(length: 4 * p, placement: .fixed(base + 64 * p))
        #expect(try space.softDirtyPages(address: base, length: 68 * p) == pages([64, 65, 66, 67]))
        // A new mapping merged into a clean neighbour makes the merged VMA soft-dirty (Linux
        // ignores VM_SOFTDIRTY when merging, and the new part carries it).
        try space.map(length: 2 * p, placement: .fixed(base + 8 * p))
        #expect(space.mappingCount == 2)
        #expect(try space.softDirtyPages(address: base, length: 10 * p) == pages(Array(0..<10)))
    }

    @Test func swapEntriesKeepAndLoseTheBitLikePresentOnes() throws {
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 1024, swapSlots: 64))
        try space.map(length: 4 * p, placement: .fixed(base))
        for index in 0..<4 { try space.write(UInt64(index) + 1, at: base + UInt64(index) * p) }
        try space.clearSoftDirty()
        try space.write(9, at: base + p)
        try space.advise(address: base, length: 4 * p, advice: .pageOut)
        #expect(space.translate(base + p)?.isSwap == true)
        #expect(try space.softDirtyPages(address: base, length: 4 * p) == pages([1]))
        try space.clearSoftDirty()
        #expect(try space.softDirtyPages(address: base, length: 4 * p) == [])
        #expect(try space.read(at: base + p) == 9)  // swap-in of a clean page stays clean
        #expect(try space.softDirtyPages(address: base, length: 4 * p) == [])
        try space.write(10, at: base + 3 * p)  // swap-in for a write is dirty
        #expect(try space.softDirtyPages(address: base, length: 4 * p) == pages([3]))
    }

    @Test func hugeMappingsAreTrackedAsOneBlock() throws {
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 4096, swapSlots: 64))
        try space.map(length: huge, placement: .fixed(base), options: [.hugePage])
        try space.write(1, at: base)
        try space.clearSoftDirty()
        #expect(space.audit().hugeMappings == 1)
        #expect(space.translate(base + 9 * p)?.isWritable == false)
        #expect(try space.softDirtyPages(address: base, length: huge) == [])
        try space.write(2, at: base + 9 * p)
        #expect(try space.softDirtyPages(address: base, length: huge).count == 512)
        #expect(try space.read(at: base) == 1)
    }
}
