import Shootdown

/// A deliberately simple second opinion on an ``AddressSpace``: the oracle for what the live
/// kernel cannot show (page-table entries, soft-dirty and writability per page, content tokens,
/// frame and swap accounting, mirror populates). The differential test and the `ops` fuzz target
/// apply every operation to a space and to a model and compare them (``ReferenceOperation``,
/// ``ReferenceComparison``); the live-kernel oracle (``Oracle``) checks the model's rules against
/// Linux where Linux can be observed.
///
/// It keeps a sorted array of areas (VMAs) and a dictionary from page address to page state, and
/// implements the operations of the library with the semantics and error codes that the
/// library's doc comments state, which follow what the kernel does (partial effects before holes
/// in mprotect and madvise, `anon_vma` identity and page offsets deciding merges, `VM_ACCOUNT`, ...).
/// Everything is done the slow, obvious way: linear scans, whole-array rewrites, a global merge
/// pass after every structural change.
///
/// Not modelled: huge mappings (the tests never let an area cover a whole 2 MiB block with huge
/// pages allowed), fork (so private frames are always exclusive), frame exhaustion (the tests use
/// enough frames and swap), accessed/dirty bits.
public final class ReferenceModel {
    /// One VMA. Shared areas name their backing object and the object page at `start`.
    public struct Area: Equatable, CustomStringConvertible {
        public var start: UInt64
        public var end: UInt64
        public var protection: Protection
        public var flags: MappingFlags
        public var object: Int?
        /// `vm_pgoff`: the object page at `start` for shared areas; for private ones the start
        /// page at mmap, kept by splits and by moves of areas with anonymous pages.
        public var objectPage: UInt64
        /// The `anon_vma` identity (0: none).
        public var anon: UInt64 = 0

        public init(
            start: UInt64, end: UInt64, protection: Protection, flags: MappingFlags, object: Int?, objectPage: UInt64,
            anon: UInt64 = 0
        ) {
            self.start = start
            self.end = end
            self.protection = protection
            self.flags = flags
            self.object = object
            self.objectPage = objectPage
            self.anon = anon
        }

        public var isShared: Bool { object != nil }

        public var description: String {
            "[\(start.hex)-\(end.hex) \(protection)\(isShared ? "s" : "p") flags:\(flags.rawValue)"
                + (object.map { " obj\($0)@\(objectPage)" } ?? "") + "]"
        }
    }

    /// What a page holds.
    public enum Content: Equatable {
        /// The shared zero page (reads as token 0, never writable).
        case zeroPage
        /// A private page with its content token.
        case anonymous(UInt64)
        /// Page `page` of shared object `object`; the token lives in the object.
        case shared(object: Int, page: UInt64)
    }

    /// Where the page-table entry stands.
    public enum Residence: Equatable {
        /// A present entry.
        case mapped
        /// A PROT_NONE entry: the frame stays, access is denied.
        case protNone
        /// A swap entry (private pages only).
        case swapped
    }

    /// A page that has a page-table entry. Pages without an entry are absent from ``pages``.
    /// Equality compares what an entry shows (``lazyFree`` is the frame's state, not the entry's).
    public struct Page: Equatable {
        public var content: Content
        public var residence: Residence
        public var writable: Bool
        public var softDirty: Bool
        /// `MADV_FREE` made the page lazily freeable and nothing wrote it since: page-out
        /// discards it.
        public var lazyFree = false
        /// Nonzero: the page stayed mlocked when its area lost its lock without unlocking it
        /// (DONTUNMAP), one more than its lock count (the library's `PhysicalMemory` lock marks).
        public var lockMark: UInt8 = 0

        public static func == (a: Page, b: Page) -> Bool {
            a.content == b.content && a.residence == b.residence && a.writable == b.writable && a.softDirty == b.softDirty
        }

        public init(content: Content, residence: Residence, writable: Bool, softDirty: Bool) {
            self.content = content
            self.residence = residence
            self.writable = writable
            self.softDirty = softDirty
        }
    }

    public static let pageSize: UInt64 = 4096
    public static let limit: UInt64 = AddressSpace.userLimit

    public let configuration: AddressSpace.Configuration
    public var areas: [Area] = []
    /// Boundaries between two compatible areas that a failed munmap split (``checkNotSealed(_:_:)``),
    /// with the two areas as they were: kept apart by ``mergeAll()`` until either changes.
    public var keptApart: [UInt64: (lower: Area, upper: Area)] = [:]
    /// `locked_vm` pages a DONTUNMAP move of a locked area left charged (the library's
    /// `leakedLockedPages`).
    public var leakedLockedPages: UInt64 = 0
    public var pages: [UInt64: Page] = [:]
    public var dead = false
    /// Content tokens of shared objects' pages (a page never written reads 0).
    public var sharedTokens: [Int: [UInt64: UInt64]] = [:]
    public var nextObject = 1
    /// Each shared object's size in pages (the length it was mapped with): pages at or past it
    /// are `SIGBUS`.
    public var objectPageLimits: [Int: UInt64] = [:]
    public var nextAnon: UInt64 = 2
    /// Pages of shared objects in their page cache (faulted in through any mapping).
    public var sharedResident: [Int: Set<UInt64>] = [:]
    /// Pages of shared objects written (or write-faulted) since they entered the cache: reclaim
    /// keeps them (no swap for shmem).
    public var sharedDirty: [Int: Set<UInt64>] = [:]
    /// Lock marks of shared object pages (see ``Page/lockMark``).
    public var sharedLockMarks: [Int: [UInt64: UInt8]] = [:]
    /// `mm->def_flags` after `mlockall(MCL_FUTURE)`.
    public var defaultFlags: MappingFlags = []
    /// The program break (`start_brk` is `configuration.programBreakStart`).
    public var programBreak: UInt64 = 0

    public init(configuration: AddressSpace.Configuration) {
        self.configuration = configuration
        programBreak = configuration.programBreakStart ?? 0
    }

    // MARK: - Small helpers

    public var limit: UInt64 { Self.limit }

    public func isAligned(_ value: UInt64) -> Bool { value % Self.pageSize == 0 }

    /// `length` rounded up to whole pages, or `nil` if that overflows.
    public func roundUp(_ length: UInt64) -> UInt64? {
        let (sum, overflow) = length.addingReportingOverflow(Self.pageSize - 1)
        return overflow ? nil : sum / Self.pageSize * Self.pageSize
    }

    public func pageOf(_ address: UInt64) -> UInt64 { address / Self.pageSize * Self.pageSize }

    public func index(containing address: UInt64) -> Int? {
        areas.firstIndex { $0.start <= address && address < $0.end }
    }

    public func area(containing address: UInt64) -> Area? { index(containing: address).map { areas[$0] } }

    public func overlapping(_ start: UInt64, _ end: UInt64) -> [Area] {
        areas.filter { $0.start < end && start < $0.end }
    }

    /// Whether `[start, end)` is covered by areas without a hole.
    public func isCovered(_ start: UInt64, _ end: UInt64) -> Bool {
        var covered = start
        for area in areas where area.end > covered && area.start < end {
            if area.start > covered { return false }
            covered = area.end
        }
        return covered >= end
    }

    /// Splits an unmap of `[start, end)` needs beyond the ones that shrink: one when a single area
    /// sticks out on both sides (the library's rule).
    public func unmapSplits(_ start: UInt64, _ end: UInt64) -> Int {
        guard let area = area(containing: start) else { return 0 }
        return area.start < start && area.end > end ? 1 : 0
    }

    /// Splits needed so that `[start, end)` is made of whole areas.
    /// Whether `splits` more areas would pass the map-count limit (checked only when splitting).
    public func exceeds(_ splits: Int) -> Bool {
        splits > 0 && areas.count + splits > configuration.maxMapCount
    }

    public func isolateSplits(_ start: UInt64, _ end: UInt64, where changes: (Area) -> Bool = { _ in true }) -> Int {
        let inside = overlapping(start, end)
        guard let first = inside.first, let last = inside.last else { return 0 }
        return (first.start < start && changes(first) ? 1 : 0) + (last.end > end && changes(last) ? 1 : 0)
    }

    /// Splits the area strictly containing `address`, if any.
    public func split(at address: UInt64) {
        guard let i = index(containing: address), areas[i].start < address else { return }
        var lower = areas[i]
        var upper = areas[i]
        lower.end = address
        upper.start = address
        upper.objectPage += (address - lower.start) / Self.pageSize
        areas[i] = lower
        areas.insert(upper, at: i + 1)
    }

    /// Splits at both ends of `[start, end)` and returns the indices of the areas inside.
    public func isolate(_ start: UInt64, _ end: UInt64) -> [Int] {
        split(at: start)
        split(at: end)
        return areas.indices.filter { areas[$0].start >= start && areas[$0].end <= end }
    }

    /// Removes every area (or part of one) and every page in `[start, end)`.
    public func removeRange(_ start: UInt64, _ end: UInt64) {
        split(at: start)
        split(at: end)
        areas.removeAll { $0.start >= start && $0.end <= end }
        dropPages(start, end)
    }

    public func dropPages(_ start: UInt64, _ end: UInt64) {
        for address in pages.keys where address >= start && address < end {
            pages[address] = nil
        }
    }

    public func insert(_ area: Area) {
        let position = areas.firstIndex { $0.start >= area.end } ?? areas.count
        areas.insert(area, at: position)
    }

    /// Whether `upper` may be merged into `lower` (ignoring soft-dirty; offsets contiguous; one
    /// `anon_vma` or none).
    public func canMerge(_ lower: Area, _ upper: Area) -> Bool {
        lower.end == upper.start && lower.protection == upper.protection
            && lower.flags.subtracting(.softDirty) == upper.flags.subtracting(.softDirty)
            && lower.object == upper.object
            && lower.objectPage + (lower.end - lower.start) / Self.pageSize == upper.objectPage
            && (lower.anon == upper.anon || lower.anon == 0 || upper.anon == 0)
    }

    /// Whether the split at `boundary` still separates the two areas it made, unchanged.
    public func isKeptApart(_ boundary: UInt64) -> Bool {
        guard let pair = keptApart[boundary] else { return false }
        let lower = areas.first { $0.end == boundary }
        let upper = areas.first { $0.start == boundary }
        return lower.map { Self.shape($0, at: boundary) } == Self.shape(pair.lower, at: boundary)
            && upper.map { Self.shape($0, at: boundary) } == Self.shape(pair.upper, at: boundary)
    }

    /// Compatible neighbours the model keeps apart (the library's audit counts them as unmerged).
    public var keptApartCount: Int { keptApart.keys.count { isKeptApart($0) } }

    /// What decides whether an area beside a kept-apart `boundary` changed: its attributes and
    /// its object page at the boundary, not its other end (a merge there, with a VMA an operation
    /// changed, does not make the library or Linux look at this boundary), nor the soft-dirty bit
    /// or the `anon_vma`, which faults and soft-dirty clearing change without looking at merges.
    static func shape(_ area: Area, at boundary: UInt64) -> [UInt64] {
        let pageAtBoundary = area.end == boundary ? area.objectPage + (area.end - area.start) / pageSize : area.objectPage
        return [UInt64(area.protection.rawValue), area.flags.subtracting(.softDirty).rawValue,
                UInt64(bitPattern: Int64(area.object ?? -1)), pageAtBoundary]
    }

    /// Merges every pair of compatible neighbours; the merged area is soft-dirty if either was.
    public func mergeAll() {
        // A failed munmap's split stays until an operation changes either half (only a change
        // makes Linux and the library look at merging them).
        for boundary in keptApart.keys where !isKeptApart(boundary) { keptApart[boundary] = nil }
        var merged: [Area] = []
        for area in areas {
            if let last = merged.last, keptApart[area.start] == nil, canMerge(last, area) {
                merged[merged.count - 1].end = area.end
                if area.flags.contains(.softDirty) { merged[merged.count - 1].flags.insert(.softDirty) }
                if last.anon == 0 { merged[merged.count - 1].anon = area.anon }
            } else {
                merged.append(area)
            }
        }
        areas = merged
    }

    static func allows(_ protection: Protection, _ access: AddressSpace.Access) -> Bool {
        access == .write ? protection.contains(.write) : !protection.isEmpty
    }

    /// The content token a page reads.
    public func token(of page: Page) -> UInt64 {
        switch page.content {
        case .zeroPage: 0
        case .anonymous(let token): token
        case .shared(let object, let objectPage): sharedTokens[object]?[objectPage] ?? 0
        }
    }

    /// Pages mapped by areas (for bounding tests).
    public var mappedPages: UInt64 { areas.reduce(0) { $0 + ($1.end - $1.start) / Self.pageSize } }

    /// The areas as the library reports them.
    public func mappings() -> [Mapping] {
        areas.map { Mapping(start: $0.start, end: $0.end, protection: $0.protection, flags: $0.flags) }
    }

    // MARK: - Placement

    /// The highest gap below the mmap base that fits, else the lowest one above it.
    public func freeArea(length: UInt64) throws(MemoryError) -> UInt64 {
        guard length <= limit else { throw .noMemory }
        let low = configuration.mmapMinAddress
        let high = configuration.mmapBase
        var gaps: [(start: UInt64, end: UInt64)] = []
        var cursor = low
        for area in areas where area.end > low && area.start < high {
            if area.start > cursor { gaps.append((cursor, area.start)) }
            cursor = max(cursor, area.end)
        }
        if cursor < high { gaps.append((cursor, high)) }
        for gap in gaps.reversed() where gap.end - gap.start >= length {
            return gap.end - length
        }
        var candidate = high
        for area in areas where area.end > high {
            if candidate > limit - length { break }
            if area.start >= candidate + length { return candidate }
            candidate = max(candidate, area.end)
        }
        if candidate <= limit - length { return candidate }
        throw .noMemory
    }
}
