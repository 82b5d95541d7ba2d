import Synchronization
import Testing

@testable import Shootdown

/// `mapping(containing:)` without the mmap lock while a writer splits and merges the VMAs it
/// reads: every result must be one state the writer left (a consistent snapshot), never a mix of
/// two (bounds of one, protection or offset of another).
@Suite("ConcurrentMappingLookup") struct ConcurrentMappingLookupTests {
    static let page = AddressSpace.pageSize

    @Test func lookupsSeeWholeStatesWhileAWriterSplitsAndMerges() throws {
        let memory = PhysicalMemory(capacity: 256)
        let space = try AddressSpace(memory: memory)
        // Neighbours enough for a three-level index, so splits and merges copy inner nodes too.
        for index in 0..<300 {
            try space.map(length: Self.page, placement: .fixed(0x2000_0000 + UInt64(index) * 2 * Self.page))
        }
        let anonymous = try space.map(length: 4 * Self.page, placement: .fixed(0x1000_0000))
        let file = FileObject(path: "/data/file", memory: memory)
        let fileStart = try space.map(file: file, offset: 0, length: 4 * Self.page, placement: .fixed(0x1800_0000))
        #expect(space.index.height == 3)

        let iterations = ConcurrentHarness.iterations(20_000, minimum: 200)
        let readers = 2
        let readersLeft = ConcurrentCountdown(readers)
        let violations = ConcurrentViolations()
        let splits = Atomic<Int>(0)

        // Legal results for an address in the middle page: the whole VMA, or the middle page
        // split off with its own protection (and, for the file, its own offset).
        let whole = (anonymous, anonymous + 4 * Self.page)
        let middle = (anonymous + Self.page, anonymous + 2 * Self.page)
        let fileWhole = (fileStart, fileStart + 4 * Self.page)
        let fileMiddle = (fileStart + Self.page, fileStart + 2 * Self.page)

        let reader: @Sendable (Int) -> Void = { index in
            defer { readersLeft.arrive() }
            for _ in 0..<iterations {
                if let found = space.mapping(containing: anonymous + Self.page + 8) {
                    let bounds = (found.start, found.end)
                    let legal = (bounds == whole && found.protection == .readWrite)
                        || (bounds == middle && found.protection == .read)
                    if !legal || found.path != nil || found.offset != 0 {
                        violations.record("anonymous: \(found)")
                    }
                } else {
                    violations.record("anonymous: no mapping")
                }
                if let found = space.mapping(containing: fileStart + Self.page + 8) {
                    let bounds = (found.start, found.end)
                    let legal = (bounds == fileWhole && found.protection == .read && found.offset == 0)
                        || (bounds == fileMiddle && found.protection == .none && found.offset == Self.page)
                    if !legal || found.path != "/data/file" { violations.record("file: \(found)") }
                } else {
                    violations.record("file: no mapping")
                }
            }
        }
        let writer: @Sendable () -> Void = {
            var operations = 0
            while !readersLeft.isDone && operations < 1_000_000 {
                operations += 1
                do {
                    try space.protect(address: anonymous + Self.page, length: Self.page, protection: .read)
                    try space.protect(address: fileStart + Self.page, length: Self.page, protection: .none)
                    try space.protect(address: anonymous + Self.page, length: Self.page, protection: .readWrite)
                    try space.protect(address: fileStart + Self.page, length: Self.page, protection: .read)
                } catch {
                    violations.record("mprotect threw \(error)")
                    return
                }
                splits.add(1, ordering: .relaxed)
            }
        }
        let bodies: [@Sendable () -> Void] = (0..<readers).map { index in { @Sendable in reader(index) } } + [writer]
        guard ConcurrentHarness.run("mapping-lookup", bodies) else {
            return
        }
        ConcurrentHarness.report("mapping-lookup: \(splits.load(ordering: .relaxed)) split-merge rounds")
        violations.expectNone("mapping(containing:) during splits and merges")
        // Merged back: one VMA each, as before.
        #expect(space.mapping(containing: anonymous + Self.page).map { ($0.start, $0.end) } ?? (0, 0) == whole)
        #expect(space.mapping(containing: fileStart + Self.page).map { ($0.start, $0.end) } ?? (0, 0) == fileWhole)
        MappingLookupTests.checkLookups(space)
    }
}
