import Testing

@testable import Shootdown

/// brk, mincore, msync and mseal against values measured on the live kernel (see
/// `KernelView.swift`); `b` is 0x200000000.
@Suite struct SmallCallTests {
    let b = kernelBase

    /// Kernel (`setarch -R`, raw `SYS_brk`, results collected before any output so that malloc
    /// does not move the break; `s` is the break at start): `brk(s+1)` returns s+1 and a one-page
    /// `rw-p rd wr mr mw me ac` VMA appears at s; `brk(s+3p)` grows that VMA to 3 pages and a
    /// write to its third page makes mincore `001`; `brk(s+p)` shrinks it back; `brk(s-p)` returns
    /// the current break (s+p); `brk(s)` removes the VMA. With a read-only page mapped at s+8p,
    /// `brk(s+7p)` succeeds, `brk(s+7p+1)` is refused (s+7p returned: a free page must remain below
    /// the next VMA), `brk(s+6p+1)` returns s+6p+1. After shrinking to s+2p and
    /// `mlockall(MCL_FUTURE)`, `brk(s+4p)` adds a separate `lo` VMA `[s+2p, s+4p)`, populated
    /// (`0011`). After `munlockall`, shrinking to s+2p and sealing `[s, s+2p)`, `brk(s+p)` is
    /// refused (s+2p) and `brk(s+4p)` grows with a separate unsealed VMA.
    @Test func programBreak() throws {
        let s = b
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 0)
        let space = try AddressSpace(
            configuration: .init(capabilities: [.ipcLock, .sysRawIO], programBreakStart: s), memory: memory)
        #expect(try space.setBreak(0) == s)
        #expect(try space.setBreak(s + 1) == s + 1)
        #expect(space.kernelView() == ["200000000-200001000 rw-p rd wr mr mw me ac "])
        #expect(try space.setBreak(s + 3 * page) == s + 3 * page)
        try space.write(1, at: s + 2 * page)
        #expect(space.kernelView() == ["200000000-200003000 rw-p rd wr mr mw me ac "])
        #expect(space.residencyString(s, pages: 3) == "001")
        #expect(try space.setBreak(s + page) == s + page)
        #expect(space.kernelView() == ["200000000-200001000 rw-p rd wr mr mw me ac "])
        #expect(try space.setBreak(s - page) == s + page)
        #expect(try space.setBreak(s) == s)
        #expect(space.kernelView() == [])

        try space.map(length: page, protection: .read, placement: .fixed(s + 8 * page))
        #expect(try space.setBreak(s + 7 * page) == s + 7 * page)
        #expect(try space.setBreak(s + 7 * page + 1) == s + 7 * page)
        #expect(try space.setBreak(s + 6 * page + 1) == s + 6 * page + 1)
        #expect(space.kernelView() == ["200000000-200007000 rw-p rd wr mr mw me ac ", "200008000-200009000 r--p rd mr mw me "])

        #expect(try space.setBreak(s + 2 * page) == s + 2 * page)
        try space.lockAll(.future)
        #expect(try space.setBreak(s + 4 * page) == s + 4 * page)
        #expect(space.kernelView() == [
            "200000000-200002000 rw-p rd wr mr mw me ac ", "200002000-200004000 rw-p rd wr mr mw me lo ac ",
            "200008000-200009000 r--p rd mr mw me ",
        ])
        #expect(space.residencyString(s, pages: 4) == "0011")
        try space.unlockAll()

        #expect(try space.setBreak(s + 2 * page) == s + 2 * page)
        try space.seal(address: s, length: 2 * page)
        #expect(try space.setBreak(s + page) == s + 2 * page)
        #expect(try space.setBreak(s + 4 * page) == s + 4 * page)
        #expect(space.kernelView() == [
            "200000000-200002000 rw-p rd wr mr mw me ac sl ", "200002000-200004000 rw-p rd wr mr mw me ac ",
            "200008000-200009000 r--p rd mr mw me ",
        ])
    }

    /// Kernel: a 4-page VMA with page 1 written and page 2 read (the zero page): mincore `0110`.
    /// `mincore(b+1, …)` EINVAL; 5 pages (past the VMA) ENOMEM; at b+4p ENOMEM; zero length ok;
    /// at 0x7ffffffff000 (TASK_SIZE) ENOMEM; `[0x7fffffffe000, +64 KiB)` ENOMEM. A PROT_NONE VMA
    /// followed by a shared one whose first page was written: `0010`.
    @Test func residency() throws {
        var space = try kernelLikeSpace()
        try space.map(length: 4 * page, placement: .fixed(b))
        try space.write(1, at: b + page)
        _ = try space.read(at: b + 2 * page)
        #expect(space.residencyString(b, pages: 4) == "0110")
        #expect(outcome { () throws(MemoryError) in _ = try space.residency(address: b + 1, length: page) } == "EINVAL")
        #expect(space.residencyString(b, pages: 5) == "ENOMEM")
        #expect(space.residencyString(b + 4 * page, pages: 1) == "ENOMEM")
        #expect(outcome { () throws(MemoryError) in _ = try space.residency(address: b, length: 0) } == "ok")
        #expect(space.residencyString(AddressSpace.userLimit, pages: 1) == "ENOMEM")
        #expect(space.residencyString(AddressSpace.userLimit - page, pages: 16) == "ENOMEM")

        space = try kernelLikeSpace()
        try space.map(length: 2 * page, protection: .none, placement: .fixed(b))
        try space.map(length: 2 * page, placement: .fixed(b + 2 * page), options: .shared)
        try space.write(1, at: b + 2 * page)
        #expect(space.residencyString(b, pages: 4) == "0010")
    }

    /// Kernel: `[b, b+2p)` and `[b+3p, b+4p)`: `msync(MS_SYNC|MS_ASYNC)` EINVAL, `msync(b+1)`
    /// EINVAL, over the hole ENOMEM (MS_SYNC and MS_ASYNC), zero length ok, at b+8p ENOMEM, flag 8
    /// EINVAL, flags 0 ok. With `[b, b+2p)` `MAP_LOCKED`: `MS_INVALIDATE` over it EBUSY (at once,
    /// before the hole), over `[b+3p, b+4p)` ok, over `[b+2p, b+4p)` ENOMEM; `MS_SYNC` over all
    /// ENOMEM.
    @Test func sync() throws {
        typealias S = AddressSpace.SyncFlags
        func sync(_ space: AddressSpace, _ address: UInt64, _ length: UInt64, _ raw: UInt32) -> String {
            outcome { () throws(MemoryError) in try space.sync(address: address, length: length, flags: S(rawValue: raw)) }
        }
        let (async, invalidate, sync_) = (UInt32(1), UInt32(2), UInt32(4))
        var space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b))
        try space.map(length: page, placement: .fixed(b + 3 * page))
        #expect(sync(space, b, 2 * page, sync_ | async) == "EINVAL")
        #expect(sync(space, b + 1, page, sync_) == "EINVAL")
        #expect(sync(space, b, 4 * page, sync_) == "ENOMEM")
        #expect(sync(space, b, 4 * page, async) == "ENOMEM")
        #expect(sync(space, b, 0, sync_) == "ok")
        #expect(sync(space, b + 8 * page, page, sync_) == "ENOMEM")
        #expect(sync(space, b, page, 8) == "EINVAL")
        #expect(sync(space, b, page, 0) == "ok")

        space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b), options: .locked)
        try space.map(length: page, placement: .fixed(b + 3 * page))
        #expect(sync(space, b, 4 * page, invalidate) == "EBUSY")
        #expect(sync(space, b + 3 * page, page, invalidate) == "ok")
        #expect(sync(space, b + 2 * page, 2 * page, invalidate) == "ENOMEM")
        #expect(sync(space, b, 4 * page, sync_) == "ENOMEM")
    }

    /// Kernel: `[b, b+2p)` rw (both pages written) and `[b+2p, b+4p)` r (page 2 read); `mseal(b,
    /// 4 pages, 0)`: both VMAs get `sl`. Then munmap, mprotect, mremap (grow) of b: EPERM;
    /// DONTNEED on the writable VMA ok, on the read-only one EPERM, FREE and DONTFORK and
    /// GUARD_INSTALL there EPERM, COLD and PAGEOUT ok; `mmap(MAP_FIXED)` over b EPERM; mlock and
    /// munlock ok; the layout unchanged. `mseal` at b+8p (unmapped) ENOMEM, with flags 1 EINVAL,
    /// at b+1 EINVAL, zero length ok.
    @Test func seal() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b))
        try space.touch(b, pages: 2)
        try space.map(length: 2 * page, protection: .read, placement: .fixed(b + 2 * page))
        _ = try space.read(at: b + 2 * page)
        try space.seal(address: b, length: 4 * page)
        let sealed = ["200000000-200002000 rw-p rd wr mr mw me ac sl ", "200002000-200004000 r--p rd mr mw me sl "]
        #expect(space.kernelView() == sealed)
        #expect(outcome { () throws(MemoryError) in try space.unmap(address: b, length: page) } == "EPERM")
        #expect(outcome { () throws(MemoryError) in try space.protect(address: b, length: page, protection: .read) } == "EPERM")
        #expect(outcome { () throws(MemoryError) in try space.remap(address: b, oldLength: page, newLength: 2 * page, move: .mayMove) } == "EPERM")
        #expect(outcome { () throws(MemoryError) in try space.advise(address: b, length: page, advice: .dontNeed) } == "ok")
        for (advice, expected) in [(AddressSpace.Advice.dontNeed, "EPERM"), (.free, "EPERM"), (.dontFork, "EPERM"), (.guardInstall, "EPERM"), (.cold, "ok"), (.pageOut, "ok")] {
            #expect(outcome { () throws(MemoryError) in try space.advise(address: b + 2 * page, length: page, advice: advice) } == expected, "\(advice)")
        }
        #expect(outcome { () throws(MemoryError) in try space.map(length: page, placement: .fixed(b)) } == "EPERM")
        #expect(outcome { () throws(MemoryError) in try space.lock(address: b, length: page) } == "ok")
        #expect(outcome { () throws(MemoryError) in try space.unlock(address: b, length: page) } == "ok")
        #expect(space.kernelView() == sealed)
        #expect(outcome { () throws(MemoryError) in try space.seal(address: b + 8 * page, length: page) } == "ENOMEM")
        #expect(outcome { () throws(MemoryError) in try space.seal(address: b + page, length: page, flags: 1) } == "EINVAL")
        #expect(outcome { () throws(MemoryError) in try space.seal(address: b + 1, length: page) } == "EINVAL")
        #expect(outcome { () throws(MemoryError) in try space.seal(address: b, length: 0) } == "ok")
    }
}

/// The heap next to a written private mapping `[s-2p, s)` that ends where the break starts (the
/// executable's bss in a real process); `s` is 0x200010000.
extension SmallCallTests {
    static let breakStart = kernelBase + 16 * page

    func spaceWithABSS() throws -> AddressSpace {
        let s = Self.breakStart
        let space = try AddressSpace(
            configuration: .init(capabilities: [.ipcLock, .sysRawIO], programBreakStart: s),
            memory: PhysicalMemory(capacity: 1024, swapSlots: 0))
        try space.map(length: 2 * page, placement: .fixed(s - 2 * page))
        try space.write(1, at: s - 2 * page)
        return space
    }

    /// Kernel: `brk(s+3p)`: the heap is a VMA of its own (`[s, s+3p)`), the mapping below the
    /// break's start never absorbs it, compatible as it is (`vma_prev_limit` from `start_brk`).
    @Test func theHeapNeverJoinsAVMABelowTheBreaksStart() throws {
        let s = Self.breakStart
        let space = try spaceWithABSS()
        #expect(try space.setBreak(s + 3 * page) == s + 3 * page)
        #expect(space.kernelView() == ["20000e000-200010000 rw-p rd wr mr mw me ac ", "200010000-200013000 rw-p rd wr mr mw me ac "])
    }

    /// Oracle (Linux 6.18, the child's bss ending at the break's start): a heap grown to
    /// `s+0x333e2`, made PROT_NONE over its first 0x2a000 bytes and read-write again (merging back,
    /// and with the bss below), then grown to `s+0x39bbd`: one VMA to `s+0x3a000`.
    @Test func aHeapMergedWithTheVMABelowStillGrows() throws {
        let s = Self.breakStart
        let space = try spaceWithABSS()
        try space.setBreak(s + 0x333e2)
        try space.protect(address: s, length: 0x2a000, protection: .none)
        try space.protect(address: s, length: 0x2a000, protection: .readWrite)
        #expect(try space.setBreak(s + 0x39bbd) == s + 0x39bbd)
        #expect(space.kernelView() == ["20000e000-20004a000 rw-p rd wr mr mw me ac "])
    }
}
