import Testing

@testable import Shootdown

/// `MADV_PAGEOUT` of shared anonymous memory (shmem, no swap) and the fault-around that decides
/// which pages it may take, against values measured on the live kernel (`mincore` strings, one
/// digit per page; see `KernelView.swift`); `b` is 0x200000000, each mapping 10 pages. Reclaim
/// drops a clean page mapped only by the calling entry; a page ever dirtied stays (shmem cannot
/// be written out without swap); a page another mapping maps stays, and a read fault maps every
/// cached page of its 16-page window, so one read elsewhere keeps a whole window.
@Suite struct SharedPageOutTests {
    let b = kernelBase

    func shared(_ space: AddressSpace, at address: UInt64) throws {
        try space.map(length: 10 * page, placement: .fixed(address), options: .shared)
    }

    func read(_ space: AddressSpace, _ address: UInt64, pages: [UInt64]) throws {
        for index in pages { _ = try space.read(at: address + index * page) }
    }

    func pageOut(_ space: AddressSpace, _ address: UInt64, pages: UInt64 = 10) throws {
        try space.advise(address: address, length: pages * page, advice: .pageOut)
    }

    /// Kernel: pages 0, 1, 7, 8 read, 2 written, 3–4 `MADV_POPULATE_READ`, 5
    /// `MADV_POPULATE_WRITE`, 6 written, dropped by `MADV_DONTNEED` and read again (`1111111110`);
    /// after `MADV_PAGEOUT` of all ten: `0010011000`. Every page still reads what it held.
    @Test func cleanPagesGoDirtyPagesStay() throws {
        let space = try kernelLikeSpace()
        try shared(space, at: b)
        try read(space, b, pages: [0, 1])
        try space.write(1, at: b + 2 * page)
        try space.advise(address: b + 3 * page, length: 2 * page, advice: .populateRead)
        try space.advise(address: b + 5 * page, length: page, advice: .populateWrite)
        try space.write(1, at: b + 6 * page)
        try space.advise(address: b + 6 * page, length: page, advice: .dontNeed)
        try read(space, b, pages: [6, 7, 8])
        #expect(space.residencyString(b, pages: 10) == "1111111110")
        try pageOut(space, b)
        #expect(space.residencyString(b, pages: 10) == "0010011000")
        #expect(space.statistics[.sharedPagesReclaimed] == 6)
        #expect(try space.read(at: b) == 0)
        #expect(try space.read(at: b + 2 * page) == 1)
        #expect(try space.read(at: b + 6 * page) == 1)
        try space.audit()
    }

    /// Kernel: pages 0–5 read, pages 3–4 made read-only (three VMAs): `MADV_PAGEOUT` of all ten
    /// pages takes all six (`0000000000`); of the first three only: `0001110000`.
    @Test(arguments: [10, 3] as [UInt64])
    func splitVMAsOfOneObject(pagedOut: UInt64) throws {
        let space = try kernelLikeSpace()
        try shared(space, at: b)
        try read(space, b, pages: [0, 1, 2, 3, 4, 5])
        try space.protect(address: b + 3 * page, length: 2 * page, protection: .read)
        try pageOut(space, b, pages: pagedOut)
        #expect(space.residencyString(b, pages: 10) == (pagedOut == 10 ? "0000000000" : "0001110000"))
    }

    /// Kernel: pages 0, 1, 3, 4, 5 read and 2 written, then fork. A child that touches nothing
    /// leaves the parent's `MADV_PAGEOUT` free to take the clean pages (`0010000000`). A child
    /// that reads page 9 (fault-around maps 0–5 and 9 in the child), or reads it and then drops
    /// it with `MADV_DONTNEED` or munmap, keeps every page: `1111110001`.
    @Test(arguments: ["none", "read", "dontneed", "munmap"])
    func aForkChildsFaultAroundKeepsTheParentsPages(child action: String) throws {
        let parent = try kernelLikeSpace()
        try shared(parent, at: b)
        try read(parent, b, pages: [0, 1, 3, 4, 5])
        try parent.write(1, at: b + 2 * page)
        let child = try parent.fork()
        if action != "none" { try read(child, b, pages: [9]) }
        if action == "dontneed" { try child.advise(address: b + 9 * page, length: page, advice: .dontNeed) }
        if action == "munmap" { try child.unmap(address: b + 9 * page, length: page) }
        try pageOut(parent, b)
        #expect(parent.residencyString(b, pages: 10) == (action == "none" ? "0010000000" : "1111110001"))
        if action == "read" { #expect(child.statistics[.faultAroundPages] == 6) }
        child.teardown()
        try parent.audit()
    }

    /// Kernel: pages 0, 1, 3 read and 2 written; a duplicate of the mapping (`mremap(a, 0, 10
    /// pages, MAYMOVE)`) reads its page 9: `MADV_PAGEOUT` of the original keeps everything
    /// (`1111000001`), its pages being mapped twice.
    @Test func aDuplicateMappingsFaultAroundKeepsThePages() throws {
        let space = try kernelLikeSpace()
        try shared(space, at: b)
        try read(space, b, pages: [0, 1, 3])
        try space.write(1, at: b + 2 * page)
        let duplicate = try space.remap(address: b, oldLength: 0, newLength: 10 * page, flags: .mayMove, newAddress: 0)
        _ = try space.read(at: duplicate + 9 * page)
        try pageOut(space, b)
        #expect(space.residencyString(b, pages: 10) == "1111000001")
    }
}

/// `MADV_PAGEOUT` after `MADV_FREE` (no swap): the lazily freed pages still clean are discarded.
@Suite struct LazyFreePageOutTests {
    /// Kernel: six private pages written 1…6; `MADV_FREE` of pages 0–3; page 1 written again (9),
    /// page 2 read; fork. `MADV_PAGEOUT` with the child alive: nothing goes (`111111`: the pages
    /// are shared). Once the child is gone: `010011`, and pages 0, 2, 3 read 0, page 1 reads 9,
    /// page 4 reads 5.
    @Test func cleanLazilyFreedPagesAreDiscarded() throws {
        let space = try kernelLikeSpace()
        let b = kernelBase
        try space.map(length: 6 * page, placement: .fixed(b))
        for index in 0..<6 as Range<UInt64> { try space.write(index + 1, at: b + index * page) }
        try space.advise(address: b, length: 4 * page, advice: .free)
        try space.write(9, at: b + page)
        _ = try space.read(at: b + 2 * page)
        let child = try space.fork()
        try space.advise(address: b, length: 6 * page, advice: .pageOut)
        #expect(space.residencyString(b, pages: 6) == "111111")
        child.teardown()
        try space.advise(address: b, length: 6 * page, advice: .pageOut)
        #expect(space.residencyString(b, pages: 6) == "010011")
        #expect(space.statistics[.lazyFreePagesDiscarded] == 3)
        #expect(try [0, 1, 2, 3, 4].map { try space.read(at: b + $0 * page) } == [0, 9, 0, 0, 5])
        try space.audit()
    }

    /// Kernel: four private pages written 7; `MADV_FREE` of all four (page 1 written 9 again in a
    /// second run, none in a third); pages 0–1 made PROT_NONE; `MADV_PAGEOUT` of all four:
    /// `0000` (`0100` with page 1 written again, `1111` without MADV_FREE), and back to
    /// read-write they read 0 0 0 0 (0 9 0 0; 7 7 7 7). A PROT_NONE entry still maps its page,
    /// and page-out discards it when lazily freed and clean. Oracle seed 100: the engine looked
    /// at accessible entries only.
    @Test func lazilyFreedPagesBehindProtNoneAreDiscardedToo() throws {
        for variant in 0..<3 {
            let space = try kernelLikeSpace()
            let b = kernelBase
            try space.map(length: 4 * page, placement: .fixed(b))
            for index in 0..<4 as Range<UInt64> { try space.write(7, at: b + index * page) }
            if variant != 1 { try space.advise(address: b, length: 4 * page, advice: .free) }
            if variant == 2 { try space.write(9, at: b + page) }
            try space.protect(address: b, length: 2 * page, protection: .none)
            try space.advise(address: b, length: 4 * page, advice: .pageOut)
            #expect(space.residencyString(b, pages: 4) == ["0000", "1111", "0100"][variant])
            try space.protect(address: b, length: 2 * page, protection: .readWrite)
            let expected: [UInt64] = [[0, 0, 0, 0], [7, 7, 7, 7], [0, 9, 0, 0]][variant]
            #expect(try (0..<4 as Range<UInt64>).map { try space.read(at: b + $0 * page) } == expected)
            try space.audit()
        }
    }

    /// Kernel: four private pages written 7, pages 0–1 made PROT_NONE, then `MADV_FREE` of all
    /// four (ok, `1111`) and `MADV_PAGEOUT`: `0000`, and back to read-write they read 0 0 0 0.
    /// MADV_FREE makes pages behind PROT_NONE entries lazily freeable too. Oracle seed 1: the
    /// engine skipped them, so page-out kept them.
    @Test func madviseFreeReachesPagesBehindProtNone() throws {
        let space = try kernelLikeSpace()
        let b = kernelBase
        try space.map(length: 4 * page, placement: .fixed(b))
        for index in 0..<4 as Range<UInt64> { try space.write(7, at: b + index * page) }
        try space.protect(address: b, length: 2 * page, protection: .none)
        try space.advise(address: b, length: 4 * page, advice: .free)
        #expect(space.residencyString(b, pages: 4) == "1111")
        try space.advise(address: b, length: 4 * page, advice: .pageOut)
        #expect(space.residencyString(b, pages: 4) == "0000")
        try space.protect(address: b, length: 2 * page, protection: .readWrite)
        #expect(try (0..<4 as Range<UInt64>).map { try space.read(at: b + $0 * page) } == [0, 0, 0, 0])
        try space.audit()
    }
}

extension SharedPageOutTests {
    /// Oracle (Linux 6.18): a populated read-only shared mapping with pages 2–3 made PROT_NONE:
    /// `MADV_PAGEOUT` of all ten pages takes the PROT_NONE ones too (`0000000000`).
    @Test func protNonePagesArePagedOutToo() throws {
        let space = try kernelLikeSpace()
        try space.map(length: 10 * page, protection: .read, placement: .fixed(b), options: [.shared, .populate])
        try space.protect(address: b + 2 * page, length: 2 * page, protection: .none)
        #expect(space.residencyString(b, pages: 10) == "1111111111")
        try pageOut(space, b)
        #expect(space.residencyString(b, pages: 10) == "0000000000")
    }

    /// Reclaim from outside any call (`reclaimUnmappedObjectPage`): Linux drops a clean shmem
    /// page that nothing maps (measured here: pages read, then unmapped by `MADV_DONTNEED`, went
    /// from the cache about a minute later with no call, through the machine's DAMON `pageout`
    /// scheme; written pages and mapped ones stayed). The engine drops exactly those.
    @Test func reclaimTakesOnlyCleanUnmappedPages() throws {
        let space = try kernelLikeSpace()
        try shared(space, at: b)
        try read(space, b, pages: [0, 1])
        try space.write(7, at: b + 2 * page)
        try space.advise(address: b + page, length: 2 * page, advice: .dontNeed)
        #expect(space.residencyString(b, pages: 4) == "1110")
        #expect(try space.reclaimUnmappedObjectPage(at: b) == false)  // still mapped
        #expect(try space.reclaimUnmappedObjectPage(at: b + 2 * page) == false)  // dirty
        #expect(try space.reclaimUnmappedObjectPage(at: b + 3 * page) == false)  // never cached
        #expect(try space.reclaimUnmappedObjectPage(at: b + page) == true)
        #expect(space.residencyString(b, pages: 4) == "1010")
        #expect(space.statistics[.sharedPagesReclaimed] == 1)
        #expect(try space.read(at: b + 2 * page) == 7)
        #expect(throws: MemoryError.invalidArgument) { try space.reclaimUnmappedObjectPage(at: b + 1) }
        try space.map(length: page, placement: .fixed(b + 20 * page))
        #expect(throws: MemoryError.noMemory) { try space.reclaimUnmappedObjectPage(at: b + 20 * page) }
        try space.audit()
    }

    /// A page another space maps stays: reclaim needs every mapping gone.
    @Test func reclaimLeavesAPageAForkMaps() throws {
        let space = try kernelLikeSpace()
        try shared(space, at: b)
        try read(space, b, pages: [0])
        let child = try space.fork()
        _ = try child.read(at: b)
        try space.advise(address: b, length: page, advice: .dontNeed)
        #expect(try space.reclaimUnmappedObjectPage(at: b) == false)
        try child.advise(address: b, length: page, advice: .dontNeed)
        #expect(try space.reclaimUnmappedObjectPage(at: b) == true)
        #expect(child.residencyString(b, pages: 1) == "0")
        try child.teardown()
    }
}
