import Testing

@testable import Shootdown

/// Shared anonymous memory keeps the size it was mapped with: mremap may grow the mapping, but a
/// page past the object's end is `SIGBUS` on access, `EFAULT` for `MADV_POPULATE_*`, `ENOMEM` for
/// mlock (after the pages before the end were populated), and a locked mapping grown by a move
/// or duplicated populates only the pages inside the object. The engine's shared object had no
/// size, so those pages just worked (the kernel oracle's largest family of divergences). Values
/// measured on Linux 6.18 with the same steps.
@Suite struct SharedObjectSizeTests {
    let b = kernelBase

    func outcome(_ body: () throws(MemoryError) -> Void) -> String {
        do {
            try body()
            return "ok"
        } catch {
            return error.errnoName
        }
    }

    /// A read fault past the object's end faults around before it fails: Linux maps the cached
    /// pages of the faulting page's window first (`do_read_fault` tries fault-around before the
    /// page itself), then raises SIGBUS; a write fault maps nothing. Kernel (pagemap and mincore
    /// after each step): two pages read, unmapped by `MADV_DONTNEED` (mapped `00`, cached `11`);
    /// a four-page duplicate (`mremap(a, 0, 4 pages, MAYMOVE)`) reads its page 2: SIGBUS, mapped
    /// `1100`, cached `1100`; after `MADV_DONTNEED` of the duplicate, a write to its page 3:
    /// SIGBUS, mapped `0000`. Oracle seed 55 (a read with SIGBUS in a duplicate; Linux mapped a
    /// page the engine did not).
    @Test func aReadPastTheObjectsEndFaultsAroundFirst() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 2 * page, placement: .fixed(b), options: .shared)
        _ = try space.read(at: b)
        _ = try space.read(at: b + page)
        try space.advise(address: b, length: 2 * page, advice: .dontNeed)
        let duplicate = try space.remap(address: b, oldLength: 0, newLength: 4 * page, flags: .mayMove, newAddress: 0)
        #expect(space.mappedString(duplicate, pages: 4) == "0000")
        #expect(outcome { () throws(MemoryError) in _ = try space.read(at: duplicate + 2 * page) } == "SIGBUS")
        #expect(space.mappedString(duplicate, pages: 4) == "1100")
        #expect(space.residencyString(duplicate, pages: 4) == "1100")
        try space.advise(address: duplicate, length: 4 * page, advice: .dontNeed)
        #expect(outcome { () throws(MemoryError) in try space.write(1, at: duplicate + 3 * page) } == "SIGBUS")
        #expect(space.mappedString(duplicate, pages: 4) == "0000")
        try space.audit()
        space.teardown()
    }

    @Test func pagesPastTheEndOfAGrownSharedMappingRaiseSIGBUS() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 4 * page, placement: .fixed(b), options: .shared)
        #expect(try space.remap(address: b, oldLength: 4 * page, newLength: 8 * page) == b)
        #expect(outcome { () throws(MemoryError) in _ = try space.read(at: b + 3 * page) } == "ok")
        #expect(outcome { () throws(MemoryError) in try space.write(1, at: b + 5 * page) } == "SIGBUS")
        #expect(outcome { () throws(MemoryError) in _ = try space.read(at: b + 4 * page) } == "SIGBUS")
        #expect(space.residencyString(b, pages: 8) == "00010000")
        #expect(outcome { () throws(MemoryError) in try space.advise(address: b, length: 8 * page, advice: .populateRead) } == "EFAULT")
        #expect(space.residencyString(b, pages: 8) == "11110000")
        #expect(outcome { () throws(MemoryError) in try space.advise(address: b, length: 8 * page, advice: .populateWrite) } == "EFAULT")
        #expect(outcome { () throws(MemoryError) in try space.lock(address: b, length: 8 * page) } == "ENOMEM")
        #expect(outcome { () throws(MemoryError) in try space.lock(address: b, length: 8 * page, rawFlags: 0) } == "ENOMEM")
        #expect(space.residencyString(b, pages: 8) == "11110000")
        // Device paths fault like GUP: EFAULT.
        #expect(outcome { () throws(MemoryError) in _ = try space.pin(address: b + 4 * page, length: page, write: false) } == "EFAULT")
        space.teardown()
    }

    @Test func lockedMovesAndDuplicatesPopulateOnlyInsideTheObject() throws {
        let space = try kernelLikeSpace()
        let small = b + 0x1000_0000
        try space.map(length: 2 * page, placement: .fixed(small), options: [.shared, .locked])
        let moved = try space.remap(address: small, oldLength: 2 * page, newLength: 6 * page, flags: [.mayMove, .fixed], newAddress: small + 0x10_0000)
        #expect(space.residencyString(moved, pages: 6) == "110000")
        try space.map(length: 4 * page, placement: .fixed(b), options: [.shared, .populate])
        let duplicate = try space.remap(address: b + 2 * page, oldLength: 0, newLength: 6 * page, flags: [.mayMove, .fixed], newAddress: b + 0x20_0000)
        #expect(outcome { () throws(MemoryError) in _ = try space.read(at: duplicate + page) } == "ok")
        #expect(outcome { () throws(MemoryError) in _ = try space.read(at: duplicate + 2 * page) } == "SIGBUS")
        #expect(space.residencyString(duplicate, pages: 6) == "110000")
        space.teardown()
    }
}
