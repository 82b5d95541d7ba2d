import Testing

@testable import Shootdown

/// mprotect and madvise fail part-way on Linux with the VMAs before the failure already changed
/// (and madvise goes on past holes). Expected values measured on the live kernel (see
/// `KernelView.swift`); `b` is 0x200000000.
@Suite struct PartialEffectTests {
    let b = kernelBase

    /// Kernel: map `[b, b+4p)` and `[b+5p, b+8p)` read-write (a one-page hole between), then
    /// `mprotect(b+2p, 6 pages, PROT_READ)`: ENOMEM, `[b+2p, b+4p)` is read-only already (split
    /// off, `ac` gone: no page was ever written), the VMA after the hole untouched.
    @Test func mprotectChangesTheVMAsBeforeAHole() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 4 * page, placement: .fixed(b))
        try space.map(length: 3 * page, placement: .fixed(b + 5 * page))
        #expect(outcome { () throws(MemoryError) in try space.protect(address: b + 2 * page, length: 6 * page, protection: .read) } == "ENOMEM")
        #expect(space.kernelView() == [
            "200000000-200002000 rw-p rd wr mr mw me ac ",
            "200002000-200004000 r--p rd mr mw me ",
            "200005000-200008000 rw-p rd wr mr mw me ac ",
        ])
    }

    /// Kernel: map `[b+p, b+5p)`, `mprotect(b, 4 pages, PROT_READ)`: ENOMEM (no VMA at `b`),
    /// nothing changed.
    @Test func mprotectStartingInAHoleChangesNothing() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 4 * page, placement: .fixed(b + page))
        #expect(outcome { () throws(MemoryError) in try space.protect(address: b, length: 4 * page, protection: .read) } == "ENOMEM")
        #expect(space.kernelView() == ["200001000-200005000 rw-p rd wr mr mw me ac "])
    }

    /// Kernel: map `[b, b+p)` and `[b+2p, b+3p)` read-write, write the second, then
    /// `mprotect(b, 3 pages, PROT_READ)`: ENOMEM; the first (never written) is read-only without
    /// `ac`, the second untouched.
    @Test func mprotectDropsAccountOnlyWithoutAnonymousPages() throws {
        let space = try kernelLikeSpace()
        try space.map(length: page, placement: .fixed(b))
        try space.map(length: page, placement: .fixed(b + 2 * page))
        try space.touch(b + 2 * page, pages: 1)
        #expect(outcome { () throws(MemoryError) in try space.protect(address: b, length: 3 * page, protection: .read) } == "ENOMEM")
        #expect(space.kernelView() == ["200000000-200001000 r--p rd mr mw me ", "200002000-200003000 rw-p rd wr mr mw me ac "])
    }

    /// Kernel: the layout of the first test, `madvise(b+2p, 6 pages, MADV_DONTFORK)`: ENOMEM, yet
    /// both the part before the hole and the VMA after it have `dc`.
    @Test func madviseFlagsVMAsOnBothSidesOfAHole() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 4 * page, placement: .fixed(b))
        try space.map(length: 3 * page, placement: .fixed(b + 5 * page))
        #expect(outcome { () throws(MemoryError) in try space.advise(address: b + 2 * page, length: 6 * page, advice: .dontFork) } == "ENOMEM")
        #expect(space.kernelView() == [
            "200000000-200002000 rw-p rd wr mr mw me ac ",
            "200002000-200004000 rw-p rd wr mr mw me dc ac ",
            "200005000-200008000 rw-p rd wr mr mw me dc ac ",
        ])
    }

    /// Kernel: map `[b+p, b+3p)`, `madvise(b, 3 pages, MADV_DONTFORK)`: ENOMEM (the hole at the
    /// start) and the VMA has `dc`.
    @Test func madviseStartingInAHoleStillFlags() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b + page))
        #expect(outcome { () throws(MemoryError) in try space.advise(address: b, length: 3 * page, advice: .dontFork) } == "ENOMEM")
        #expect(space.kernelView() == ["200001000-200003000 rw-p rd wr mr mw me dc ac "])
    }

    /// Kernel: map `[b, b+4p)` and `[b+5p, b+7p)`, write every page, `madvise(b+2p, 7 pages,
    /// MADV_DONTNEED)`: ENOMEM; mincore of the first VMA `1100`, of the second `00` (zapped past
    /// the hole).
    @Test func madviseDontNeedZapsPastHoles() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 4 * page, placement: .fixed(b))
        try space.map(length: 2 * page, placement: .fixed(b + 5 * page))
        try space.touch(b, pages: 4)
        try space.touch(b + 5 * page, pages: 2)
        #expect(outcome { () throws(MemoryError) in try space.advise(address: b + 2 * page, length: 7 * page, advice: .dontNeed) } == "ENOMEM")
        #expect(space.residencyString(b, pages: 4) == "1100")
        #expect(space.residencyString(b + 5 * page, pages: 2) == "00")
        #expect(space.kernelView() == ["200000000-200004000 rw-p rd wr mr mw me ac ", "200005000-200007000 rw-p rd wr mr mw me ac "])
    }

    /// Kernel: `[b, b+2p)` read-write written, `[b+2p, b+4p)` `MAP_LOCKED`, `[b+4p, b+6p)`
    /// read-only; `madvise(b, 6 pages, MADV_DONTNEED)`: EINVAL at the locked VMA, with the first
    /// already zapped (mincore `001100`) and the third never reached.
    @Test func madviseStopsAtTheFirstPerVMAError() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b))
        try space.map(length: 2 * page, placement: .fixed(b + 2 * page), options: .locked)
        try space.map(length: 2 * page, protection: .read, placement: .fixed(b + 4 * page))
        try space.touch(b, pages: 2)
        #expect(outcome { () throws(MemoryError) in try space.advise(address: b, length: 6 * page, advice: .dontNeed) } == "EINVAL")
        #expect(space.residencyString(b, pages: 6) == "001100")
        #expect(space.kernelView() == [
            "200000000-200002000 rw-p rd wr mr mw me ac ",
            "200002000-200004000 rw-p rd wr mr mw me lo ac ",
            "200004000-200006000 r--p rd mr mw me ",
        ])
    }

    /// Kernel: with nothing mapped at `[b, b+3p)`, DONTFORK, NORMAL, DONTNEED and WILLNEED all
    /// fail with ENOMEM.
    @Test func madviseOverNothingIsENOMEM() throws {
        let space = try kernelLikeSpace()
        for advice in [AddressSpace.Advice.dontFork, .normal, .dontNeed, .willNeed] {
            #expect(outcome { () throws(MemoryError) in try space.advise(address: b, length: 3 * page, advice: advice) } == "ENOMEM")
        }
    }

    /// Kernel: `[b, b+2p)` read-write `MAP_LOCKED` (populated), `[b+2p, b+4p)` `PROT_NONE`
    /// locked; `mprotect(b, 4 pages, PROT_READ|PROT_WRITE)` populates only the part that became
    /// writable. (This kernel has no soft-dirty tracking, so the experiment shows the layout; the
    /// engine's soft-dirty bits show that the already-writable pages were not faulted again.)
    @Test func mprotectPopulatesOnlyThePartMadeWritable() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 4 * page, placement: .fixed(b), options: .locked)
        try space.protect(address: b + 2 * page, length: 2 * page, protection: .none)
        #expect(space.kernelView() == ["200000000-200002000 rw-p rd wr mr mw me lo ac ", "200002000-200004000 ---p mr mw me lo ac "])
        try space.clearSoftDirty()
        try space.protect(address: b, length: 4 * page, protection: .readWrite)
        #expect(space.kernelView() == ["200000000-200004000 rw-p rd wr mr mw me lo ac "])
        #expect(space.residencyString(b, pages: 4) == "1111")
        #expect(try space.softDirtyPages(address: b, length: 4 * page) == [b + 2 * page, b + 3 * page])
    }

    /// Kernel (unprivileged): sixteen private pages `PROT_NONE`, pages 4–5 read-only, pages 8–11
    /// write-only and written, all locked; `mprotect` to read-write over seventeen pages (page
    /// 16 a hole: ENOMEM) or the sixteen (ok): `[b, b+8p)` and `[b+8p, b+16p)` stay apart, all
    /// sixteen resident. Each piece made writable is populated before the next piece is changed,
    /// so the first piece got an identity of its own (its neighbours had none it could share),
    /// and the written VMA, whose identity differs, no longer merges with it. Without the
    /// read-only pages in between the first piece shares the written VMA's identity and all
    /// sixteen merge. Oracle seed 29: the engine populated after every piece was changed, and
    /// merged them.
    @Test(arguments: [false, true])
    func aLockedPieceMadeWritableIsPopulatedBeforeTheNext(hole: Bool) throws {
        for readOnlyPages in [false, true] {
            let space = try kernelLikeSpace(privileged: false)
            try space.map(length: 16 * page, protection: .none, placement: .fixed(b))
            try space.map(length: 4 * page, protection: .write, placement: .fixed(b + 8 * page))
            for index in 8..<12 as Range<UInt64> { try space.write(1, at: b + index * page) }
            if readOnlyPages { try space.map(length: 2 * page, protection: .read, placement: .fixed(b + 4 * page)) }
            #expect(outcome { () throws(MemoryError) in try space.lock(address: b, length: 16 * page) } == "ENOMEM")
            let result = outcome { () throws(MemoryError) in
                try space.protect(address: b, length: (hole ? 17 : 16) * page, protection: .readWrite)
            }
            #expect(result == (hole ? "ENOMEM" : "ok"))
            #expect(space.kernelView() == (readOnlyPages
                ? ["200000000-200008000 rw-p rd wr mr mw me lo ac ", "200008000-200010000 rw-p rd wr mr mw me lo ac "]
                : ["200000000-200010000 rw-p rd wr mr mw me lo ac "]))
            #expect(space.residencyString(b, pages: 16) == String(repeating: "1", count: 16))
        }
    }
}
