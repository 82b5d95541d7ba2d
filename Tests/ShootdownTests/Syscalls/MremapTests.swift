import Testing

@testable import Shootdown

/// mremap across VMAs and holes, DONTUNMAP, fixed targets and shrinking, against values measured
/// on the live kernel (see `KernelView.swift`); `b` is 0x200000000.
@Suite struct MremapTests {
    let b = kernelBase
    typealias Flags = AddressSpace.RemapFlags

    func remap(_ space: AddressSpace, _ address: UInt64, _ old: UInt64, _ new: UInt64, _ flags: Flags, _ target: UInt64 = 0) -> String {
        do {
            let result = try space.remap(address: address, oldLength: old, newLength: new, flags: flags, newAddress: target)
            return "0x" + String(result, radix: 16)
        } catch {
            return error.errnoName
        }
    }

    /// Kernel: `[b, b+2p)` rw, `[b+3p, b+6p)` r, `[b+7p, b+8p)` rw; `mremap(b, 8 pages, 1 page,
    /// 0)` returns b and unmaps everything in `[b+p, b+8p)`, VMAs and holes alike.
    @Test func shrinkUnmapsAcrossVMAsAndHoles() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b))
        try space.map(length: 3 * page, protection: .read, placement: .fixed(b + 3 * page))
        try space.map(length: page, placement: .fixed(b + 7 * page))
        #expect(remap(space, b, 8 * page, page, []) == "0x200000000")
        #expect(space.kernelView() == ["200000000-200001000 rw-p rd wr mr mw me ac "])
    }

    /// Kernel: `[b, b+2p)` rw and `[b+3p, b+4p)` r, the first two pages written; `mremap(b,
    /// 4 pages, 4 pages, MAYMOVE|FIXED, b+32p)` returns b+32p and moves each VMA, the hole kept
    /// (`200020000-200022000` with the two pages, `200023000-200024000`).
    @Test func fixedEqualLengthsMovesEveryVMAKeepingHoles() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b))
        try space.map(length: page, protection: .read, placement: .fixed(b + 3 * page))
        try space.touch(b, pages: 2, token: 7)
        #expect(remap(space, b, 4 * page, 4 * page, [.mayMove, .fixed], b + 32 * page) == "0x200020000")
        #expect(space.kernelView() == ["200020000-200022000 rw-p rd wr mr mw me ac ", "200023000-200024000 r--p rd mr mw me "])
        #expect(space.residencyString(b + 32 * page, pages: 2) == "11")
        #expect(try space.read(at: b + 33 * page) == 7)
    }

    /// Kernel: `[b+p, b+3p)` rw, `[b+3p, b+4p)` r; the same call from b: EFAULT (no VMA at the
    /// start of the range), nothing moved.
    @Test func fixedMultiVMAMoveNeedsAVMAAtTheStart() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b + page))
        try space.map(length: page, protection: .read, placement: .fixed(b + 3 * page))
        #expect(remap(space, b, 4 * page, 4 * page, [.mayMove, .fixed], b + 32 * page) == "EFAULT")
        #expect(space.kernelView() == ["200001000-200003000 rw-p rd wr mr mw me ac ", "200003000-200004000 r--p rd mr mw me "])
        #expect(remap(space, b + 5 * page, 4 * page, 4 * page, [.mayMove, .fixed], b + 32 * page) == "EFAULT")
    }

    /// Kernel: `[b, b+2p)` rw and `[b+2p, b+3p)` r (a hole at the end of the 4-page range): moved,
    /// b+32p returned, layout `200020000-200022000 rw`, `200022000-200023000 r`.
    @Test func fixedMultiVMAMoveWithAHoleAtTheEnd() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b))
        try space.map(length: page, protection: .read, placement: .fixed(b + 2 * page))
        #expect(remap(space, b, 4 * page, 4 * page, [.mayMove, .fixed], b + 32 * page) == "0x200020000")
        #expect(space.kernelView() == ["200020000-200022000 rw-p rd wr mr mw me ac ", "200022000-200023000 r--p rd mr mw me "])
    }

    /// Kernel: the same two VMAs; growing them (3 pages to 4) to a fixed target is EFAULT, and
    /// shrinking (3 to 2) unmaps the tail, then moves the single remaining VMA.
    @Test func fixedMultiVMAMoveNeedsEqualLengths() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b))
        try space.map(length: page, protection: .read, placement: .fixed(b + 2 * page))
        #expect(remap(space, b, 3 * page, 4 * page, [.mayMove, .fixed], b + 32 * page) == "EFAULT")
        #expect(space.kernelView() == ["200000000-200002000 rw-p rd wr mr mw me ac ", "200002000-200003000 r--p rd mr mw me "])
        #expect(remap(space, b, 3 * page, 2 * page, [.mayMove, .fixed], b + 32 * page) == "0x200020000")
        #expect(space.kernelView() == ["200020000-200022000 rw-p rd wr mr mw me ac "])
    }

    /// Kernel: equal lengths over two VMAs with MAYMOVE but no FIXED return b unchanged.
    @Test func equalLengthsWithoutFixedChangeNothing() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b))
        try space.map(length: page, protection: .read, placement: .fixed(b + 2 * page))
        #expect(remap(space, b, 3 * page, 3 * page, .mayMove) == "0x200000000")
        #expect(space.kernelView() == ["200000000-200002000 rw-p rd wr mr mw me ac ", "200002000-200003000 r--p rd mr mw me "])
    }

    /// Kernel: with DONTUNMAP as well, every VMA is moved and every source VMA stays (empty).
    @Test func fixedMultiVMAMoveWithDontUnmap() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b))
        try space.map(length: page, protection: .read, placement: .fixed(b + 2 * page))
        #expect(remap(space, b, 3 * page, 3 * page, [.mayMove, .fixed, .dontUnmap], b + 32 * page) == "0x200020000")
        #expect(space.kernelView() == [
            "200000000-200002000 rw-p rd wr mr mw me ac ", "200002000-200003000 r--p rd mr mw me ",
            "200020000-200022000 rw-p rd wr mr mw me ac ", "200022000-200023000 r--p rd mr mw me ",
        ])
    }

    /// Kernel: a private then a shared VMA move together.
    @Test func fixedMultiVMAMoveOfPrivateAndShared() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b))
        try space.map(length: page, placement: .fixed(b + 2 * page), options: .shared)
        #expect(remap(space, b, 3 * page, 3 * page, [.mayMove, .fixed], b + 32 * page) == "0x200020000")
        #expect(space.kernelView() == ["200020000-200022000 rw-p rd wr mr mw me ac ", "200022000-200023000 rw-s rd wr sh mr mw me ms "])
    }

    /// Kernel: `[b, b+2p)` rw, `[b+2p, b+4p)` r, `[b+5p, b+7p)` rw; `mremap(b+p, 5 pages, 5 pages,
    /// MAYMOVE|FIXED, b+32p)`: the partly covered first and last VMAs are split, each part moved
    /// to its offset: `200020000-200021000 rw`, `200021000-200023000 r`, `200024000-200025000 rw`;
    /// `200000000-200001000` and `200006000-200007000` stay.
    @Test func fixedMultiVMAMoveSplitsTheEnds() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b))
        try space.map(length: 2 * page, protection: .read, placement: .fixed(b + 2 * page))
        try space.map(length: 2 * page, placement: .fixed(b + 5 * page))
        #expect(remap(space, b + page, 5 * page, 5 * page, [.mayMove, .fixed], b + 32 * page) == "0x200020000")
        #expect(space.kernelView() == [
            "200000000-200001000 rw-p rd wr mr mw me ac ",
            "200006000-200007000 rw-p rd wr mr mw me ac ",
            "200020000-200021000 rw-p rd wr mr mw me ac ",
            "200021000-200023000 r--p rd mr mw me ",
            "200024000-200025000 rw-p rd wr mr mw me ac ",
        ])
    }

    /// Kernel: `[b, b+2p)` rw, `[b+3p, b+4p)` r, and `[b+32p, b+40p)` rw; the move replaces only
    /// the target parts the source VMAs land on: the target page under the source's hole keeps its
    /// old mapping (and merges with the moved VMA below it, which has no pages).
    @Test func fixedMultiVMAMoveLeavesTheTargetUnderHoles() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b))
        try space.map(length: page, protection: .read, placement: .fixed(b + 3 * page))
        try space.map(length: 8 * page, placement: .fixed(b + 32 * page))
        #expect(remap(space, b, 4 * page, 4 * page, [.mayMove, .fixed], b + 32 * page) == "0x200020000")
        #expect(space.kernelView() == [
            "200020000-200023000 rw-p rd wr mr mw me ac ",
            "200023000-200024000 r--p rd mr mw me ",
            "200024000-200028000 rw-p rd wr mr mw me ac ",
        ])
    }

    /// Kernel: `[b, b+2p)` rw `MAP_LOCKED|MAP_POPULATE`, page 0 written; `mremap(b, 2 pages,
    /// 2 pages, MAYMOVE|DONTUNMAP|FIXED, b+16p)`: the old VMA stays without `lo`, empty; the new one
    /// is locked and has the contents.
    @Test func dontUnmapClearsTheOldVMAsLock() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b), options: [.locked, .populate])
        try space.write(7, at: b)
        #expect(remap(space, b, 2 * page, 2 * page, [.mayMove, .dontUnmap, .fixed], b + 16 * page) == "0x200010000")
        #expect(space.kernelView() == ["200000000-200002000 rw-p rd wr mr mw me ac ", "200010000-200012000 rw-p rd wr mr mw me lo ac "])
        #expect(space.residencyString(b, pages: 2) == "00")
        #expect(try space.read(at: b + 16 * page) == 7)
    }

    /// Kernel: `[b, b+4p)` `MAP_LOCKED`; DONTUNMAP of its middle two pages to b+16p: the old VMA
    /// is not split and loses `lo` as a whole (`200000000-200004000`, mincore `1001`).
    @Test func dontUnmapOfPartOfALockedVMAUnlocksAllOfIt() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 4 * page, placement: .fixed(b), options: .locked)
        #expect(remap(space, b + page, 2 * page, 2 * page, [.mayMove, .dontUnmap, .fixed], b + 16 * page) == "0x200010000")
        #expect(space.kernelView() == ["200000000-200004000 rw-p rd wr mr mw me ac ", "200010000-200012000 rw-p rd wr mr mw me lo ac "])
        #expect(space.residencyString(b, pages: 4) == "1001")
    }

    /// Kernel: after `mlock2(MLOCK_ONFAULT)` and one write, DONTUNMAP leaves the old VMA with
    /// neither `lo` nor `lf`; the new one keeps both.
    @Test func dontUnmapClearsLockOnFaultToo() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b))
        try space.lock(address: b, length: 2 * page, onFault: true)
        try space.touch(b, pages: 1)
        #expect(remap(space, b, 2 * page, 2 * page, [.mayMove, .dontUnmap, .fixed], b + 16 * page) == "0x200010000")
        #expect(space.kernelView() == ["200000000-200002000 rw-p rd wr mr mw me ac ", "200010000-200012000 rw-p rd wr mr mw me lo lf ac "])
    }

    /// Kernel: DONTUNMAP without FIXED takes `newAddress` as a hint: b+64p is free, so the
    /// mapping lands there.
    @Test func dontUnmapWithoutFixedTakesAHint() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b))
        try space.touch(b, pages: 1)
        #expect(remap(space, b, 2 * page, 2 * page, [.mayMove, .dontUnmap], b + 64 * page) == "0x200040000")
        #expect(space.kernelView() == ["200000000-200002000 rw-p rd wr mr mw me ac ", "200040000-200042000 rw-p rd wr mr mw me ac "])
    }

    /// Kernel: DONTUNMAP of a shared VMA keeps both.
    @Test func dontUnmapOfSharedMemory() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b), options: .shared)
        #expect(remap(space, b, 2 * page, 2 * page, [.mayMove, .dontUnmap, .fixed], b + 16 * page) == "0x200010000")
        #expect(space.kernelView() == ["200000000-200002000 rw-s rd wr sh mr mw me ms ", "200010000-200012000 rw-s rd wr sh mr mw me ms "])
    }

    /// Kernel, each in a fresh child: which of EFAULT and EPERM wins, and what a sealed VMA in the
    /// old range blocks.
    /// - `[b+p, b+2p)` sealed, nothing at b: shrink `(b, 3p → p)`, grow `(b, 2p → 3p, MAYMOVE)` and
    ///   fixed `(b, 2p → 2p)` to b+32p are all EFAULT (the VMA at the address comes first).
    /// - `[b, b+p)` sealed: `(b, p → p, 0)` with nothing to do, grow `(b, 2p → 3p)` past it, and
    ///   shrink `(b, 2p → p)` of `[b, b+2p)` whose sealed part is the kept one are all EPERM.
    /// - `[b, b+p)` rw and `[b+p, b+2p)` r sealed: shrink `(b, 2p → p)` is EPERM with nothing
    ///   unmapped; grow `(b, 2p → 3p, MAYMOVE)` is EFAULT (the old range leaves the first VMA);
    ///   fixed shrink to b+32p is EPERM.
    /// - `[b, b+p)` rw and `[b+2p, b+3p)` r sealed: fixed equal `(b, 3p)` to b+32p moves the first
    ///   and fails EPERM at the second.
    /// - `[b, b+2p)` and a sealed `[b+32p, b+33p)`: fixed shrink `(b, 2p → p)` onto it is EPERM
    ///   and the tail is not unmapped.
    @Test func sealedVMAsAndTheOrderOfErrors() throws {
        func fresh(_ setup: (AddressSpace) throws -> Void) throws -> AddressSpace {
            let space = try kernelLikeSpace()
            try setup(space)
            return space
        }
        for call in [(3 * page, page, Flags()), (2 * page, 3 * page, .mayMove), (2 * page, 2 * page, [.mayMove, .fixed])] {
            let space = try fresh {
                try $0.map(length: page, placement: .fixed(b + page))
                try $0.seal(address: b + page, length: page)
            }
            #expect(remap(space, b, call.0, call.1, call.2, b + 32 * page) == "EFAULT")
        }
        var space = try fresh {
            try $0.map(length: page, placement: .fixed(b))
            try $0.seal(address: b, length: page)
        }
        #expect(remap(space, b, page, page, []) == "EPERM")
        #expect(remap(space, b, 2 * page, 3 * page, .mayMove) == "EPERM")
        space = try fresh {
            try $0.map(length: 2 * page, placement: .fixed(b))
            try $0.seal(address: b, length: page)
        }
        #expect(remap(space, b, 2 * page, page, []) == "EPERM")
        #expect(space.kernelView() == ["200000000-200001000 rw-p rd wr mr mw me ac sl ", "200001000-200002000 rw-p rd wr mr mw me ac "])

        let sealedSecond = { (space: AddressSpace) throws in
            try space.map(length: page, placement: .fixed(self.b))
            try space.map(length: page, protection: .read, placement: .fixed(self.b + page))
            try space.seal(address: self.b + page, length: page)
        }
        space = try fresh(sealedSecond)
        #expect(remap(space, b, 2 * page, page, []) == "EPERM")
        #expect(remap(space, b, 2 * page, 3 * page, .mayMove) == "EFAULT")
        #expect(remap(space, b, 2 * page, page, [.mayMove, .fixed], b + 32 * page) == "EPERM")
        #expect(space.kernelView() == ["200000000-200001000 rw-p rd wr mr mw me ac ", "200001000-200002000 r--p rd mr mw me sl "])

        space = try fresh {
            try $0.map(length: page, placement: .fixed(b))
            try $0.map(length: page, protection: .read, placement: .fixed(b + 2 * page))
            try $0.seal(address: b + 2 * page, length: page)
        }
        #expect(remap(space, b, 3 * page, 3 * page, [.mayMove, .fixed], b + 32 * page) == "EPERM")
        #expect(space.kernelView() == ["200002000-200003000 r--p rd mr mw me sl ", "200020000-200021000 rw-p rd wr mr mw me ac "])

        space = try fresh {
            try $0.map(length: 2 * page, placement: .fixed(b))
            try $0.map(length: page, placement: .fixed(b + 32 * page))
            try $0.seal(address: b + 32 * page, length: page)
        }
        #expect(remap(space, b, 2 * page, page, [.mayMove, .fixed], b + 32 * page) == "EPERM")
        #expect(space.kernelView() == ["200000000-200002000 rw-p rd wr mr mw me ac ", "200020000-200021000 rw-p rd wr mr mw me ac sl "])
    }

    /// Kernel: `[b, b+p)` rw `MAP_LOCKED` and `[b+2p, b+3p)` r `MAP_LOCKED`; fixed equal with
    /// DONTUNMAP to b+32p: both move locked, both old VMAs stay unlocked.
    @Test func fixedMultiVMAMoveOfLockedVMAsWithDontUnmap() throws {
        let space = try kernelLikeSpace()
        try space.map(length: page, placement: .fixed(b), options: .locked)
        try space.map(length: page, protection: .read, placement: .fixed(b + 2 * page), options: .locked)
        #expect(remap(space, b, 3 * page, 3 * page, [.mayMove, .fixed, .dontUnmap], b + 32 * page) == "0x200020000")
        #expect(space.kernelView() == [
            "200000000-200001000 rw-p rd wr mr mw me ac ", "200002000-200003000 r--p rd mr mw me ",
            "200020000-200021000 rw-p rd wr mr mw me lo ac ", "200022000-200023000 r--p rd mr mw me lo ",
        ])
    }

    /// Kernel: DONTUNMAP without FIXED over two VMAs, and a MAYMOVE grow of two VMAs, are EFAULT.
    @Test func onlyFixedEqualMovesSpanVMAs() throws {
        let space = try kernelLikeSpace()
        try space.map(length: page, placement: .fixed(b))
        try space.map(length: page, protection: .read, placement: .fixed(b + page))
        #expect(remap(space, b, 2 * page, 2 * page, [.mayMove, .dontUnmap], b + 32 * page) == "EFAULT")
        #expect(remap(space, b, 2 * page, 3 * page, .mayMove) == "EFAULT")
        #expect(remap(space, b, 2 * page, 2 * page, .mayMove, b + 32 * page) == "0x200000000")
    }
}

/// A fixed shrink unmaps its target before its tail: the tail's errors come after the target is gone.
extension MremapTests {
    /// Kernel: `[b, b+8p)` rw with `[b+6p, b+7p)` sealed, `[b+16p, b+24p)` shared;
    /// `mremap(b, 8 pages, 2 pages, MAYMOVE|FIXED, b+18p)`: EPERM, after the target
    /// `[b+18p, b+20p)` was unmapped and the source split at b+2p by the tail's munmap.
    /// Then a tail past the top of the user space (`mremap(0x7fff00000000, to 0x800000004000,
    /// 2 pages, MAYMOVE|FIXED, b+20p)`): EINVAL, after `[b+20p, b+22p)` was unmapped.
    @Test func fixedShrinkUnmapsTheTargetBeforeTheTailFails() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 8 * page, placement: .fixed(b))
        try space.seal(address: b + 6 * page, length: page)
        try space.map(length: 8 * page, placement: .fixed(b + 16 * page), options: .shared)
        #expect(remap(space, b, 8 * page, 2 * page, [.mayMove, .fixed], b + 18 * page) == "EPERM")
        let rw = "rw-p rd wr mr mw me ac "
        let source = ["200000000-200002000 " + rw, "200002000-200006000 " + rw, "200006000-200007000 rw-p rd wr mr mw me ac sl ",
                      "200007000-200008000 " + rw]
        #expect(space.kernelView() == source + ["200010000-200012000 rw-s rd wr sh mr mw me ms ", "200014000-200018000 rw-s rd wr sh mr mw me ms "])
        let top: UInt64 = 0x7fff_0000_0000
        try space.map(length: 4 * page, placement: .fixed(top))
        #expect(remap(space, top, 0x8000_0000_0000 - top + 4 * page, 2 * page, [.mayMove, .fixed], b + 20 * page) == "EINVAL")
        #expect(space.kernelView().prefix(6) == (source + ["200010000-200012000 rw-s rd wr sh mr mw me ms ", "200016000-200018000 rw-s rd wr sh mr mw me ms "])[...])
    }
}

extension MremapTests {
    /// Kernel (unprivileged, 8 MiB locked-memory limit): a 16-page shared mapping with its first
    /// 4 pages locked; duplicating the locked VMA (`mremap(a, 0, new, MAYMOVE)`) checks the limit
    /// on the whole new length: 0x7ffffffff000 and 16 MiB are EAGAIN, 4 pages succeed; the same
    /// huge duplicate of the unlocked part is ENOMEM (no room).
    @Test func duplicatingALockedMappingChecksTheLockLimit() throws {
        let space = try kernelLikeSpace(privileged: false)
        try space.map(length: 16 * page, protection: .read, placement: .fixed(b), options: .shared)
        try space.lock(address: b, length: 4 * page)
        #expect(remap(space, b, 0, 0x7fff_ffff_f000, .mayMove) == "EAGAIN")
        #expect(remap(space, b, 0, 16 << 20, .mayMove) == "EAGAIN")
        #expect(remap(space, b, 0, 4 * page, .mayMove) != "EAGAIN")
        #expect(remap(space, b + 8 * page, 0, 0x7fff_ffff_f000, .mayMove) == "ENOMEM")
    }
}

extension MremapTests {
    /// Kernel (heuristic overcommit, 24 GiB of RAM, no swap): `[b, b+8p)` private rw and a shared
    /// `[t, t+4p)`; `mremap(b, 64 GiB, 2 pages, MAYMOVE|FIXED, t+p)`: ENOMEM, after the target page
    /// and the tail were unmapped (`200000000-200002000` stays). `mremap(b, 8 pages, 64 GiB,
    /// MAYMOVE)`: ENOMEM, nothing changed. A 64 GiB shrink in place succeeds, and so does the
    /// same fixed shrink of a shared (unaccounted) mapping.
    @Test func movesChargeTheChangeInSizeAgainstOvercommit() throws {
        func space() throws -> AddressSpace {
            let configuration = AddressSpace.Configuration(commitLimit: 24 << 30)
            return try AddressSpace(configuration: configuration, memory: PhysicalMemory(capacity: 8192, swapSlots: 0))
        }
        let t: UInt64 = 0x7f00_0000_0000
        var s = try space()
        try s.map(length: 8 * page, placement: .fixed(b))
        try s.map(length: 4 * page, placement: .fixed(t), options: .shared)
        #expect(remap(s, b, 1 << 36, 2 * page, [.mayMove, .fixed], t + page) == "ENOMEM")
        #expect(s.mappings().map { "\(String($0.start, radix: 16))-\(String($0.end, radix: 16))" }
            == ["200000000-200002000", "7f0000000000-7f0000001000", "7f0000003000-7f0000004000"])
        s = try space()
        try s.map(length: 8 * page, placement: .fixed(b))
        #expect(remap(s, b, 8 * page, 1 << 36, .mayMove) == "ENOMEM")
        #expect(s.mappings().map(\.end) == [b + 8 * page])
        #expect(remap(s, b, 1 << 36, 4 * page, []) == "0x200000000")
        s = try space()
        try s.map(length: 8 * page, protection: .read, placement: .fixed(b), options: .shared)
        #expect(remap(s, b, 1 << 36, 2 * page, [.mayMove, .fixed], t) == "0x7f0000000000")
    }
}
