import Testing

@testable import Shootdown

/// Divergences the live-kernel oracle listed as known, now matched; each expected value measured
/// on Linux 6.18 x86-64 with a C program run as an unprivileged user.
@Suite struct OracleDivergenceFixTests {
    let b = kernelBase
    let huge = AddressSpace.hugePageSize

    /// fork copies no entries of a private VMA without an anon_vma (read-only populated memory,
    /// or zero pages read from writable memory): the child sees them absent; a VMA with one
    /// written page has every entry copied. (The engine copied every entry.)
    @Test func forkCopiesNoEntriesOfAPrivateVMAWithoutAnonVMA() throws {
        let parent = try kernelLikeSpace(privileged: false)
        try parent.map(length: 4 * page, protection: .read, placement: .fixed(b), options: .populate)
        try parent.map(length: 4 * page, placement: .fixed(b + 0x100000))
        _ = try parent.read(at: b + 0x100000)
        _ = try parent.read(at: b + 0x100000 + page)
        try parent.map(length: 4 * page, placement: .fixed(b + 0x200000))
        _ = try parent.read(at: b + 0x200000)
        try parent.write(1, at: b + 0x200000 + 2 * page)
        #expect(parent.residencyString(b, pages: 4) == "1111")
        #expect(parent.residencyString(b + 0x100000, pages: 4) == "1100")
        #expect(parent.residencyString(b + 0x200000, pages: 4) == "1010")
        let child = try parent.fork()
        defer { child.teardown() }
        #expect(child.residencyString(b, pages: 4) == "0000")
        #expect(child.residencyString(b + 0x100000, pages: 4) == "0000")
        #expect(child.residencyString(b + 0x200000, pages: 4) == "1010")
        #expect(try child.read(at: b) == 0)
        #expect(try child.read(at: b + 0x200000 + 2 * page) == 1)
    }
}
