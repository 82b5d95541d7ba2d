import Testing

@testable import Shootdown

/// Engine bugs the differential test found (seeds 3002 and 5667 at 6000 seeds), each reduced to
/// its core.
@Suite struct DifferentialFindingsTests {
    let b = kernelBase

    /// A fixed mremap shrink whose old range ends past the user space is EINVAL (the tail goes
    /// through munmap's range check) and changes nothing; the engine unmapped the tail by walking
    /// the page table past 2^47, zapping pages of unrelated VMAs.
    @Test func fixedShrinkPastTheUserSpace() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 4 * page, placement: .fixed(b))
        try space.touch(b, pages: 4)
        try space.map(length: page, protection: .read, placement: .fixed(b + 64 * page))
        #expect(outcome { () throws(MemoryError) in
            _ = try space.remap(address: b + 64 * page, oldLength: 1 << 63, newLength: page, flags: [.mayMove, .fixed], newAddress: b + 128 * page)
        } == "EINVAL")
        #expect(space.residencyString(b, pages: 4) == "1111")
        #expect(space.kernelView() == ["200000000-200004000 rw-p rd wr mr mw me ac ", "200040000-200041000 r--p rd mr mw me "])
    }

    /// MADV_REMOVE punches a hole in the shared object: another VMA mapping the same object pages
    /// (here a duplicate made by mremap with old length 0) loses them too, as Linux unmaps a
    /// punched range from every mapping; the engine left that VMA's entries pointing at frames the
    /// object no longer held.
    @Test func removeUnmapsTheObjectPagesEverywhere() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 4 * page, placement: .fixed(b), options: .shared)
        try space.touch(b, pages: 4, token: 9)
        _ = try space.remap(address: b, oldLength: 0, newLength: 4 * page, flags: [.mayMove, .fixed], newAddress: b + 16 * page)
        #expect(try space.read(at: b + 17 * page) == 9)
        try space.advise(address: b + page, length: 2 * page, advice: .remove)
        #expect(space.translate(b + 17 * page) == nil)
        #expect(space.translate(b + 18 * page) == nil)
        #expect(try space.read(at: b + 17 * page) == 0)
        #expect(try space.read(at: b + 16 * page) == 9)
        let audit = space.audit()
        #expect(audit.entriesOutsideVMAs == 0)
    }
}
