import Testing

@testable import Shootdown

/// When adjacent VMAs merge: flags (`ac`, `nr`, `dd`, …), and the `anon_vma` identity a VMA gets
/// at its first write fault (reused from a compatible neighbour, else fresh; a fork child's
/// inherited identities never merge with anything else). Expected values measured on the live
/// kernel (see `KernelView.swift`); `b` is 0x200000000.
@Suite struct MergeTests {
    let b = kernelBase

    /// Kernel: `[b, b+p)` rw and `[b+p, b+2p)` rw `MAP_NORESERVE` stay apart (`ac` against `nr`).
    @Test func accountAgainstNoReserve() throws {
        let space = try kernelLikeSpace()
        try space.map(length: page, placement: .fixed(b))
        try space.map(length: page, placement: .fixed(b + page), options: .noReserve)
        #expect(space.kernelView() == ["200000000-200001000 rw-p rd wr mr mw me ac ", "200001000-200002000 rw-p rd wr mr mw me nr "])
    }

    /// Kernel: `[b, b+2p)` written, `[b+4p, b+6p)` written (two identities), then `[b+2p, b+4p)`
    /// mapped between them: it merges with the first only (`200000000-200004000`,
    /// `200004000-200006000`). One-page variant: `[b, b+p)` and `[b+2p, b+3p)` written, `[b+p,
    /// b+2p)` mapped: merges down; writing it changes nothing.
    @Test func aNewVMABetweenTwoIdentitiesMergesWithOne() throws {
        var space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b))
        try space.touch(b, pages: 1)
        try space.map(length: 2 * page, placement: .fixed(b + 4 * page))
        try space.touch(b + 4 * page, pages: 1)
        try space.map(length: 2 * page, placement: .fixed(b + 2 * page))
        #expect(space.kernelView() == ["200000000-200004000 rw-p rd wr mr mw me ac ", "200004000-200006000 rw-p rd wr mr mw me ac "])

        space = try kernelLikeSpace()
        try space.map(length: page, placement: .fixed(b))
        try space.touch(b, pages: 1)
        try space.map(length: page, placement: .fixed(b + 2 * page))
        try space.touch(b + 2 * page, pages: 1)
        try space.map(length: page, placement: .fixed(b + page))
        #expect(space.kernelView() == ["200000000-200002000 rw-p rd wr mr mw me ac ", "200002000-200003000 rw-p rd wr mr mw me ac "])
        try space.touch(b + page, pages: 1)
        #expect(space.kernelView() == ["200000000-200002000 rw-p rd wr mr mw me ac ", "200002000-200003000 rw-p rd wr mr mw me ac "])
    }

    /// Kernel: a written VMA and an unwritten neighbour that differ by one flag merge once the
    /// flag is made equal, whichever side is changed and whichever has the pages: written rw |
    /// unwritten r-- made rw; unwritten r-- made rw | written rw; written `dd` made `DODUMP` |
    /// unwritten; unwritten | written `dd` made `DODUMP`; unwritten `dd` made `DODUMP` | written;
    /// written | unwritten `dd` made `DODUMP`: all one VMA `200000000-200004000 rw-p … ac`.
    @Test(arguments: 0..<6)
    func writtenAndUnwrittenNeighboursMerge(variant: Int) throws {
        let space = try kernelLikeSpace()
        let (lower, upper) = (b, b + 2 * page)
        switch variant {
        case 0:
            try space.map(length: 2 * page, placement: .fixed(lower))
            try space.touch(lower, pages: 1)
            try space.map(length: 2 * page, protection: .read, placement: .fixed(upper))
            try space.protect(address: upper, length: 2 * page, protection: .readWrite)
        case 1:
            try space.map(length: 2 * page, protection: .read, placement: .fixed(lower))
            try space.map(length: 2 * page, placement: .fixed(upper))
            try space.touch(upper, pages: 1)
            try space.protect(address: lower, length: 2 * page, protection: .readWrite)
        case 2, 3, 4, 5:
            let written = variant == 2 || variant == 5 ? lower : upper
            let dumped = variant == 2 || variant == 4 ? lower : upper
            try space.map(length: 2 * page, placement: .fixed(lower))
            if dumped == lower { try space.advise(address: lower, length: 2 * page, advice: .dontDump) }
            try space.map(length: 2 * page, placement: .fixed(upper))
            if dumped == upper { try space.advise(address: upper, length: 2 * page, advice: .dontDump) }
            try space.touch(written, pages: 1)
            try space.advise(address: dumped, length: 2 * page, advice: .doDump)
        default: break
        }
        #expect(space.kernelView() == ["200000000-200004000 rw-p rd wr mr mw me ac "])
    }

    /// Kernel: `[b, b+2p)` written then `dd`; `[b+2p, b+6p)` mapped (merging upward is blocked by
    /// `dd`), written at b+4p (its own identity: the neighbour differs in `dd`), then `[b+4p,
    /// b+6p)` made `dd`; `MADV_DODUMP` over all six pages: `[b, b+2p)` stays apart (another
    /// identity), `[b+2p, b+6p)` merges back. And when the flags differ at the first write (both
    /// written while one has `dd`), making them equal later does not merge them.
    @Test func identitiesChosenAtTheFirstWriteDecide() throws {
        var space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b))
        try space.touch(b, pages: 1)
        try space.advise(address: b, length: 2 * page, advice: .dontDump)
        try space.map(length: 2 * page, placement: .fixed(b + 2 * page))
        try space.map(length: 2 * page, placement: .fixed(b + 4 * page))
        try space.touch(b + 4 * page, pages: 1)
        try space.advise(address: b + 4 * page, length: 2 * page, advice: .dontDump)
        try space.advise(address: b, length: 6 * page, advice: .doDump)
        #expect(space.kernelView() == ["200000000-200002000 rw-p rd wr mr mw me ac ", "200002000-200006000 rw-p rd wr mr mw me ac "])

        space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b))
        try space.touch(b, pages: 1)
        try space.advise(address: b, length: 2 * page, advice: .dontDump)
        try space.map(length: 2 * page, placement: .fixed(b + 2 * page))
        try space.touch(b + 2 * page, pages: 1)
        try space.advise(address: b + 2 * page, length: 2 * page, advice: .dontDump)
        #expect(space.kernelView() == ["200000000-200002000 rw-p rd wr mr mw me ac dd ", "200002000-200004000 rw-p rd wr mr mw me ac dd "])
    }

    /// Kernel: `[b, b+2p)` written then made read-only; `[b+2p, b+4p)` rw written (its first
    /// write reuses the read-only neighbour's identity: the access bits do not matter), then made
    /// read-only: one VMA `r--p … ac`. The same with `r-x`.
    @Test(arguments: [Protection.read, [.read, .exec]])
    func identityIsSharedAcrossProtections(protection: Protection) throws {
        let space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b))
        try space.touch(b, pages: 1)
        try space.protect(address: b, length: 2 * page, protection: protection)
        try space.map(length: 2 * page, placement: .fixed(b + 2 * page))
        try space.touch(b + 2 * page, pages: 1)
        try space.protect(address: b + 2 * page, length: 2 * page, protection: protection)
        #expect(space.kernelView() == ["200000000-200004000 \(protection)p rd \(protection.contains(.exec) ? "ex " : "")mr mw me ac "])
    }

    /// Kernel, in a fork child of a process with `[b, b+4p)` all written: splitting the child's
    /// VMA by mprotect and restoring it merges it back (one identity); a new unwritten neighbour
    /// `[b+4p, b+6p)` does not merge with the inherited VMA, neither when written nor when mapped
    /// read-only and made writable. A child of a process whose VMA was never written: a new
    /// neighbour merges; after a write in the child, another neighbour merges too.
    @Test func forkChildrenKeepInheritedIdentitiesApart() throws {
        let parent = try kernelLikeSpace()
        try parent.map(length: 4 * page, placement: .fixed(b))
        try parent.touch(b, pages: 4)
        let child = try parent.fork()
        try child.protect(address: b + 2 * page, length: 2 * page, protection: .read)
        try child.protect(address: b + 2 * page, length: 2 * page, protection: .readWrite)
        #expect(child.kernelView() == ["200000000-200004000 rw-p rd wr mr mw me ac "])
        try child.map(length: 2 * page, placement: .fixed(b + 4 * page))
        let apart = ["200000000-200004000 rw-p rd wr mr mw me ac ", "200004000-200006000 rw-p rd wr mr mw me ac "]
        #expect(child.kernelView() == apart)
        try child.touch(b + 4 * page, pages: 1)
        #expect(child.kernelView() == apart)
        try child.unmap(address: b + 4 * page, length: 2 * page)
        try child.map(length: 2 * page, protection: .read, placement: .fixed(b + 4 * page))
        try child.protect(address: b + 4 * page, length: 2 * page, protection: .readWrite)
        #expect(child.kernelView() == apart)

        let cleanParent = try kernelLikeSpace()
        try cleanParent.map(length: 4 * page, placement: .fixed(b))
        let cleanChild = try cleanParent.fork()
        try cleanChild.map(length: 2 * page, placement: .fixed(b + 4 * page))
        #expect(cleanChild.kernelView() == ["200000000-200006000 rw-p rd wr mr mw me ac "])
        try cleanChild.touch(b, pages: 1)
        try cleanChild.map(length: 2 * page, placement: .fixed(b + 6 * page))
        #expect(cleanChild.kernelView() == ["200000000-200008000 rw-p rd wr mr mw me ac "])
    }

    /// Kernel, in a fork child of a process with `[b, b+2p)` rw, `[b+2p, b+4p)` rw locked on
    /// fault (kept apart by the lock, never written) and `[b+6p, b+8p)` rw: the child's first two
    /// VMAs have equal flags and stay apart (fork copies VMAs, it never merges them). Growing the
    /// second in place by mremap (`vma_merge_extend`) merges it only with the VMA after it:
    /// `200002000-200005000`, then `200002000-200008000` once it reaches `b+6p`; the VMA before
    /// stays apart. An mprotect round trip over it then merges all three (`200000000-200008000`).
    @Test func mremapGrowInPlaceMergesOnlyWithTheNextVMA() throws {
        let parent = try kernelLikeSpace()
        try parent.map(length: 2 * page, placement: .fixed(b))
        try parent.map(length: 2 * page, placement: .fixed(b + 2 * page))
        try parent.lock(address: b + 2 * page, length: 2 * page, onFault: true)
        try parent.map(length: 2 * page, placement: .fixed(b + 6 * page))
        let child = try parent.fork()
        let rw = "rw-p rd wr mr mw me ac "
        #expect(child.kernelView() == ["200000000-200002000 " + rw, "200002000-200004000 " + rw, "200006000-200008000 " + rw])
        #expect(try child.remap(address: b + 2 * page, oldLength: 2 * page, newLength: 3 * page, move: .mayMove) == b + 2 * page)
        #expect(child.kernelView() == ["200000000-200002000 " + rw, "200002000-200005000 " + rw, "200006000-200008000 " + rw])
        try child.remap(address: b + 2 * page, oldLength: 3 * page, newLength: 4 * page)
        #expect(child.kernelView() == ["200000000-200002000 " + rw, "200002000-200008000 " + rw])
        try child.protect(address: b + 2 * page, length: 6 * page, protection: .read)
        try child.protect(address: b + 2 * page, length: 6 * page, protection: .readWrite)
        #expect(child.kernelView() == ["200000000-200008000 " + rw])
    }

    /// Kernel: a parent VMA written, then split by mprotect (both parts share one anon_vma);
    /// after fork, the child's parts each have an anon_vma of their own: restoring the protection
    /// in the child, mlock and munlockall leave them apart, while the parent merges back.
    @Test func forkGivesEachChildVMAItsOwnIdentity() throws {
        let parent = try kernelLikeSpace()
        try parent.map(length: 4 * page, placement: .fixed(b))
        try parent.touch(b, pages: 4)
        try parent.protect(address: b + 2 * page, length: 2 * page, protection: .read)
        let child = try parent.fork()
        try child.protect(address: b + 2 * page, length: 2 * page, protection: .readWrite)
        #expect(child.kernelView() == ["200000000-200002000 rw-p rd wr mr mw me ac ", "200002000-200004000 rw-p rd wr mr mw me ac "])
        try child.lock(address: b, length: 4 * page)
        #expect(child.kernelView() == ["200000000-200002000 rw-p rd wr mr mw me lo ac ", "200002000-200004000 rw-p rd wr mr mw me lo ac "])
        try child.unlockAll()
        #expect(child.kernelView() == ["200000000-200002000 rw-p rd wr mr mw me ac ", "200002000-200004000 rw-p rd wr mr mw me ac "])
        try parent.protect(address: b + 2 * page, length: 2 * page, protection: .readWrite)
        #expect(parent.kernelView() == ["200000000-200004000 rw-p rd wr mr mw me ac "])
    }
}

extension MergeTests {
    /// Oracle (Linux 6.18, seed 53): 16 read-only pages with `[b+5p, b+7p)` locked, then fork (the
    /// child's three VMAs are equal but stay apart). In the child, `mremap(b+10p, 4 pages, 1
    /// page, MAYMOVE|FIXED, b+4p)`: the moved page merges with the VMA before and the one after
    /// (`[b, b+7p)`), not with the third (`[b+7p, b+10p)`, split off by the move itself).
    @Test func aMovedPageMergesWithItsTwoNeighboursOnly() throws {
        let parent = try kernelLikeSpace()
        try parent.map(length: 16 * page, protection: .read, placement: .fixed(b))
        try parent.lock(address: b + 5 * page, length: 2 * page)
        let child = try parent.fork()
        try child.remap(address: b + 10 * page, oldLength: 4 * page, newLength: page, move: .fixed(b + 4 * page))
        let r = "r--p rd mr mw me "
        #expect(child.kernelView() == ["200000000-200007000 " + r, "200007000-20000a000 " + r, "20000e000-200010000 " + r])
    }
}

extension MergeTests {
    /// Kernel: 4 MiB private rw at b (2 MiB-aligned), one read of b, then `mprotect(b, 1 page,
    /// PROT_READ)`: without `MADV_HUGEPAGE` the read-only page loses `ac` (no anon_vma); with it,
    /// the read took the huge-page fault, which prepares the anon_vma first, so `ac` stays.
    @Test(arguments: [false, true])
    func aHugePageReadFaultPreparesTheAnonVMA(hugePage: Bool) throws {
        let space = try kernelLikeSpace()
        try space.map(length: 4 << 20, placement: .fixed(b))
        if hugePage { try space.advise(address: b, length: 4 << 20, advice: .hugePage) }
        _ = try space.read(at: b)
        try space.protect(address: b, length: page, protection: .read)
        #expect(space.kernelView().first == "200000000-200001000 r--p rd mr mw me " + (hugePage ? "ac hg " : ""))
    }
}
