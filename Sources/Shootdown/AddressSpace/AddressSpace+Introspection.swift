import Synchronization

/// One VMA as seen from outside (a line of `/proc/PID/maps` plus its smaps `VmFlags`).
public struct Mapping: Hashable, Sendable, CustomStringConvertible {
    /// First address of the mapping.
    public var start: UInt64
    /// End of the mapping (exclusive).
    public var end: UInt64
    /// The VMA's flags, including `rd wr ex` mirroring ``protection``.
    public var vmFlags: VMFlags
    /// ``path`` and ``offset``. An enum with a payload in both cases, so destroying a mapping
    /// tests the case and releases the path only for a file mapping: an anonymous mapping (the
    /// common case) is created, copied and destroyed without any retain or release. (A stored
    /// `String?` is released unconditionally, a call into the runtime even when `nil`.)
    @usableFromInline var backing: Backing
    /// The access bits (`PROT_READ`, `PROT_WRITE`, `PROT_EXEC`). Stored after `backing`, so it
    /// fills the space after that enum's tag byte (56 bytes in all, as with `String?`).
    public var protection: Protection {
        didSet { vmFlags = vmFlags.with(protection) }
    }

    /// What a mapping maps: anonymous memory, or a file's pages from a byte offset.
    @usableFromInline
    enum Backing: Hashable, Sendable {
        /// No file (``Mapping/offset`` is kept as set; 0 as the engine reports it).
        case anonymous(offset: UInt64)
        case file(path: String, offset: UInt64)
    }

    /// The path of the file a file mapping maps (its ``FileObject/path``); `nil` for anonymous
    /// memory.
    public var path: String? {
        get {
            if case .file(let path, _) = backing { return path }
            return nil
        }
        set {
            let offset = self.offset
            backing = newValue.map { .file(path: $0, offset: offset) } ?? .anonymous(offset: offset)
        }
    }

    /// The file offset of ``start`` in bytes (the offset column of `/proc/PID/maps`); 0 for
    /// anonymous memory, as Linux prints it.
    public var offset: UInt64 {
        get {
            switch backing {
            case .anonymous(let offset), .file(_, let offset): return offset
            }
        }
        set {
            switch backing {
            case .anonymous: backing = .anonymous(offset: newValue)
            case .file(let path, _): backing = .file(path: path, offset: newValue)
            }
        }
    }

    /// The flags (``vmFlags``; the former name).
    public var flags: VMFlags {
        get { vmFlags }
        set { vmFlags = newValue.with(protection) }
    }

    /// A mapping with these fields.
    ///
    /// - Parameters:
    ///   - start: the first address.
    ///   - end: the end address (exclusive).
    ///   - protection: the access bits (others are dropped).
    ///   - flags: the VMA's flags; the access bits are taken from `protection`.
    public init(start: UInt64, end: UInt64, protection: Protection, flags: VMFlags) {
        self.start = start
        self.end = end
        vmFlags = flags.with(protection.access)
        backing = .anonymous(offset: 0)
        self.protection = protection.access
    }

    /// Fields as they are (`vmFlags` already carrying `protection`'s access bits).
    @inlinable
    init(start: UInt64, end: UInt64, access protection: Protection, vmFlags: VMFlags, backing: Backing = .anonymous(offset: 0)) {
        self.start = start
        self.end = end
        self.vmFlags = vmFlags
        self.backing = backing
        self.protection = protection
    }

    /// The `VmFlags:` field of `/proc/PID/smaps` for this VMA, exactly as this kernel prints it
    /// (two-letter names in its order, each followed by a space), e.g. `"rd wr mr mw me ac "`.
    public var smapsFlags: String { vmFlags.smapsLetters }

    /// A `/proc/self/maps` line: `start-end perms`, `p` or `s` (`VM_MAYSHARE`), then for a file
    /// mapping its offset (8 hex digits at least) and path.
    /// An anonymous mapping from a VMA's bounds and attribute word (``VMA/attributeWord``: the
    /// access bits in the low byte, the other flags above).
    @inlinable
    init(start: UInt64, end: UInt64, attributes: UInt64) {
        self.init(
            start: start, end: end, access: Protection(rawValue: UInt32(truncatingIfNeeded: attributes & 7)),
            vmFlags: VMFlags(rawValue: ((attributes & ~Self.fileBackedAttribute) >> 8) | (attributes & 7)))
    }

    /// ``VMFlags/fileBacked`` as it sits in a VMA's attribute word (flags shifted up a byte), as a
    /// literal: a `static let` read from code inlined into another module goes through its
    /// lazy-initialisation accessor, a call on every lookup.
    @inlinable
    static var fileBackedAttribute: UInt64 {
        checkInvariant(1 << 48 == VMA.pack([], .fileBacked), "VMFlags.fileBacked moved")
        return 1 << 48
    }

    public var description: String {
        let line = String(start, radix: 16) + "-" + String(end, radix: 16) + " " + protection.description
            + (vmFlags.contains(.mayShare) ? "s" : "p")
        guard let path else { return line }
        let hex = String(offset, radix: 16)
        return line + " " + String(repeating: "0", count: max(0, 8 - hex.count)) + hex + " " + path
    }
}

extension VMA {
    /// The VMA's public description. Fields are read relaxed: hold the mmap lock, or validate
    /// with `sequence` (as ``AddressSpace/mapping(containing:)`` does).
    @inlinable
    var mapping: Mapping {
        // One load of the attribute word: protection in the low byte (its access bits), flags above.
        let attributes = attributeWord.load(ordering: .relaxed)
        var mapping = Mapping(start: start, end: end, attributes: attributes)
        // Only a file mapping has a path: anonymous memory (the common case) never touches the
        // object reference (no retain or release), the flag in the word just loaded tells.
        if attributes & Mapping.fileBackedAttribute != 0, let path = sharedObject?.path {
            mapping.backing = .file(path: path, offset: pageOffset &* PageTable.pageSize)
        }
        return mapping
    }
}

extension AddressSpace {
    /// The VMAs in address order.
    public func mappings() -> [Mapping] {
        mmapLock.withReadLock {
            index.all.map(\.mapping)
        }
    }

    /// `/proc/self/maps`-style lines.
    public func mapsText() -> [String] { mappings().map(\.description) }

    /// Number of VMAs.
    public var mappingCount: Int { mmapLock.withReadLock { index.count } }

    /// The page-table entry translating `address` (4 KiB view: a huge mapping is reported as the
    /// entry for the 4 KiB page inside it), or `nil` when no entry exists (always after
    /// ``teardown()``). Lock-free.
    @inlinable
    public func translate(_ address: UInt64) -> PageTableEntry? {
        guard address < Self.userLimit else { return nil }
        return RCU.withReadSection {
            // After teardown the tables are retired and freed after a grace period: checked inside
            // the read section, a `false` here keeps them alive until the section ends.
            guard !dead.load(ordering: .relaxed), let leaf = pageTable.lookup(address), !leaf.entry.isNone else {
                return nil
            }
            if leaf.isHuge {
                let offset = (address & (PageTable.hugePageSize &- 1)) >> 12
                return leaf.entry.with(number: leaf.entry.number &+ offset)
            }
            return leaf.entry
        }
    }

    /// A snapshot of the counters.
    public var statistics: SpaceStatistics {
        var values = SpaceCounter.allCases.map { counters.sum($0.rawValue) }
        addTLBCounters(to: &values)
        return SpaceStatistics(values: values)
    }

    /// Times a thread waited for the mmap lock.
    public var mmapLockContentions: UInt64 { mmapLock.contended.load(ordering: .relaxed) }

    /// A consistency audit of the whole space, for tests and the torture command.
    public struct Audit: Sendable, Equatable {
        /// Tables reachable from the root.
        public var tables = 0
        /// Reachable tables that were freed or retired: must be 0.
        public var deadTablesReached = 0
        /// Page tables (below the root) covering no VMA at all: must be 0. Unmapping frees the
        /// tables of the hole it makes (`free_pgtables`), so a table here was installed where
        /// nothing is mapped, and would block huge mappings or be overwritten by a move.
        public var tablesInHoles = 0
        /// Present 4 KiB entries (huge mappings count 512).
        public var presentPages = 0
        /// Swap entries (pages evicted to ``PhysicalMemory/swap``).
        public var swapEntries = 0
        /// 2 MiB mappings.
        public var hugeMappings = 0
        /// Entries outside every VMA: must be 0.
        public var entriesOutsideVMAs = 0
        /// Writable entries in VMAs without write permission, or accessible entries in PROT_NONE
        /// VMAs: must be 0.
        public var entriesExceedingProtection = 0
        /// VMAs in the index.
        public var vmas = 0
        /// Adjacent VMAs that could merge but were not: 0, except where Linux keeps such a pair
        /// apart too: a munmap (or `MAP_FIXED`, or mremap target) failing on a sealed VMA leaves the
        /// split it made first, a fork's child keeps the parent's VMAs as they were, and a locked
        /// VMA moved with `MREMAP_DONTUNMAP` stays apart from its neighbour. A grows-down VMA above
        /// its neighbour is never counted (stack expansion up to a neighbour never merges).
        public var unmergedNeighbours = 0
    }

    /// Walks every VMA and page-table entry and checks the invariants the engine promises.
    public func audit() -> Audit {
        mmapLock.withReadLock {
            var result = Audit()
            if dead.load(ordering: .relaxed) { return result }  // no VMAs, and the tables are retired
            let vmas = index.all
            result.vmas = vmas.count
            // A grows-down VMA that expanded until it touched the VMA below stays separate, as in
            // Linux (stack expansion never merges): such pairs are not counted.
            for (lower, upper) in zip(vmas, vmas.dropFirst())
            where lower.canMerge(with: upper) && !upper.flags.contains(.growsDown) {
                result.unmergedNeighbours += 1
            }
            var cursor = 0
            let tables = pageTable.forEachLeaf(table: { start, end in
                // The first VMA ending after `start` is the only candidate to intersect.
                var low = 0
                var high = vmas.count
                while low < high {
                    let middle = (low + high) / 2
                    if vmas[middle].end <= start { low = middle + 1 } else { high = middle }
                }
                if low == vmas.count || vmas[low].start >= end { result.tablesInHoles += 1 }
            }) { address, entry, huge in
                while cursor < vmas.count && vmas[cursor].end <= address { cursor += 1 }
                let size = huge ? PageTable.hugePageSize : PageTable.pageSize
                let inside = cursor < vmas.count && vmas[cursor].start <= address && address + size <= vmas[cursor].end
                if !inside {
                    result.entriesOutsideVMAs += 1
                } else {
                    let protection = vmas[cursor].protection
                    if (entry.isWritable && !protection.contains(.write))
                        || (entry.isPresent && protection.isEmpty)
                    {
                        result.entriesExceedingProtection += 1
                    }
                }
                if entry.isSwap { result.swapEntries += 1 }
                if entry.isPresent { result.presentPages += huge ? 512 : 1 }
                if huge { result.hugeMappings += 1 }
            }
            result.tables = tables.tables
            result.deadTablesReached = tables.deadTablesReached
            return result
        }
    }
}
