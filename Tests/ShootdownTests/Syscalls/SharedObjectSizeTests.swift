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
