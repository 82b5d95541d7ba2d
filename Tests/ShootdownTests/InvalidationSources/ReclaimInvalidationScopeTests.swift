import Testing
@testable import Shootdown

/// Reclaim invalidates only what it evicts: aging (the second chance) removes no translation, so a
/// mirror keeps the pages that stay resident.
@Suite struct ReclaimInvalidationScopeTests {
    let page: UInt64 = 4096

    @Test func aMirrorKeepsTranslationsOfPagesReclaimKeeps() throws {
        let memory = PhysicalMemory(capacity: 4096, swapSlots: 256)
        let space = try AddressSpace(memory: memory)
        let pages: UInt64 = 64
        let base = try space.map(length: pages * page)
        for index in 0..<pages { try space.write(index + 1, at: base + index * page) }
        let mirror = try SoftwareMirror(space: space, start: base, length: pages * page)
        try mirror.populate(address: base, length: pages * page, write: false)
        #expect(mirror.count == Int(pages))
        // Everything old, then the even pages used again by the CPU.
        _ = try space.age(address: base, length: pages * page)
        for index in stride(from: 0, to: pages, by: 2) { _ = try space.read(at: base + index * page) }

        let evicted = try space.reclaim(pages: Int(pages / 2))
        #expect(evicted == Int(pages / 2))
        for index in 0..<pages {
            let address = base + index * page
            if index % 2 == 0 {
                #expect(space.translate(address)?.isPresent == true, "young page \(index) was evicted")
                #expect(mirror.translation(for: address) != nil, "the mirror lost young page \(index)")
            } else {
                #expect(space.translate(address)?.isSwap == true, "old page \(index) stayed")
                #expect(mirror.translation(for: address) == nil, "the mirror kept an evicted page \(index)")
            }
        }
        // Content survives the round trip through swap.
        for index in 0..<pages { #expect(try space.read(at: base + index * page) == index + 1) }
        space.teardown()
        mirror.detach()
        #expect(memory.framesInUse == 0)
        #expect(memory.swap.slotsInUse == 0)
    }
}
