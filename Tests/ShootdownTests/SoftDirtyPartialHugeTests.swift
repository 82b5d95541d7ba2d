import Shootdown
import Testing

/// Clearing soft-dirty on part of a huge mapping write-protects the whole 2 MiB entry (it is not
/// split), so the `softDirty` invalidation must cover the whole block: a mirror holding a writable
/// translation of another page of the block must be downgraded too. Found by the torture
/// harness's mirror oracle (the invalidation covered only the requested range, and the mirror kept
/// writable translations the CPU no longer had).
@Suite struct SoftDirtyPartialHugeTests {
    @Test func clearSoftDirtyOnPartOfAHugeMappingDowngradesTheWholeBlockInMirrors() throws {
        let space = try AddressSpace()
        defer { space.teardown() }
        let block = try space.map(length: 4 << 20, options: [.hugePage])
        let aligned = (block + (2 << 20) - 1) & ~UInt64((2 << 20) - 1)
        try space.write(1, at: aligned)
        try #require(space.translate(aligned)?.isHuge == true)
        let mirror = try SoftwareMirror(space: space, start: aligned, length: 2 << 20)
        defer { mirror.detach() }
        try mirror.populate(address: aligned, length: 2 << 20, write: true)

        // One page in the middle of the block.
        try space.clearSoftDirty(address: aligned + 100 * 4096, length: 4096)

        for page in [UInt64(0), 5, 100, 511] {
            let address = aligned + page * 4096
            let cpu = try #require(space.translate(address))
            let held = try #require(mirror.translation(for: address))
            #expect(held.frame == cpu.frame)
            #expect(!held.writable || cpu.isWritable, "page \(page): the mirror is writable, the CPU entry is not")
        }
    }
}
