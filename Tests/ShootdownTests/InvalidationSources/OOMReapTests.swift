import Testing

@testable import Shootdown

private let p = NotifierTestConstants.page
private let base = NotifierTestConstants.base

/// The OOM reaper as an invalidation source: private memory is zapped under non-blockable `unmap`
/// invalidations; locked and shared memory stay; VMAs stay.
@Suite struct OOMReapTests {
    @Test func reapFreesPrivateMemoryAndLeavesLockedAndSharedMemory() throws {
        let memory = PhysicalMemory(capacity: 4096, swapSlots: 64)
        let space = try AddressSpace(memory: memory)
        try space.map(length: 8 * p, placement: .fixed(base))
        try space.map(length: 2 * p, placement: .fixed(base + 64 * p), options: [.locked])
        try space.map(length: 2 * p, placement: .fixed(base + 128 * p), options: [.shared])
        try space.map(length: NotifierTestConstants.huge, placement: .fixed(base + NotifierTestConstants.huge), options: [.hugePage])
        for index in 0..<8 { try space.write(1, at: base + UInt64(index) * p) }
        try space.advise(address: base + 7 * p, length: p, advice: .pageOut)  // one swap entry
        try space.write(2, at: base + 64 * p)
        try space.write(3, at: base + 128 * p)
        try space.write(4, at: base + NotifierTestConstants.huge)
        let mappingsBefore = space.mappings()
        let framesBefore = memory.framesInUse

        let result = try space.reap()
        #expect(result.pagesReaped == 7 + 512)
        #expect(result.skipped.isEmpty && result.attempts == 1)
        #expect(memory.framesInUse == framesBefore - 7 - 512)
        #expect(space.statistics[.swapEntriesZapped] == 1)
        #expect(space.statistics[.hugePagesZapped] == 1)
        for index in 0..<8 { #expect(space.translate(base + UInt64(index) * p) == nil) }
        #expect(try space.read(at: base + 64 * p) == 2)
        #expect(try space.read(at: base + 128 * p) == 3)
        #expect(space.mappings() == mappingsBefore)
        #expect(try space.read(at: base) == 0)  // private content is gone
        #expect(space.statistics[.invalidationsUnmap] == 2)
        #expect(space.audit().deadTablesReached == 0 && space.audit().tablesInHoles == 0)
    }

    @Test func aMirrorDropsItsTranslationsWhenTheSpaceIsReaped() throws {
        let memory = PhysicalMemory(capacity: 2048, swapSlots: 64)
        let space = try AddressSpace(memory: memory)
        try space.map(length: 4 * p, placement: .fixed(base))
        for index in 0..<4 { try space.write(UInt64(index) + 1, at: base + UInt64(index) * p) }
        let mirror = try SoftwareMirror(space: space, start: base, length: 4 * p)
        try mirror.populate(address: base, length: 4 * p, write: true)
        #expect(mirror.count == 4)
        let result = try space.reap()
        #expect(result.pagesReaped == 4)
        #expect(mirror.count == 0)  // non-blockable, but its lock was free: accepted
        #expect(memory.framesInUse == 0)
        mirror.detach()
    }
}
