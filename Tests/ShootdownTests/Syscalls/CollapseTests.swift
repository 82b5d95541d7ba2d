import Testing

@testable import Shootdown

/// `MADV_COLLAPSE` on real 2 MiB blocks, against values measured on the live kernel (THP
/// `madvise` mode; smaps `AnonHugePages` tells whether a block became huge; see
/// `KernelView.swift`). Each case maps 4 MiB at 0x200000000 (2 MiB-aligned) in a fresh child.
@Suite struct CollapseTests {
    let b = kernelBase
    let huge = AddressSpace.hugePageSize

    func collapse(_ space: AddressSpace, _ address: UInt64, _ length: UInt64) -> String {
        outcome { () throws(MemoryError) in try space.advise(address: address, length: length, advice: .collapse) }
    }

    /// Kernel: pages 0 and 5 written (1 and 2), collapse of the first block: ok, 2 MiB huge,
    /// every page resident, reads 1, 2 and 0 (page 7). Collapsing it again: ok. DONTNEED of page
    /// 0 then splits it: mincore `01111111`.
    @Test func collapsesATouchedBlock() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 2 * huge, placement: .fixed(b))
        try space.write(1, at: b)
        try space.write(2, at: b + 5 * page)
        #expect(collapse(space, b, huge) == "ok")
        #expect(space.translate(b)?.isHuge == true)
        #expect(space.residencyString(b, pages: 8) == "11111111")
        #expect(try space.read(at: b) == 1)
        #expect(try space.read(at: b + 5 * page) == 2)
        #expect(try space.read(at: b + 7 * page) == 0)
        #expect(space.kernelView() == ["200000000-200400000 rw-p rd wr mr mw me ac "])
        #expect(collapse(space, b, huge) == "ok")
        try space.advise(address: b, length: page, advice: .dontNeed)
        #expect(space.translate(b + page)?.isHuge != true)
        #expect(space.residencyString(b, pages: 8) == "01111111")
    }

    /// Kernel: nothing touched: EINVAL, nothing resident. Both blocks with only page 0 written:
    /// EINVAL, yet the first block is huge. A range of one block's length starting a page in
    /// (no whole block inside): ok, nothing collapsed.
    @Test func blocksThatCannotCollapse() throws {
        var space = try kernelLikeSpace()
        try space.map(length: 2 * huge, placement: .fixed(b))
        #expect(collapse(space, b, huge) == "EINVAL")
        #expect(space.residencyString(b, pages: 8) == "00000000")

        space = try kernelLikeSpace()
        try space.map(length: 2 * huge, placement: .fixed(b))
        try space.write(1, at: b)
        #expect(collapse(space, b, 2 * huge) == "EINVAL")
        #expect(space.translate(b)?.isHuge == true)
        #expect(space.translate(b + huge) == nil)

        space = try kernelLikeSpace()
        try space.map(length: 2 * huge, placement: .fixed(b))
        try space.write(1, at: b)
        #expect(collapse(space, b + page, huge) == "ok")
        #expect(space.translate(b)?.isHuge != true)
        #expect(space.residencyString(b, pages: 8) == "10000000")
    }

    /// Kernel, page 0 written (or read for the read-only one) in each: `MADV_NOHUGEPAGE` first,
    /// a read-only VMA, a `PROT_NONE` one, a guard page at b+p, and a block split between a
    /// 1 MiB VMA and a read-only one: all EINVAL, nothing huge. A `MAP_LOCKED` VMA: ok, huge.
    /// Shared memory: ok (its huge pages live in the page cache, not counted as anonymous).
    @Test func eligibility() throws {
        func fresh(_ setup: (AddressSpace) throws -> Void) throws -> AddressSpace {
            let space = try kernelLikeSpace()
            try setup(space)
            return space
        }
        let cases: [(String, (AddressSpace) throws -> Void, String, Bool)] = [
            ("nohugepage", {
                try $0.map(length: 2 * self.huge, placement: .fixed(self.b))
                try $0.write(1, at: self.b)
                try $0.advise(address: self.b, length: 2 * self.huge, advice: .noHugePage)
            }, "EINVAL", false),
            ("read-only", {
                try $0.map(length: 2 * self.huge, protection: .read, placement: .fixed(self.b))
                _ = try $0.read(at: self.b)
            }, "EINVAL", false),
            ("PROT_NONE", { try $0.map(length: 2 * self.huge, protection: .none, placement: .fixed(self.b)) }, "EINVAL", false),
            ("guard", {
                try $0.map(length: 2 * self.huge, placement: .fixed(self.b))
                try $0.write(1, at: self.b)
                try $0.advise(address: self.b + page, length: page, advice: .guardInstall)
            }, "EINVAL", false),
            ("two VMAs", {
                try $0.map(length: self.huge / 2, placement: .fixed(self.b))
                try $0.map(length: self.huge / 2, protection: .read, placement: .fixed(self.b + self.huge / 2))
                try $0.map(length: self.huge, placement: .fixed(self.b + self.huge))
                try $0.write(1, at: self.b)
            }, "EINVAL", false),
            ("locked", { try $0.map(length: 2 * self.huge, placement: .fixed(self.b), options: .locked) }, "ok", true),
            ("shared", {
                try $0.map(length: 2 * self.huge, placement: .fixed(self.b), options: .shared)
                try $0.write(1, at: self.b)
            }, "ok", false),
        ]
        for (name, setup, expected, becomesHuge) in cases {
            let space = try fresh(setup)
            #expect(collapse(space, b, huge) == expected, "\(name)")
            #expect((space.translate(b)?.isHuge == true) == becomesHuge, "\(name)")
        }
    }
}

extension CollapseTests {
    /// Kernel: pages 5 and 512+3 written (1), then fork. `MADV_COLLAPSE` of both blocks in the
    /// child: ok, both huge (512 resident each), page 5 reads 1; the parent keeps its small pages
    /// (1 resident in the first block). The same collapse in the parent instead: ok, both huge;
    /// the child keeps its small pages. A frame shared with a fork is copied like any other
    /// (`MADV_COLLAPSE` has no shared-page limit; only khugepaged has one).
    @Test(arguments: [true, false])
    func collapsesPagesSharedWithAFork(inChild: Bool) throws {
        let parent = try kernelLikeSpace()
        try parent.map(length: 2 * huge, placement: .fixed(b))
        try parent.write(1, at: b + 5 * page)
        try parent.write(1, at: b + huge + 3 * page)
        let child = try parent.fork()
        let (collapsing, other) = inChild ? (child, parent) : (parent, child)
        #expect(collapse(collapsing, b, 2 * huge) == "ok")
        #expect(collapsing.translate(b)?.isHuge == true)
        #expect(collapsing.translate(b + huge)?.isHuge == true)
        #expect(try collapsing.read(at: b + 5 * page) == 1)
        #expect(other.translate(b)?.isHuge != true)
        #expect(other.residencyString(b, pages: 8) == "00000100")
        #expect(try other.read(at: b + 5 * page) == 1)
        try collapsing.write(2, at: b + 5 * page)
        #expect(try other.read(at: b + 5 * page) == 1)
        try child.teardown()
        try parent.audit()
    }
}

extension CollapseTests {
    /// Kernel: 4 MiB private, a page of the second block written, then all made read-only (it
    /// keeps its anon_vma). A range holding no whole block: ok; the untouched first block:
    /// EINVAL; the second block: ok, collapsed read-only. Without the write (no anon_vma) the
    /// range holding no whole block is EINVAL, read-only or read-write.
    @Test func readOnlyMemoryWithAnAnonVMACollapses() throws {
        var space = try kernelLikeSpace()
        try space.map(length: 2 * huge, placement: .fixed(b))
        try space.write(1, at: b + huge + huge / 2)
        try space.protect(address: b, length: 2 * huge, protection: .read)
        #expect(collapse(space, b + page, huge - page) == "ok")
        #expect(collapse(space, b, huge) == "EINVAL")
        #expect(collapse(space, b + huge, huge) == "ok")
        #expect(space.translate(b + huge)?.isHuge == true)
        #expect(space.translate(b + huge)?.isWritable == false)
        #expect(try space.read(at: b + huge + huge / 2) == 1)
        for protection in [Protection.read, .readWrite] {
            space = try kernelLikeSpace()
            try space.map(length: 2 * huge, protection: protection, placement: .fixed(b))
            #expect(collapse(space, b + page, huge - page) == "EINVAL")
        }
    }

    /// Kernel: shared memory whose addresses and object offsets disagree modulo 2 MiB (six blocks
    /// mapped a page past a 2 MiB boundary, offset 0; the first page and the one 6 MiB in
    /// written) refuses MADV_COLLAPSE for the whole VMA: EINVAL over one page at a block start (no whole block
    /// inside), over a piece inside one block, and over a whole block with a page. The same
    /// mapping placed on the boundary: ok, EINVAL, ok; private memory, on it or a page past it:
    /// ok, EINVAL, ok (anonymous memory has no object offset to disagree with). Oracle seed 21:
    /// the engine checked the offset block by block, so a range without a whole block was ok.
    @Test func sharedMemoryMisalignedWithItsObjectRefusesCollapse() throws {
        for shared in [false, true] {
            for misaligned in [false, true] {
                let space = try kernelLikeSpace(privileged: false)
                let start = b + (misaligned ? page : 0)
                try space.map(length: 6 * huge, placement: .fixed(start), options: shared ? .shared : [])
                try space.write(1, at: start)
                try space.write(1, at: start + 3 * huge)
                let refused = shared && misaligned
                #expect(collapse(space, b + 2 * huge, page) == (refused ? "EINVAL" : "ok"))
                #expect(collapse(space, b + 2 * huge + 0x10000, page) == "EINVAL")
                #expect(collapse(space, b + 3 * huge, huge) == (refused ? "EINVAL" : "ok"))
            }
        }
    }
}
