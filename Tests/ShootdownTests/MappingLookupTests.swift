import Testing

@testable import Shootdown

/// The lock-free `mapping(containing:)` (its inline attempt, the B+tree descent entered at the
/// root's depth) against the writer's view, and the `Mapping` value it returns.
@Suite struct MappingLookupTests {
    static let page = AddressSpace.pageSize

    /// The mapping containing `address` in `mappings` (sorted, disjoint), by binary search.
    static func expected(_ address: UInt64, in mappings: [Mapping]) -> Mapping? {
        var low = 0
        var high = mappings.count
        while low < high {
            let middle = (low + high) / 2
            if mappings[middle].end <= address { low = middle + 1 } else { high = middle }
        }
        guard low < mappings.count, mappings[low].start <= address else { return nil }
        return mappings[low]
    }

    /// Every mapping's edges and middle, the gaps next to them, and the ends of the address range.
    static func checkLookups(_ space: AddressSpace, sourceLocation: SourceLocation = #_sourceLocation) {
        let mappings = space.mappings()
        var addresses: [UInt64] = [0, 1, page, AddressSpace.userLimit - 1, AddressSpace.userLimit, .max - 1, .max]
        for mapping in mappings {
            addresses += [
                mapping.start - 1, mapping.start, mapping.start + (mapping.end - mapping.start) / 2,
                mapping.end - 1, mapping.end,
            ]
        }
        var mismatches = 0
        for address in addresses where space.mapping(containing: address) != expected(address, in: mappings) {
            mismatches += 1
            if mismatches <= 3 {
                Issue.record(
                    "mapping(containing: \(address.hex)) is \(String(describing: space.mapping(containing: address))), expected \(String(describing: expected(address, in: mappings)))",
                    sourceLocation: sourceLocation)
            }
        }
        #expect(mismatches == 0, sourceLocation: sourceLocation)
    }

    /// Index heights 1 to 4 (the descent's entry points), filled in address order and shuffled,
    /// then thinned and split by unmaps and protection changes (removals, merges of nodes,
    /// re-keyed VMAs).
    @Test(arguments: [(1, 1), (12, 1), (40, 2), (300, 3), (3000, 4)])
    func lockFreeLookupAgreesWithTheWriterView(count: Int, height: Int) throws {
        for shuffled in [false, true] {
            let space = try AddressSpace(memory: PhysicalMemory(capacity: 64))
            var random = SplitMix64(seed: UInt64(count) &* 2 &+ (shuffled ? 1 : 0))
            // Gaps of at least a page keep neighbours from merging.
            var planned: [(start: UInt64, length: UInt64)] = []
            var address: UInt64 = 0x1000_0000
            for _ in 0..<count {
                address += Self.page * (1 + random.below(3))
                let length = Self.page * (1 + random.below(4))
                planned.append((address, length))
                address += length
            }
            if shuffled { planned.shuffle(using: &random) }
            for (start, length) in planned { try space.map(length: length, placement: .fixed(start)) }
            #expect(space.mappingCount == count)
            if !shuffled { #expect(space.index.height == height) }
            Self.checkLookups(space)

            for (start, length) in planned where random.below(3) == 0 {
                if length > Self.page && random.below(2) == 0 {
                    try space.protect(address: start + Self.page, length: Self.page, protection: .read)
                } else {
                    try space.unmap(address: start, length: Self.page)
                }
            }
            Self.checkLookups(space)
        }
    }

    /// The out-of-line descent for trees above level 4 finds the same leaf key as the inline one.
    @Test func deepDescentFindsTheSameLeafKey() throws {
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 64))
        for index in 0..<300 {
            try space.map(length: Self.page, placement: .fixed(0x1000_0000 + UInt64(index) * 2 * Self.page))
        }
        #expect(space.index.height == 3)
        let addresses = [0, 0x0fff_ffff] + (0..<700).map { 0x1000_0000 + UInt64($0) * Self.page + 8 }
        RCU.withReadSection {
            let rootBits = space.index.publishedRootBits
            let root = IndexNode(root: rootBits)
            for address in addresses {
                #expect(root.leafKey(belowMaximum: address) == root.deepLeafKey(belowMaximum: address))
            }
        }
    }

    /// A file mapping's path and offset (the out-of-line attempt) next to anonymous memory.
    @Test func fileMappingKeepsItsPathAndOffset() throws {
        let memory = PhysicalMemory(capacity: 64)
        let space = try AddressSpace(memory: memory)
        let file = FileObject(path: "/data/file", memory: memory)
        let fileStart = try space.map(file: file, offset: 3 * Self.page, length: 2 * Self.page)
        let anonymous = try space.map(length: Self.page)
        let found = try #require(space.mapping(containing: fileStart + Self.page))
        #expect(found.path == "/data/file")
        #expect(found.offset == 3 * Self.page)
        #expect(found == space.mappings().first { $0.start == fileStart })
        #expect(!found.vmFlags.contains(.fileBacked))
        let plain = try #require(space.mapping(containing: anonymous))
        #expect(plain.path == nil)
        #expect(plain.offset == 0)
        Self.checkLookups(space)
    }

    /// `path` and `offset` behave as two independent stored properties.
    @Test func pathAndOffsetAreIndependent() {
        var mapping = Mapping(start: 0x1000, end: 0x3000, protection: .read, flags: [])
        #expect(mapping.path == nil)
        #expect(mapping.offset == 0)
        mapping.offset = 0x5000
        #expect(mapping.path == nil)
        #expect(mapping.offset == 0x5000)
        mapping.path = "/a"
        #expect(mapping.path == "/a")
        #expect(mapping.offset == 0x5000)
        mapping.offset = 0x2000
        #expect(mapping.path == "/a")
        var other = mapping
        other.path = nil
        #expect(other.offset == 0x2000)
        #expect(other != mapping)
        other.path = "/a"
        #expect(other == mapping)
        #expect(Set([mapping, other]).count == 1)
        other.path = "/b"
        #expect(other != mapping)
        #expect(mapping.description == "1000-3000 r--p 00002000 /a")
        mapping.protection = .readWrite
        #expect(mapping.vmFlags.contains(.write))
        // Seven words, as with a stored `String?` path: the enum's tag shares a word with the
        // protection.
        #expect(MemoryLayout<Mapping>.size == 56)
        #expect(MemoryLayout<Mapping?>.size == 56)
    }

    /// The literal the inline attempt tests is ``VMFlags/fileBacked`` in the attribute word.
    @Test func fileBackedAttributeIsTheFlagsBit() {
        #expect(Mapping.fileBackedAttribute == VMA.pack([], .fileBacked))
    }
}

