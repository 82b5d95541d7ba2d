import Testing

@testable import Shootdown

/// fork with DONTFORK, WIPEONFORK, locked and guarded VMAs, and guard regions
/// (`MADV_GUARD_INSTALL`/`REMOVE`), against values measured on the live kernel (see
/// `KernelView.swift`); `b` is 0x200000000.
@Suite struct ForkAndGuardTests {
    let b = kernelBase

    /// Kernel: a parent with `[b, b+2p)` (written 5), `[b+2p, b+4p)` `dc` (written 6), `[b+4p,
    /// b+6p)` `wf` (written 7), `[b+6p, b+8p)` `MAP_LOCKED` (page 6 written 8), `[b+8p, b+10p)`
    /// (written 4, a guard at b+8p) and `[b+10p, b+12p)` shared (page 10 written 3); the child
    /// sees no `dc` VMA, the `wf` VMA with `wf` and no pages (reads 0), the locked one without
    /// `lo` but with its pages, the guard still there (SIGSEGV) and the shared page: reads
    /// `5 5 SIGSEGV SIGSEGV 0 0 8 0 SIGSEGV 4 3 0`, mincore of `[b+4p, b+12p)` `00110110`.
    @Test func forkHonoursDontForkWipeOnForkLocksAndGuards() throws {
        let parent = try kernelLikeSpace()
        try parent.map(length: 2 * page, placement: .fixed(b))
        try parent.touch(b, pages: 2, token: 5)
        try parent.map(length: 2 * page, placement: .fixed(b + 2 * page))
        try parent.touch(b + 2 * page, pages: 2, token: 6)
        try parent.advise(address: b + 2 * page, length: 2 * page, advice: .dontFork)
        try parent.map(length: 2 * page, placement: .fixed(b + 4 * page))
        try parent.touch(b + 4 * page, pages: 2, token: 7)
        try parent.advise(address: b + 4 * page, length: 2 * page, advice: .wipeOnFork)
        try parent.map(length: 2 * page, placement: .fixed(b + 6 * page), options: .locked)
        try parent.touch(b + 6 * page, pages: 1, token: 8)
        try parent.map(length: 2 * page, placement: .fixed(b + 8 * page))
        try parent.touch(b + 8 * page, pages: 2, token: 4)
        try parent.advise(address: b + 8 * page, length: page, advice: .guardInstall)
        try parent.map(length: 2 * page, placement: .fixed(b + 10 * page), options: .shared)
        try parent.touch(b + 10 * page, pages: 1, token: 3)
        #expect(parent.kernelView() == [
            "200000000-200002000 rw-p rd wr mr mw me ac ", "200002000-200004000 rw-p rd wr mr mw me dc ac ",
            "200004000-200006000 rw-p rd wr mr mw me ac wf ", "200006000-200008000 rw-p rd wr mr mw me lo ac ",
            "200008000-20000a000 rw-p rd wr mr mw me gu ac ", "20000a000-20000c000 rw-s rd wr sh mr mw me ms ",
        ])
        #expect(parent.residencyString(b, pages: 12) == "111111110110")

        let child = try parent.fork()
        #expect(child.kernelView() == [
            "200000000-200002000 rw-p rd wr mr mw me ac ", "200004000-200006000 rw-p rd wr mr mw me ac wf ",
            "200006000-200008000 rw-p rd wr mr mw me ac ", "200008000-20000a000 rw-p rd wr mr mw me gu ac ",
            "20000a000-20000c000 rw-s rd wr sh mr mw me ms ",
        ])
        #expect(child.residencyString(b, pages: 2) == "11")
        #expect(child.residencyString(b + 4 * page, pages: 8) == "00110110")
        var reads: [String] = []
        for index in 0..<UInt64(12) {
            do throws(MemoryError) { reads.append(String(try child.read(at: b + index * page))) } catch { reads.append(error.errnoName) }
        }
        #expect(reads.joined(separator: " ") == "5 5 SIGSEGV SIGSEGV 0 0 8 0 SIGSEGV 4 3 0")
    }

    /// Kernel: a 4-page VMA, all written (3); guard pages at b+p and b+2p: `gu`, mincore `1001`,
    /// reading b+p and writing b+2p SIGSEGV, b still reads 3. The guards survive `MADV_DONTNEED`
    /// over the VMA and an mprotect round trip; `MADV_POPULATE_WRITE` and `POPULATE_READ` over
    /// them are EFAULT (page 0 populated first: `1000`). A fixed mremap to b+16p carries them;
    /// `GUARD_REMOVE` at b+17p makes it read 0 but `gu` stays; munmap of b+18p and a fresh map
    /// there give a VMA without `gu` that reads 0.
    @Test func guardRegions() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 4 * page, placement: .fixed(b))
        try space.touch(b, pages: 4, token: 3)
        try space.advise(address: b + page, length: 2 * page, advice: .guardInstall)
        #expect(space.kernelView() == ["200000000-200004000 rw-p rd wr mr mw me gu ac "])
        #expect(space.residencyString(b, pages: 4) == "1001")
        #expect(outcome { () throws(MemoryError) in _ = try space.read(at: b + page) } == "SIGSEGV")
        #expect(outcome { () throws(MemoryError) in try space.write(9, at: b + 2 * page) } == "SIGSEGV")
        #expect(try space.read(at: b) == 3)
        try space.advise(address: b, length: 4 * page, advice: .dontNeed)
        #expect(outcome { () throws(MemoryError) in _ = try space.read(at: b + page) } == "SIGSEGV")
        try space.protect(address: b, length: 4 * page, protection: .read)
        #expect(space.kernelView() == ["200000000-200004000 r--p rd mr mw me gu ac "])
        try space.protect(address: b, length: 4 * page, protection: .readWrite)
        #expect(outcome { () throws(MemoryError) in _ = try space.read(at: b + page) } == "SIGSEGV")
        #expect(outcome { () throws(MemoryError) in try space.advise(address: b, length: 4 * page, advice: .populateWrite) } == "EFAULT")
        #expect(space.residencyString(b, pages: 4) == "1000")
        #expect(outcome { () throws(MemoryError) in try space.advise(address: b, length: 4 * page, advice: .populateRead) } == "EFAULT")

        try space.remap(address: b, oldLength: 4 * page, newLength: 4 * page, move: .fixed(b + 16 * page))
        #expect(space.kernelView() == ["200010000-200014000 rw-p rd wr mr mw me gu ac "])
        #expect(outcome { () throws(MemoryError) in _ = try space.read(at: b + 17 * page) } == "SIGSEGV")
        #expect(space.residencyString(b + 16 * page, pages: 4) == "1000")
        try space.advise(address: b + 17 * page, length: page, advice: .guardRemove)
        #expect(space.kernelView() == ["200010000-200014000 rw-p rd wr mr mw me gu ac "])
        #expect(try space.read(at: b + 17 * page) == 0)
        try space.unmap(address: b + 18 * page, length: page)
        try space.map(length: page, placement: .fixed(b + 18 * page))
        #expect(space.kernelView() == [
            "200010000-200012000 rw-p rd wr mr mw me gu ac ", "200012000-200013000 rw-p rd wr mr mw me ac ",
            "200013000-200014000 rw-p rd wr mr mw me gu ac ",
        ])
        #expect(try space.read(at: b + 18 * page) == 0)
    }

    /// Kernel: GUARD_INSTALL on a `MAP_LOCKED` VMA is EINVAL; on shared memory it works (`gu`,
    /// reading a guard page SIGSEGV); on PROT_NONE it works. With a guard at b+p, mlock of the
    /// VMA is ENOMEM (`gu lo`) while `mlock2(MLOCK_ONFAULT)` succeeds (`gu lo lf`). Installing then
    /// removing a guard leaves `gu`.
    @Test func guardInstallOnOtherKinds() throws {
        var space = try kernelLikeSpace()
        try space.map(length: 4 * page, placement: .fixed(b), options: .locked)
        #expect(outcome { () throws(MemoryError) in try space.advise(address: b + page, length: 2 * page, advice: .guardInstall) } == "EINVAL")
        #expect(space.kernelView() == ["200000000-200004000 rw-p rd wr mr mw me lo ac "])

        space = try kernelLikeSpace()
        try space.map(length: 4 * page, placement: .fixed(b), options: .shared)
        try space.advise(address: b + page, length: 2 * page, advice: .guardInstall)
        #expect(space.kernelView() == ["200000000-200004000 rw-s rd wr sh mr mw me ms gu "])
        #expect(outcome { () throws(MemoryError) in _ = try space.read(at: b + page) } == "SIGSEGV")

        space = try kernelLikeSpace()
        try space.map(length: 4 * page, protection: .none, placement: .fixed(b))
        try space.advise(address: b + page, length: 2 * page, advice: .guardInstall)
        #expect(space.kernelView() == ["200000000-200004000 ---p mr mw me gu "])

        space = try kernelLikeSpace()
        try space.map(length: 4 * page, placement: .fixed(b))
        try space.advise(address: b + page, length: page, advice: .guardInstall)
        #expect(outcome { () throws(MemoryError) in try space.lock(address: b, length: 4 * page) } == "ENOMEM")
        #expect(space.kernelView() == ["200000000-200004000 rw-p rd wr mr mw me gu lo ac "])
        #expect(outcome { () throws(MemoryError) in try space.lock(address: b, length: 4 * page, onFault: true) } == "ok")
        #expect(space.kernelView() == ["200000000-200004000 rw-p rd wr mr mw me gu lo lf ac "])

        space = try kernelLikeSpace()
        try space.map(length: 4 * page, placement: .fixed(b))
        try space.advise(address: b + page, length: page, advice: .guardInstall)
        try space.advise(address: b + page, length: page, advice: .guardRemove)
        #expect(space.kernelView() == ["200000000-200004000 rw-p rd wr mr mw me gu ac "])
    }
}
