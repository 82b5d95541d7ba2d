import Testing

@testable import Shootdown

/// Faults below a `MAP_GROWSDOWN` VMA grow it (`expand_downwards`), against values measured on the
/// live kernel (a SIGSEGV handler on an alternate stack records each access; see
/// `KernelView.swift`). `s` is 0x200400000, where a 4-page growsdown VMA is mapped.
@Suite struct StackGrowthTests {
    let s = kernelBase + 1024 * page
    let gap = AddressSpace.stackGuardGap

    func access(_ space: AddressSpace, _ address: UInt64, write: Bool = false) -> String {
        outcome { () throws(MemoryError) in try space.fault(at: address, access: write ? .write : .read) }
    }

    func stack(_ space: AddressSpace, protection: Protection = .readWrite, options: AddressSpace.MapOptions = []) throws {
        try space.map(length: 4 * page, protection: protection, placement: .fixed(s), options: options.union(.growsDown))
    }

    /// Kernel: reading s-1 grows the VMA one page (`2003ff000-200404000 … gd ac`); writing s-100p
    /// grows it to there (no distance limit); s+4p (above it) is SIGSEGV.
    @Test func faultsBelowGrowTheStack() throws {
        let space = try kernelLikeSpace()
        try stack(space)
        #expect(space.kernelView() == ["200400000-200404000 rw-p rd wr mr mw me gd ac "])
        #expect(access(space, s - 1) == "ok")
        #expect(space.kernelView() == ["2003ff000-200404000 rw-p rd wr mr mw me gd ac "])
        #expect(access(space, s - 100 * page, write: true) == "ok")
        #expect(space.kernelView() == ["20039c000-200404000 rw-p rd wr mr mw me gd ac "])
        #expect(access(space, s + 4 * page) == "SIGSEGV")
    }

    /// Kernel: with a read-write page at s-gap-2p, reading s-p grows the stack (the gap to it is
    /// exactly 256 pages) and s-2p is SIGSEGV. With that page PROT_NONE instead, the stack grows
    /// past the gap (s-2p, s-3p, s-gap all ok). With a growsdown VMA `[s-10p, s-9p)` below, the
    /// stack grows right up to it (s-9p ok).
    @Test func theGuardGap() throws {
        var space = try kernelLikeSpace()
        try stack(space)
        try space.map(length: page, placement: .fixed(s - gap - 2 * page))
        #expect(access(space, s - page) == "ok")
        #expect(access(space, s - 2 * page) == "SIGSEGV")
        #expect(access(space, s - 3 * page) == "SIGSEGV")
        #expect(space.kernelView() == ["2002fe000-2002ff000 rw-p rd wr mr mw me ac ", "2003ff000-200404000 rw-p rd wr mr mw me gd ac "])

        space = try kernelLikeSpace()
        try stack(space)
        try space.map(length: page, protection: .none, placement: .fixed(s - gap - 2 * page))
        #expect(access(space, s - 2 * page) == "ok")
        #expect(access(space, s - 3 * page) == "ok")
        #expect(access(space, s - gap) == "ok")
        #expect(space.kernelView() == ["2002fe000-2002ff000 ---p mr mw me ", "200300000-200404000 rw-p rd wr mr mw me gd ac "])

        space = try kernelLikeSpace()
        try stack(space)
        try space.map(length: page, placement: .fixed(s - 10 * page), options: .growsDown)
        #expect(access(space, s - page) == "ok")
        #expect(access(space, s - 8 * page) == "ok")
        #expect(access(space, s - 9 * page) == "ok")
        #expect(space.kernelView() == ["2003f6000-2003f7000 rw-p rd wr mr mw me gd ac ", "2003f7000-200404000 rw-p rd wr mr mw me gd ac "])
    }

    /// Kernel: with `RLIMIT_STACK` 16 pages, s-12p grows the VMA to 16 pages, s-13p is SIGSEGV.
    /// A read-only stack: a write at s-p grows it and then faults (SIGSEGV, `2003ff000-…`), a read
    /// is fine. A `MAP_LOCKED` stack grown by reading s-2p is not populated in between (mincore of
    /// `[s-2p, s+4p)` `101111`). A stack at 0x14000: reading 0x10000 grows it, 0x1000 (below the
    /// effective `mmap_min_addr`, 65536) is SIGSEGV even as root.
    @Test func limits() throws {
        var space = try AddressSpace(
            configuration: .init(capabilities: [.ipcLock, .sysRawIO], stackLimit: 16 * page),
            memory: PhysicalMemory(capacity: 1024, swapSlots: 0))
        try stack(space)
        #expect(access(space, s - 12 * page) == "ok")
        #expect(access(space, s - 13 * page) == "SIGSEGV")
        #expect(space.kernelView() == ["2003f4000-200404000 rw-p rd wr mr mw me gd ac "])

        space = try kernelLikeSpace()
        try stack(space, protection: .read)
        #expect(access(space, s - page, write: true) == "SIGSEGV")
        #expect(space.kernelView() == ["2003ff000-200404000 r--p rd mr mw me gd "])
        #expect(access(space, s - page) == "ok")

        space = try kernelLikeSpace()
        try stack(space, options: .locked)
        #expect(access(space, s - 2 * page) == "ok")
        #expect(space.kernelView() == ["2003fe000-200404000 rw-p rd wr mr mw me gd lo ac "])
        #expect(space.residencyString(s - 2 * page, pages: 6) == "101111")

        space = try kernelLikeSpace()
        try space.map(length: 4 * page, placement: .fixed(0x14000), options: .growsDown)
        #expect(access(space, 0x10000) == "ok")
        #expect(access(space, 0x1000) == "SIGSEGV")
        #expect(space.kernelView(0, 0x20000) == ["10000-18000 rw-p rd wr mr mw me gd ac "])
    }

    /// Kernel: madvise, mlock, MADV_POPULATE_READ and mincore below the stack are ENOMEM (only
    /// faults grow it); `mprotect(s+p, 1 page, PROT_READ|PROT_GROWSDOWN)` changes `[s, s+2p)`.
    @Test func onlyFaultsGrow() throws {
        let space = try kernelLikeSpace()
        try stack(space)
        #expect(outcome { () throws(MemoryError) in try space.advise(address: s - page, length: page, advice: .dontNeed) } == "ENOMEM")
        #expect(outcome { () throws(MemoryError) in try space.protect(address: s + page, length: page, protection: [.read, .growsDown]) } == "ok")
        #expect(outcome { () throws(MemoryError) in try space.lock(address: s - page, length: page) } == "ENOMEM")
        #expect(outcome { () throws(MemoryError) in try space.advise(address: s - page, length: 2 * page, advice: .populateRead) } == "ENOMEM")
        #expect(space.residencyString(s - page, pages: 2) == "ENOMEM")
        #expect(space.kernelView() == ["200400000-200402000 r--p rd mr mw me gd ", "200402000-200404000 rw-p rd wr mr mw me gd ac "])
    }
}

extension StackGrowthTests {
    /// Kernel (8 MiB `RLIMIT_STACK`): a 0xeba000-byte growsdown mapping, already past the limit;
    /// a read of the page below it is SIGSEGV (no growth), yet the VMA got its anon_vma first
    /// (`anon_vma_prepare` comes before the size check): a read-only mprotect of a part keeps
    /// `ac` (`3000f8000-3000ff000 r--p … gd ac`). Without the read, `ac` goes.
    @Test(arguments: [true, false])
    func aRefusedGrowthStillPreparesTheAnonVMA(readBelow: Bool) throws {
        let base: UInt64 = 0x3_0000_0000
        let space = try AddressSpace(
            configuration: .init(capabilities: [.ipcLock, .sysRawIO], stackLimit: 8 << 20),
            memory: PhysicalMemory(capacity: 1024, swapSlots: 0))
        try space.map(length: 0xeba000, placement: .fixed(base), options: .growsDown)
        if readBelow { #expect(access(space, base - page) == "SIGSEGV") }
        try space.protect(address: base + 0xf8000, length: 0x7000, protection: .read)
        let flags = space.kernelView(base, base + 0x1000_0000).first { $0.hasPrefix("3000f8000-3000ff000") }
        #expect(flags == "3000f8000-3000ff000 r--p rd mr mw me gd " + (readBelow ? "ac " : ""))
    }
}
