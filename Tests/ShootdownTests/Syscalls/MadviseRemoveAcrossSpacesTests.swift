import Testing

@testable import Shootdown

/// MADV_REMOVE punches a hole in a shared object, and Linux unmaps the punched pages from every
/// mapping of it, in every process. The engine zapped only the calling space: after a fork, the
/// child's punch left the parent's entries (and its mirrors' translations) on frames the object
/// no longer held, so the parent kept reading the old contents and never saw the child's later
/// writes. Measured on Linux 6.18: parent writes 9 to four shared pages, forks, the child punches
/// pages 1–2 and writes 5 to page 1; the parent then reads 9 5 0 9 and mincore shows 1101.
@Suite struct MadviseRemoveAcrossSpacesTests {
    let b = kernelBase

    @Test func removeInForkChildUnmapsTheParentsMappings() throws {
        let parent = try kernelLikeSpace()
        try parent.map(length: 4 * page, placement: .fixed(b), options: .shared)
        try parent.touch(b, pages: 4, token: 9)
        let mirror = try SoftwareMirror(space: parent, start: b, length: 4 * page)
        defer { mirror.detach() }
        try mirror.populate(address: b, length: 4 * page, write: false)
        let child = try parent.fork()
        defer { child.teardown() }

        try child.advise(address: b + page, length: 2 * page, advice: .remove)
        // Every translation of the punched pages is gone, in the parent and its mirror.
        #expect(parent.translate(b + page) == nil)
        #expect(parent.translate(b + 2 * page) == nil)
        #expect(mirror.translation(for: b + page) == nil)
        #expect(mirror.translation(for: b + 2 * page) == nil)
        #expect(mirror.translation(for: b) != nil)

        try child.write(5, at: b + page)
        #expect(parent.residencyString(b, pages: 4) == "1101")
        #expect(try parent.read(at: b) == 9)
        #expect(try parent.read(at: b + page) == 5)
        #expect(try parent.read(at: b + 2 * page) == 0)
        #expect(try parent.read(at: b + 3 * page) == 9)
        #expect(try mirror.read(at: b + page) == 5)
        parent.teardown()
    }

    /// The other direction, and a space that forked twice: a punch in the parent reaches both
    /// children; a child that unmapped the object is left alone.
    @Test func removeInParentUnmapsEveryChildsMappings() throws {
        let parent = try kernelLikeSpace()
        try parent.map(length: 2 * page, placement: .fixed(b), options: .shared)
        try parent.touch(b, pages: 2, token: 7)
        let first = try parent.fork()
        let second = try parent.fork()
        try first.unmap(address: b, length: 2 * page)
        #expect(try second.read(at: b + page) == 7)
        try parent.advise(address: b, length: 2 * page, advice: .remove)
        #expect(second.translate(b) == nil)
        #expect(second.translate(b + page) == nil)
        #expect(try second.read(at: b + page) == 0)
        #expect(first.audit().entriesOutsideVMAs == 0)
        for space in [first, second, parent] { space.teardown() }
    }
}
