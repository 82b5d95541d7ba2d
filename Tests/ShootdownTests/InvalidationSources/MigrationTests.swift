import Testing

@testable import Shootdown

private let p = NotifierTestConstants.page
private let base = NotifierTestConstants.base

/// Page migration: content follows the page to a new frame, under a `migrate` invalidation tagged
/// with its owner.
@Suite struct MigrationTests {
    @Test func contentFollowsThePageToNewFrames() throws {
        let memory = PhysicalMemory(capacity: 2048, swapSlots: 64)
        let space = try AddressSpace(memory: memory)
        try space.map(length: 8 * p, placement: .fixed(base))
        for index in 0..<8 { try space.write(0x500 + UInt64(index), at: pageAddress(index)) }
        let before = (0..<8).map { space.translate(pageAddress($0))! }
        #expect(try space.migrate(address: base, length: 8 * p) == 8)
        for index in 0..<8 {
            let after = space.translate(pageAddress(index))!
            #expect(after.number != before[index].number)
            #expect(!before.map(\.number).contains(after.number))
            // Entry bits are kept.
            #expect(after.isWritable == before[index].isWritable && after.isDirty == before[index].isDirty)
            #expect(memory.refcount(after.number) == 1 && memory.mapcount(after.number) == 1)
            #expect(try space.read(at: pageAddress(index)) == 0x500 + UInt64(index))
        }
        #expect(memory.framesInUse == 8)  // the old frames were freed
        #expect(space.statistics[.pagesMigrated] == 8)
    }

    @Test func sharedAndZeroPagesStay() throws {
        let memory = PhysicalMemory(capacity: 2048, swapSlots: 64)
        let space = try AddressSpace(memory: memory)
        try space.map(length: 4 * p, placement: .fixed(base))
        try space.map(length: 2 * p, placement: .fixed(base + 64 * p), options: [.shared])
        _ = try space.read(at: pageAddress(0))
        try space.write(1, at: pageAddress(1))
        try space.write(2, at: pageAddress(2))
        try space.write(3, at: pageAddress(64))
        let child = try space.fork()
        try child.write(9, at: pageAddress(2))  // page 2 exclusive again in the parent
        let forked = space.translate(pageAddress(1))!.number
        let sharedFrame = space.translate(pageAddress(64))!.number
        #expect(try space.migrate(address: base, length: 4 * p) == 1)
        #expect(try space.migrate(address: base + 64 * p, length: 2 * p) == 0)
        #expect(space.translate(pageAddress(0))?.number == PhysicalMemory.zeroFrame)
        #expect(space.translate(pageAddress(1))?.number == forked)
        #expect(space.translate(pageAddress(64))?.number == sharedFrame)
        #expect(try space.read(at: pageAddress(2)) == 2 && child.read(at: pageAddress(2)) == 9)
        #expect(throws: MemoryError.noMemory) { try space.migrate(address: base, length: 16 * p) }  // hole
        #expect(throws: MemoryError.invalidArgument) { try space.migrate(address: base + 1, length: p) }
        child.teardown()
    }

    @Test func aMirrorRecognisesItsOwnMigrations() throws {
        let memory = PhysicalMemory(capacity: 2048, swapSlots: 64)
        let space = try AddressSpace(memory: memory)
        try space.map(length: 8 * p, placement: .fixed(base))
        for index in 0..<8 { try space.write(0x900 + UInt64(index), at: pageAddress(index)) }
        let mirror = try SoftwareMirror(space: space, start: base, length: 8 * p)
        try mirror.populate(address: base, length: 8 * p, write: false)
        let old = mirror.translation(for: pageAddress(3))!.frame

        #expect(try mirror.migrate(address: base, length: 8 * p) == 8)
        #expect(mirror.ownMigrationCount == 1)
        #expect(mirror.invalidationCount == 1)
        // Re-mirrored at the new frames.
        for index in 0..<8 {
            #expect(mirror.translation(for: pageAddress(index))?.frame == space.translate(pageAddress(index))?.number)
            #expect(try mirror.read(at: pageAddress(index)) == 0x900 + UInt64(index))
        }
        #expect(mirror.translation(for: pageAddress(3))?.frame != old)

        // Someone else's migration, and an untagged one: seen, not counted as its own.
        #expect(try space.migrate(address: base, length: 2 * p, owner: InvalidationOwner(rawValue: 12345)) == 2)
        #expect(try space.migrate(address: base + 4 * p, length: 2 * p) == 2)
        #expect(mirror.ownMigrationCount == 1)
        #expect(mirror.invalidationCount == 3)
        #expect(mirror.translation(for: pageAddress(0)) == nil)  // dropped by the foreign migration
        #expect(mirror.translation(for: pageAddress(2)) != nil)  // outside it
        #expect(memory.framesInUse == 8)
        mirror.detach()
    }

    @Test func hugeMappingsMigrateAsOneCompound() throws {
        let memory = PhysicalMemory(capacity: 4096, swapSlots: 64)
        let space = try AddressSpace(memory: memory)
        let huge = NotifierTestConstants.huge
        try space.map(length: huge, placement: .fixed(base), options: [.hugePage])
        try space.write(77, at: pageAddress(300))
        let head = space.translate(base)!.number
        #expect(try space.migrate(address: base, length: huge) == 512)
        #expect(space.audit().hugeMappings == 1)
        #expect(space.translate(base)?.number != head)
        #expect(try space.read(at: pageAddress(300)) == 77)
        #expect(memory.framesInUse == 512)
    }
}
