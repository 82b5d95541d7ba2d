import Testing

@testable import Shootdown

/// `map(address:length:protection:rawFlags:)`: raw `MAP_*` bits as the mmap syscall takes them,
/// with the values measured on Linux 6.18 x86-64 (unprivileged where limits matter). These were
/// the oracle's "mmap inexpressible" divergences: the typed API had no form for them.
@Suite struct RawMmapFlagTests {
    typealias Flag = AddressSpace.RawMapFlag
    let anonymous: UInt64 = 0x20
    let b = kernelBase

    func mmap(_ space: AddressSpace, _ address: UInt64, _ length: UInt64, _ flags: UInt64,
              _ protection: Protection = .readWrite) -> String {
        do {
            return "0x" + String(try space.map(address: address, length: length, protection: protection, rawFlags: flags | anonymous), radix: 16)
        } catch {
            return error.errnoName
        }
    }

    /// Linux: an mmap without `MAP_ANONYMOUS` and fd -1 is `EBADF` before any other check: an
    /// unaligned hint, an unknown type, a zero length, `MAP_HUGETLB` or a fixed address over an
    /// existing mapping do not change it, and nothing is mapped or unmapped.
    @Test func mapWithoutAnonymousIsBadFileDescriptor() throws {
        let space = try kernelLikeSpace()
        let mapped = mmap(space, b, 4 * page, Flag.private | Flag.fixed)
        let before = space.kernelView()
        func fileMmap(_ address: UInt64, _ length: UInt64, _ flags: UInt64) -> String {
            do {
                return "0x" + String(try space.map(address: address, length: length, protection: .readWrite, rawFlags: flags), radix: 16)
            } catch {
                return error.errnoName
            }
        }
        #expect(mapped == "0x200000000")
        #expect(fileMmap(0, page, Flag.private) == "EBADF")
        #expect(fileMmap(b, 2 * page, Flag.shared | Flag.fixed) == "EBADF")
        #expect(fileMmap(b + 1, 0, 0) == "EBADF")
        #expect(fileMmap(b, page, Flag.private | Flag.fixed | 0x40000) == "EBADF")  // MAP_HUGETLB
        #expect(space.kernelView() == before)
    }

    /// Linux: `MAP_STACK` sets `nh` (`VM_NOHUGEPAGE`), private or shared.
    @Test func mapStackSetsNoHugePage() throws {
        let space = try kernelLikeSpace()
        _ = mmap(space, b, 7 * page, Flag.private | Flag.fixed | Flag.stack)
        _ = mmap(space, b + 16 * page, 7 * page, Flag.shared | Flag.fixed | Flag.stack)
        #expect(space.kernelView() == [
            "200000000-200007000 rw-p rd wr mr mw me ac nh ",
            "200010000-200017000 rw-s rd wr sh mr mw me ms nh ",
        ])
    }

    /// Linux (`setarch -R`): `MAP_32BIT` searches bottom-up from 1 GiB, takes a hint that ends at
    /// or below 2 GiB (even one below 1 GiB), THP-aligns 2 MiB multiples without a hint (an
    /// aligned gap start moves up by 2 MiB), fails with ENOMEM when [1 GiB, 2 GiB) has no room,
    /// and is ignored by MAP_FIXED.
    @Test func map32BitPlacesInTheLow2GiB() throws {
        let space = try kernelLikeSpace(privileged: false)
        let low = Flag.private | Flag.low32Bit
        #expect(mmap(space, 0, 3 * page, low) == "0x40000000")
        #expect(mmap(space, 0, 3 * page, low) == "0x40003000")
        #expect(mmap(space, 0, 2 << 20, low) == "0x40200000")
        #expect(mmap(space, 0, 3 * page, Flag.shared | Flag.low32Bit) == "0x40006000")
        #expect(mmap(space, 0x7F00_0000_0000, 3 * page, low) == "0x40009000")
        #expect(mmap(space, 0x5000_0000, 3 * page, low) == "0x50000000")
        #expect(mmap(space, 0x7E00_0000_0000, 3 * page, low | Flag.fixed) == "0x7e0000000000")
        #expect(mmap(space, 0x10000, 3 * page, low) == "0x10000")
        #expect(mmap(space, 0x7FFF_F000, 2 * page, low) == "0x4000c000")
        #expect(mmap(space, 0x5000_0001, page, low) == "0x4000e000")  // 0x50000000 is taken
        #expect(mmap(space, 0, 0x5000_0000, low) == "ENOMEM")
        #expect(mmap(space, 0, 0x8000_0000, low) == "ENOMEM")

        let fresh = try kernelLikeSpace(privileged: false)
        #expect(mmap(fresh, 0, 2 << 20, low) == "0x40200000")
        #expect(mmap(fresh, 0, 2 << 20, low) == "0x40600000")
        #expect(mmap(fresh, 0, page, low) == "0x40000000")
    }

    /// Linux: `MAP_NONBLOCK` turns `MAP_POPULATE` off, but a locked mapping still populates.
    @Test func mapNonBlockSkipsPopulate() throws {
        let space = try kernelLikeSpace()
        _ = mmap(space, b, 3 * page, Flag.private | Flag.fixed | Flag.populate | Flag.nonBlock)
        _ = mmap(space, b + 8 * page, 3 * page, Flag.private | Flag.fixed | Flag.locked | Flag.nonBlock)
        #expect(space.residencyString(b, pages: 3) == "000")
        #expect(space.residencyString(b + 8 * page, pages: 3) == "111")
    }

    /// Linux ignores `MAP_DENYWRITE`, `MAP_EXECUTABLE` and `MAP_UNINITIALIZED` for anonymous memory.
    @Test func legacyBitsAreIgnored() throws {
        let space = try kernelLikeSpace()
        _ = mmap(space, b, 3 * page, Flag.private | Flag.fixed | 0x800 | 0x1000 | 0x400_0000)
        #expect(space.kernelView() == ["200000000-200003000 rw-p rd wr mr mw me ac "])
    }

    /// Linux: a map type other than `MAP_SHARED` and `MAP_PRIVATE` (0, `MAP_SHARED_VALIDATE`,
    /// 4–15 bar `MAP_DROPPABLE`) is EINVAL for anonymous memory, after EEXIST, EPERM (below
    /// mmap_min_addr) and EAGAIN (locked-memory limit), and a fixed one unmaps nothing.
    @Test func invalidMapTypesAreEINVALAfterPlacementAndLockChecks() throws {
        let space = try kernelLikeSpace(privileged: false)
        for type: UInt64 in [0, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15] {
            #expect(mmap(space, 0, 3 * page, type) == "EINVAL", "type \(type)")
        }
        _ = mmap(space, b, 16 * page, Flag.private | Flag.fixed)
        #expect(mmap(space, b, 3 * page, Flag.fixedNoReplace) == "EEXIST")
        #expect(mmap(space, b, 3 * page, 3 | Flag.fixedNoReplace) == "EEXIST")
        #expect(mmap(space, 0, 3 * page, Flag.fixed) == "EPERM")
        #expect(mmap(space, 0, 3 * page, 4 | Flag.locked) == "EINVAL")
        #expect(mmap(space, 0, 1 << 30, 4 | Flag.locked) == "EAGAIN")
        #expect(mmap(space, 0, 1 << 30, 3 | Flag.locked) == "EAGAIN")
        #expect(mmap(space, b + page, 3 * page, 3 | Flag.fixed) == "EINVAL")
        #expect(mmap(space, b + page, 3 * page, 7 | Flag.fixed) == "EINVAL")
        #expect(space.kernelView() == ["200000000-200010000 rw-p rd wr mr mw me ac "])
    }
}

/// munmap, `MAP_FIXED` and mremap's fixed target over a range that reaches a sealed VMA fail with
/// EPERM after splitting the unsealed VMA at the range's start (Linux 6.18, measured: 16
/// `PROT_NONE` pages, pages 8–9 sealed).
@Suite struct SealedUnmapSplitTests {
    let b = kernelBase

    func sealedSpace() throws -> AddressSpace {
        let space = try kernelLikeSpace(privileged: false)
        try space.map(length: 16 * page, protection: [], placement: .fixed(b))
        try space.seal(address: b + 8 * page, length: 2 * page)
        return space
    }

    let splitAtSix = [
        "200000000-200006000 ---p mr mw me ",
        "200006000-200008000 ---p mr mw me ",
        "200008000-20000a000 ---p mr mw me sl ",
        "20000a000-200010000 ---p mr mw me ",
    ]
    let unsplit = [
        "200000000-200008000 ---p mr mw me ",
        "200008000-20000a000 ---p mr mw me sl ",
        "20000a000-200010000 ---p mr mw me ",
    ]

    @Test func mapFixedOverASealedVMASplitsFirst() throws {
        let space = try sealedSpace()
        #expect(outcome { () throws(MemoryError) in _ = try space.map(length: 6 * page, placement: .fixed(b + 6 * page)) } == "EPERM")
        #expect(space.kernelView() == splitAtSix)
    }

    @Test func munmapOverASealedVMASplitsFirst() throws {
        let space = try sealedSpace()
        #expect(outcome { () throws(MemoryError) in try space.unmap(address: b + 6 * page, length: 6 * page) } == "EPERM")
        #expect(space.kernelView() == splitAtSix)
    }

    @Test func mremapFixedOntoASealedVMASplitsFirst() throws {
        let space = try sealedSpace()
        try space.map(length: 6 * page, placement: .fixed(b + 32 * page))
        #expect(outcome { () throws(MemoryError) in
            _ = try space.remap(address: b + 32 * page, oldLength: 6 * page, newLength: 6 * page,
                                flags: [.mayMove, .fixed], newAddress: b + 6 * page)
        } == "EPERM")
        #expect(space.kernelView(b, b + 16 * page) == splitAtSix)
    }

    /// No split when the range starts inside the sealed VMA or at a VMA's start.
    @Test func noSplitFromASealedOrAlignedStart() throws {
        let space = try sealedSpace()
        #expect(outcome { () throws(MemoryError) in _ = try space.map(length: 6 * page, placement: .fixed(b + 9 * page)) } == "EPERM")
        #expect(outcome { () throws(MemoryError) in _ = try space.map(length: 12 * page, placement: .fixed(b)) } == "EPERM")
        #expect(space.kernelView() == unsplit)
    }

    /// The two halves of such a split stay apart: a new mapping below merges with the next VMA
    /// only, not on through the split (the engine's forward merge used to run on); changing the
    /// upper half and back merges it with both neighbours (Linux, measured).
    @Test func aFailedUnmapSplitStaysApartUntilAHalfChanges() throws {
        let space = try kernelLikeSpace(privileged: false)
        try space.map(length: 16 * page, protection: [.read, .exec], placement: .fixed(b + 16 * page))
        try space.seal(address: b + 24 * page, length: 4 * page)
        #expect(outcome { () throws(MemoryError) in try space.unmap(address: b + 20 * page, length: 8 * page) } == "EPERM")
        try space.map(length: 8 * page, protection: [.read, .exec], placement: .fixed(b + 8 * page))
        #expect(space.kernelView() == [
            "200008000-200014000 r-xp rd ex mr mw me ",
            "200014000-200018000 r-xp rd ex mr mw me ",
            "200018000-20001c000 r-xp rd ex mr mw me sl ",
            "20001c000-200020000 r-xp rd ex mr mw me ",
        ])
        try space.protect(address: b + 20 * page, length: 2 * page, protection: .read)
        try space.protect(address: b + 20 * page, length: 2 * page, protection: [.read, .exec])
        #expect(space.kernelView() == [
            "200008000-200018000 r-xp rd ex mr mw me ",
            "200018000-20001c000 r-xp rd ex mr mw me sl ",
            "20001c000-200020000 r-xp rd ex mr mw me ",
        ])
    }
}
