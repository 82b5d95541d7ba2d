import Testing

@testable import Shootdown

/// Divergences the live-kernel oracle (`ShootdownVerification`, `verify-kernel`) found and the
/// engine now matches; each test is the oracle's shortest reproducer in engine terms, with
/// Linux's outcome as the oracle observed it (Linux 6.18 x86-64, unprivileged child).
@Suite struct OracleFindingsTests {
    let b = kernelBase

    func remap(_ space: AddressSpace, _ address: UInt64, _ old: UInt64, _ new: UInt64, _ flags: AddressSpace.RemapFlags, _ target: UInt64 = 0) -> String {
        do {
            return "0x" + String(try space.remap(address: address, oldLength: old, newLength: new, flags: flags, newAddress: target), radix: 16)
        } catch {
            return error.errnoName
        }
    }

    /// Linux: mremap with a new length above TASK_SIZE is EINVAL before the source is looked at
    /// (the engine said EFAULT over a hole, ENOMEM over a VMA); exactly TASK_SIZE is looked at.
    @Test func mremapNewLengthAboveTaskSize() throws {
        let space = try kernelLikeSpace(privileged: false)
        try space.map(length: 2 * page, placement: .fixed(b))
        #expect(remap(space, b + 64 * page, 2 * page, 1 << 63, .mayMove) == "EINVAL")
        #expect(remap(space, b, 2 * page, AddressSpace.userLimit + page, .mayMove) == "EINVAL")
        #expect(remap(space, b + 64 * page, 2 * page, AddressSpace.userLimit, .mayMove) == "EFAULT")
    }

    /// Linux: growing a locked VMA checks `RLIMIT_MEMLOCK` (EAGAIN) before it looks for room.
    @Test func mremapGrowingALockedVMAChecksTheLimitFirst() throws {
        let space = try kernelLikeSpace(privileged: false, lockedMemoryLimit: 16 * page)
        try space.map(length: 8 * page, placement: .fixed(b), options: .locked)
        #expect(remap(space, b + 5 * page, 3 * page, AddressSpace.userLimit, []) == "EAGAIN")
        #expect(remap(space, b, 8 * page, 17 * page, .mayMove) == "EAGAIN")
        #expect(remap(space, b, 8 * page, 16 * page, .mayMove) != "EAGAIN")
    }

    /// Linux: a locked VMA grown by a move has its new pages populated (as growth in place does).
    @Test func mremapMoveOfALockedVMAPopulatesTheNewPages() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 17 * page, placement: .fixed(b), options: [.populate])
        try space.lock(address: b, length: 17 * page)
        let moved = remap(space, b + 15 * page, page, 25 * page, .mayMove)  // not at the end: moves
        #expect(moved != "ENOMEM" && moved != "EFAULT")
        let target = UInt64(moved.dropFirst(2), radix: 16)!
        #expect(target != b + 15 * page)
        #expect(space.residencyString(target, pages: 25) == String(repeating: "1", count: 25))
    }

    /// Linux aligns a non-fixed 2 MiB-multiple placement to 2 MiB for private anonymous memory
    /// only (shared anonymous memory is shmem: not aligned with shmem THP off), and aligns mremap
    /// moves of private memory of such lengths too.
    @Test func thpAlignmentIsForPrivateMemory() throws {
        let space = try kernelLikeSpace()
        let huge = AddressSpace.hugePageSize
        let top = try space.map(length: page)  // the next placement ends unaligned
        let shared = try space.map(length: 2 * huge, options: .shared)
        #expect(shared == top - 2 * huge)
        let privateAligned = try space.map(length: 2 * huge)
        #expect(privateAligned % huge == 0)
        try space.map(length: page, placement: .fixed(b))
        try space.map(length: page, protection: .read, placement: .fixed(b + page))  // blocks growth in place
        let moved = remap(space, b, page, huge, .mayMove)
        #expect(UInt64(moved.dropFirst(2), radix: 16)! % huge == 0)
    }

    /// Linux: mlock and munlock of a range that wraps past 2^64 (start rounded down, length
    /// rounded up) are EINVAL.
    @Test func mlockOfAWrappingRange() throws {
        let space = try kernelLikeSpace(privileged: false)
        #expect(outcome { () throws(MemoryError) in try space.lock(address: 0xffff_ffff_ffff_fef9, length: 0x248000) } == "EINVAL")
        #expect(outcome { () throws(MemoryError) in try space.unlock(address: 0xffff_ffff_ffff_fef9, length: 0x248000) } == "EINVAL")
    }

    /// Linux: `MAP_FIXED_NOREPLACE` over a mapping is EEXIST even with `MAP_GROWSDOWN|MAP_SHARED`
    /// (EINVAL comes later); over free space that combination is EINVAL.
    @Test func mapGrowsDownSharedAfterPlacement() throws {
        let space = try kernelLikeSpace(privileged: false)
        try space.map(length: 4 * page, placement: .fixed(b))
        #expect(outcome { () throws(MemoryError) in
            try space.map(length: 8 * page, protection: .read, placement: .fixedNoReplace(b), options: [.shared, .growsDown])
        } == "EEXIST")
        #expect(outcome { () throws(MemoryError) in
            try space.map(length: 8 * page, protection: .read, placement: .fixedNoReplace(b + 16 * page), options: [.shared, .growsDown])
        } == "EINVAL")
    }

    /// Linux: after `mlockall(MCL_FUTURE|MCL_ONFAULT)`, a `MAP_LOCKED` mapping keeps `lf` and
    /// nothing is populated, not even with `MAP_POPULATE`.
    @Test func mapLockedAfterLockAllOnFault() throws {
        let space = try kernelLikeSpace(privileged: false)
        try space.lockAll([.future, .onFault])
        try space.map(length: 6 * page, protection: .exec, placement: .fixed(b), options: .locked)
        try space.map(length: 2 * page, placement: .fixed(b + 8 * page), options: .populate)
        #expect(space.kernelView() == ["200000000-200006000 --xp ex mr mw me lo lf ", "200008000-20000a000 rw-p rd wr mr mw me lo lf ac "])
        #expect(space.residencyString(b, pages: 6) == "000000")
        #expect(space.residencyString(b + 8 * page, pages: 2) == "00")
    }

    /// Linux: mprotect with `PROT_GROWSUP` where no VMA contains the start is ENOMEM (the lookup
    /// comes first); over a VMA it is EINVAL (x86 has no growsup VMAs).
    @Test func mprotectGrowsUp() throws {
        let space = try kernelLikeSpace(privileged: false)
        try space.map(length: 4 * page, placement: .fixed(b + 8 * page))
        #expect(outcome { () throws(MemoryError) in try space.protect(address: b, length: 5 * page, protection: [.read, .growsUp]) } == "ENOMEM")
        #expect(outcome { () throws(MemoryError) in try space.protect(address: b + 8 * page, length: page, protection: [.read, .growsUp]) } == "EINVAL")
    }

    /// Linux rounds mremap's lengths like `PAGE_ALIGN`, wrapping: an old length of 2^64-1 becomes
    /// 0, so over a hole the call is EFAULT (the engine said EINVAL); DONTUNMAP compares the
    /// rounded lengths (0x1000 and 0x1 are equal).
    @Test func mremapLengthsRoundLikeLinux() throws {
        let space = try kernelLikeSpace(privileged: false)
        try space.map(length: page, placement: .fixed(b))
        #expect(remap(space, b + 64 * page, .max, 0x2afff, []) == "EFAULT")
        #expect(remap(space, b, 0x1000, 0x1, [.mayMove, .dontUnmap, .fixed], b + 16 * page) == "0x200010000")
    }

    /// Linux: a fixed mremap of an address without a VMA to a target below `mmap_min_addr` is
    /// EFAULT (the source first); with a VMA there it is EPERM.
    @Test func mremapFixedChecksTheSourceBeforeTheTarget() throws {
        let space = try kernelLikeSpace(privileged: false)
        try space.map(length: page, placement: .fixed(b))
        #expect(remap(space, b + 64 * page, 0, 0x26000, [.mayMove, .fixed], 0) == "EFAULT")
        #expect(remap(space, b, page, page, [.mayMove, .fixed], 0) == "EPERM")
    }

    /// Linux: MREMAP_DONTUNMAP whose new-address hint overlaps the source is EINVAL.
    @Test func mremapDontUnmapHintOverlappingTheSource() throws {
        let space = try kernelLikeSpace(privileged: false)
        try space.map(length: 0x3b000, protection: .read, placement: .fixed(b))
        #expect(remap(space, b, 0x1d000, 0x1d000, [.mayMove, .dontUnmap], b) == "EINVAL")
        #expect(remap(space, b, 0x1d000, 0x1d000, [.mayMove, .dontUnmap], b + 0x1c000) == "EINVAL")
    }

    /// Linux: MREMAP_DONTUNMAP implies a new address even without MREMAP_FIXED: an unaligned
    /// hint is EINVAL, and so is one overlapping the source, 0 included (`mremap(0x8000, 0x27000,
    /// 0x27000, MAYMOVE|DONTUNMAP, 0)` is EINVAL, not EFAULT).
    @Test func mremapDontUnmapChecksItsNewAddress() throws {
        let space = try kernelLikeSpace(privileged: false)
        try space.map(length: 0x24000, protection: .read, placement: .fixed(b))
        #expect(remap(space, b, 0x23000, 0x23000, [.mayMove, .dontUnmap], b + 0x100001) == "EINVAL")
        #expect(remap(space, 0x8000, 0x27000, 0x27000, [.mayMove, .dontUnmap], 0) == "EINVAL")
        #expect(remap(space, 0x80000, 0x27000, 0x27000, [.mayMove, .dontUnmap], 0) == "EFAULT")
    }

    /// Linux: duplicating private memory (old length 0) to a fixed target below `mmap_min_addr`
    /// is EINVAL (the source's checks come before the target's EPERM).
    @Test func mremapDuplicateOfPrivateMemoryBeforeTheTargetCheck() throws {
        let space = try kernelLikeSpace(privileged: false)
        try space.map(length: 4 * page, placement: .fixed(b))
        #expect(remap(space, b, 0, 0x7000, [.mayMove, .fixed], 0) == "EINVAL")
    }

    /// Linux: a DONTUNMAP move of a whole VMA leaves the source without its anon_vma, so making
    /// it read-only then drops `ac` (a part of a VMA keeps it).
    @Test func dontUnmapOfAWholeVMAUnlinksItsAnonVMA() throws {
        let space = try kernelLikeSpace(privileged: false)
        try space.map(length: 4 * page, placement: .fixed(b))
        try space.touch(b, pages: 2)
        try space.protect(address: b + 2 * page, length: 2 * page, protection: .none)
        #expect(remap(space, b + 2 * page, 2 * page, 2 * page, [.mayMove, .dontUnmap], 0) != "EINVAL")
        try space.protect(address: b + 2 * page, length: 2 * page, protection: .read)
        #expect(space.kernelView(b, b + 4 * page) == ["200000000-200002000 rw-p rd wr mr mw me ac ", "200002000-200004000 r--p rd mr mw me "])
    }

    /// Linux: mincore over a huge range with a hole is ENOMEM (the engine allocated a vector for
    /// the whole range first and aborted).
    @Test func residencyOfAHugeRangeWithAHole() throws {
        let space = try kernelLikeSpace(privileged: false)
        try space.map(length: page, placement: .fixed(0x10000))
        #expect(space.residencyString(0x10000, pages: 0x7ffff3b88) == "ENOMEM")
    }

    /// Linux: MADV_COLLAPSE over shared `PROT_NONE` or read-only memory is EINVAL (the engine
    /// accepted any shared memory).
    @Test func collapseOfSharedProtNone() throws {
        let space = try kernelLikeSpace(privileged: false)
        let huge = AddressSpace.hugePageSize
        try space.map(length: 2 * huge, protection: .none, placement: .fixed(b), options: .shared)
        #expect(outcome { () throws(MemoryError) in try space.advise(address: b + 0x100000, length: 0x8000, advice: .collapse) } == "EINVAL")
        try space.protect(address: b, length: 2 * huge, protection: .read)
        #expect(outcome { () throws(MemoryError) in try space.advise(address: b + 0x100000, length: 0x37000, advice: .collapse) } == "EINVAL")
    }

    /// Linux: a non-fixed mmap with a nonzero hint that cannot be taken is not THP-aligned, even
    /// for a 2 MiB-multiple length (only a hint of 0 gets aligned).
    @Test func hintedPlacementIsNotTHPAligned() throws {
        let space = try kernelLikeSpace(privileged: false)
        let huge = AddressSpace.hugePageSize
        let top = try space.map(length: page)
        let hinted = try space.map(length: 2 * huge, protection: .read, placement: .hint(top))
        #expect(hinted == top - 2 * huge)
        #expect(try space.map(length: 2 * huge) % huge == 0)
    }

    /// Linux: MADV_REMOVE needs `VM_MAYWRITE`, not the current protection: a `PROT_NONE` part of a
    /// writable shared mapping is punched (success), and a range running from shared `PROT_NONE`
    /// memory into private memory fails EINVAL at the private VMA (the engine said EACCES).
    @Test func removeChecksMayWrite() throws {
        let space = try kernelLikeSpace(privileged: false)
        try space.map(length: 16 * page, placement: .fixed(b), options: .shared)
        try space.write(5, at: b + 9 * page)
        try space.protect(address: b + 8 * page, length: 8 * page, protection: .none)
        #expect(outcome { () throws(MemoryError) in try space.advise(address: b + 7 * page, length: 2 * page, advice: .remove) } == "ok")
        try space.map(length: 4 * page, placement: .fixed(b + 16 * page))
        #expect(outcome { () throws(MemoryError) in try space.advise(address: b + 12 * page, length: 8 * page, advice: .remove) } == "EINVAL")
    }

    /// Linux: MADV_COLLAPSE over a private VMA that never had a page written (no anon_vma) is
    /// EINVAL even when the range holds no whole block (with a written page it succeeds, doing
    /// nothing: `CollapseTests`).
    @Test func collapseWithoutAnonymousPages() throws {
        let space = try kernelLikeSpace(privileged: false)
        try space.map(length: 2 * AddressSpace.hugePageSize, placement: .fixed(b))
        #expect(outcome { () throws(MemoryError) in try space.advise(address: b + 0x100000, length: 4 * page, advice: .collapse) } == "EINVAL")
    }

    /// Linux: the stack guard gap below a growsdown VMA only narrows the gap right below it; the
    /// top-down search still finds the next gap down in full. (The engine kept the guard's lower
    /// bound as the ceiling past the VMA below it and skipped that gap.)
    @Test func guardGapOnlyNarrowsItsOwnGap() throws {
        let base: UInt64 = 0x7F00_0000_0000
        let space = try AddressSpace(
            configuration: .init(mmapBase: base), memory: PhysicalMemory(capacity: 1024, swapSlots: 0))
        let stackStart = base - 0x20000
        try space.map(length: 4 * page, protection: .none, placement: .fixed(stackStart), options: .growsDown)
        // A VMA inside the guard gap, then free space below it.
        try space.map(length: 0x3a000, placement: .fixed(stackStart - 0x53000), options: .shared)
        let placed = try space.map(length: 0x3e000, options: .shared)
        #expect(placed == stackStart - 0x53000 - 0x3e000)
    }

    /// Linux: when the highest gap that fits lies right below a growsdown VMA and its guard gap
    /// reaches into it, the search starts again below the guard gap: every gap above is passed
    /// over, even one below another VMA inside the guard gap. (Oracle: a PROT_NONE growsdown VMA
    /// at the top, a read-only VMA inside its guard gap, then a 5-page shared mmap lands 1 MiB +
    /// 5 pages below the growsdown VMA.)
    @Test func guardGapAboveAFittingGapRestartsTheSearch() throws {
        let base: UInt64 = 0x7F00_0000_0000
        let space = try AddressSpace(
            configuration: .init(mmapBase: base), memory: PhysicalMemory(capacity: 1024, swapSlots: 0))
        let stackStart = base - 0x4000
        try space.map(length: 4 * page, protection: .none, placement: .fixed(stackStart), options: .growsDown)
        try space.map(length: 6 * page, protection: .read, placement: .fixed(base - 0x27000))
        let placed = try space.map(length: 5 * page, options: .shared)
        #expect(placed == stackStart - AddressSpace.stackGuardGap - 5 * page)
    }

    /// Linux places a THP-aligned mapping inside a gap of its length plus 2 MiB (then aligns the
    /// start up): a 6 MiB - 0x23000 gap right below the base cannot take a 4 MiB mapping, although
    /// an aligned 4 MiB slot lies inside it. (Oracle: a read-only VMA 0x603000 below the top, then
    /// a 4 MiB mmap lands 12 MiB below the top.)
    @Test func thpPlacementNeedsAPaddedGap() throws {
        let base: UInt64 = 0x7F00_0000_0000
        let space = try AddressSpace(
            configuration: .init(mmapBase: base), memory: PhysicalMemory(capacity: 1024, swapSlots: 0))
        try space.map(length: 0x23000, protection: .read, placement: .fixed(base - 0x603000))
        #expect(try space.map(length: 0x400000) == base - 0xC00000)
    }

    /// Linux grows a VMA in place into the stack guard gap of a growsdown VMA above (only another
    /// VMA in the way stops it).
    @Test func growthInPlaceIgnoresTheGuardGap() throws {
        let space = try kernelLikeSpace(privileged: false)
        let stack = b + 0x200000
        try space.map(length: 3 * page, protection: .read, placement: .fixed(stack), options: .growsDown)
        try space.map(length: 0x39000, protection: .read, placement: .fixed(stack - 0x100000 - 0x39000), options: .shared)
        let start = stack - 0x100000 - 0x39000
        #expect(outcome { () throws(MemoryError) in try space.remap(address: start, oldLength: 0x39000, newLength: 0x3b000) } == "ok")
        #expect(space.mapping(containing: start)?.end == start + 0x3b000)
    }
}
