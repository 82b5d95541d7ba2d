import Synchronization

extension AddressSpace {
    /// Where a new mapping goes.
    public enum Placement: Sendable, Hashable {
        /// Anywhere: searched top-down from the mmap base, like Linux.
        case anywhere
        /// At `address` if that range is free and valid, else as ``anywhere``.
        case hint(UInt64)
        /// Exactly at `address`, replacing what is there (`MAP_FIXED`).
        case fixed(UInt64)
        /// Exactly at `address`, failing with `EEXIST` if anything is there (`MAP_FIXED_NOREPLACE`).
        case fixedNoReplace(UInt64)
    }

    /// Options of a new mapping.
    public struct MapOptions: OptionSet, Hashable, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }

        /// `MAP_SHARED`: shared with forks, never copied on write.
        public static let shared = MapOptions(rawValue: 1 << 0)
        /// Allow 2 MiB mappings (as if `madvise(MADV_HUGEPAGE)` followed).
        public static let hugePage = MapOptions(rawValue: 1 << 1)
        /// `MAP_LOCKED`: populated like ``populate`` (mlock), never paged out or reaped.
        public static let locked = MapOptions(rawValue: 1 << 2)
        /// `MAP_POPULATE`: fault every page in before returning. Best effort, as in Linux
        /// (`mm_populate` ignores errors): nothing is populated under `PROT_NONE`, and running out
        /// of frames leaves the rest unpopulated without failing the (already made) mapping.
        public static let populate = MapOptions(rawValue: 1 << 3)
    }

    /// Maps `length` bytes of anonymous memory (`mmap(MAP_ANONYMOUS)`).
    ///
    /// Linux rules: zero length is `EINVAL`; the length is rounded up to pages (`ENOMEM` if that
    /// overflows or exceeds the address space); a fixed address must be page-aligned (`EINVAL`),
    /// lie in `[mmapMinAddress, userLimit - length]` (`EPERM` is reported as `invalidArgument`,
    /// the range check as `ENOMEM`); `fixedNoReplace` over a mapping is `EEXIST`; more than
    /// `maxMapCount` VMAs is `ENOMEM`. A private mapping merges with compatible neighbours.
    ///
    /// - Returns: the start address of the mapping.
    @discardableResult
    public func map(
        length: UInt64, protection: Protection = .readWrite, placement: Placement = .anywhere,
        options: MapOptions = []
    ) throws(MemoryError) -> UInt64 {
        guard length != 0 else { throw .invalidArgument }
        guard let length = Self.pageAlign(length), length != 0 else { throw .noMemory }
        guard length <= Self.userLimit else { throw .noMemory }
        let address: UInt64 = try mmapLock.withWriteLock { () throws(MemoryError) -> UInt64 in
            try checkAlive()
            if index.count > configuration.maxMapCount { throw .noMemory }
            let address = try placementAddress(length: length, placement: placement)
            let end = address + length
            if case .fixed = placement { try checkUnmapBudget(address, end) }
            let edit = VMAEdit(self)
            if case .fixed = placement { unmapLocked(address, end, edit: edit) }
            var flags: MappingFlags = [.softDirty]
            if options.contains(.shared) { flags.insert(.shared) }
            if options.contains(.hugePage) { flags.insert(.hugePage) }
            if options.contains(.locked) { flags.insert(.locked) }
            let vma = VMA(
                start: address, end: end, protection: protection, flags: flags,
                sharedObject: options.contains(.shared) ? SharedMemoryObject(memory: memory) : nil)
            edit.insert(vma)
            edit.mergeNeighbours(vma)
            edit.finish()
            return address
        }
        if options.contains(.populate) || options.contains(.locked), !protection.isEmpty {
            // The mapping exists now: a populate failure must not turn it into a failed call.
            try? populate(address, length: length, write: protection.contains(.write))
        }
        return address
    }

    /// Faults in `[address, address + length)` (`MAP_POPULATE`, `MADV_POPULATE_*`).
    func populate(_ address: UInt64, length: UInt64, write: Bool) throws(MemoryError) {
        var page = address
        while page < address + length {
            try fault(at: page, access: write ? .write : .read)
            page += Self.pageSize
        }
    }

    /// Chooses the address of a new mapping of `length` bytes (`get_unmapped_area`).
    private func placementAddress(length: UInt64, placement: Placement) throws(MemoryError) -> UInt64 {
        switch placement {
        case .fixed(let address), .fixedNoReplace(let address):
            guard Self.isPageAligned(address) else { throw .invalidArgument }
            guard address <= Self.userLimit - length else { throw .noMemory }
            guard address >= configuration.mmapMinAddress else { throw .invalidArgument }
            if case .fixedNoReplace = placement, !index.intersecting(address, address + length).isEmpty {
                throw .alreadyExists
            }
            return address
        case .hint(let hint):
            if let aligned = Self.pageAlign(hint), aligned != 0, aligned >= configuration.mmapMinAddress,
                aligned <= Self.userLimit - length, index.intersecting(aligned, aligned + length).isEmpty
            {
                return aligned
            }
            return try findFreeArea(length: length)
        case .anywhere:
            return try findFreeArea(length: length)
        }
    }

    /// Top-down search for the highest free range below the mmap base, then bottom-up above it
    /// (`arch_get_unmapped_area_topdown` and its fallback).
    ///
    /// The search starts at the free-area cache, which keeps the invariant "no page in
    /// `[freeAreaCache, mmapBase)` is free": every unmap raises it over the hole it creates, and a
    /// mapping placed directly below it lowers it. So the first gap found below the cache is the
    /// highest gap overall, as Linux's gap search returns, and contiguous top-down allocation costs
    /// O(log n) rather than a walk over every VMA.
    func findFreeArea(length: UInt64) throws(MemoryError) -> UInt64 {
        let low = configuration.mmapMinAddress
        let high = configuration.mmapBase
        if let found = searchDown(length: length, low: low, high: min(freeAreaCache, high)) {
            if found + length == freeAreaCache { freeAreaCache = found }
            return found
        }
        // Bottom-up above the base.
        var candidate = high
        var cursor = index.findFirst(endingAfter: candidate)
        while candidate <= Self.userLimit - length {
            guard let vma = cursor else { return candidate }
            if vma.start >= candidate + length { return candidate }
            candidate = max(candidate, vma.end)
            cursor = vma.next
        }
        throw .noMemory
    }

    /// Keeps the free-area cache invariant after `[start, end)` became free.
    func noteFreed(_ start: UInt64, _ end: UInt64) {
        let base = configuration.mmapBase
        if start < base && end > freeAreaCache { freeAreaCache = min(end, base) }
    }

    /// The highest `length`-sized gap in `[low, high)`.
    private func searchDown(length: UInt64, low: UInt64, high: UInt64) -> UInt64? {
        guard high >= low + length else { return nil }
        var ceiling = high
        // The VMA at or below `high`, then walk down through the gaps.
        var cursor = index.floor(high &- 1)
        while true {
            let floorAddress = max(low, cursor.map { $0.end } ?? low)
            if let vma = cursor, vma.end > ceiling {
                // Overlaps the ceiling: the gap ends at its start.
                ceiling = min(ceiling, vma.start)
                cursor = vma.previous
                continue
            }
            if ceiling >= floorAddress + length { return ceiling - length }
            guard let vma = cursor else { return nil }
            ceiling = vma.start
            if ceiling < low + length { return nil }
            cursor = vma.previous
        }
    }

    /// Whether `splits` more VMAs would exceed `maxMapCount`. Linux checks only inside
    /// `__split_vma`, so an operation that splits nothing never fails this way.
    func exceedsMapCount(splitting splits: Int) -> Bool {
        splits > 0 && index.count + splits > configuration.maxMapCount
    }

    /// Throws `ENOMEM` if unmapping `[start, end)` would take the space past `maxMapCount`.
    func checkUnmapBudget(_ start: UInt64, _ end: UInt64) throws(MemoryError) {
        if exceedsMapCount(splitting: splitsNeeded(start, end)) { throw .noMemory }
    }

    /// How many VMAs unmapping `[start, end)` adds: 1 when it punches a hole strictly inside one
    /// VMA (two splits, one VMA removed), else 0 (Linux's `end < vma->vm_end` pre-check).
    func splitsNeeded(_ start: UInt64, _ end: UInt64) -> Int {
        if let vma = index.find(containing: start), vma.start < start, vma.end > end { return 1 }
        return 0
    }

    // MARK: - Unmap

    /// Unmaps `[address, address + length)` (`munmap`). Holes are allowed; VMAs that straddle the
    /// boundaries are split.
    ///
    /// Linux rules: unaligned address or zero length is `EINVAL`; the length is rounded up to pages
    /// and the range must lie below `userLimit` (`EINVAL`); splitting a VMA beyond `maxMapCount`
    /// VMAs is `ENOMEM`.
    public func unmap(address: UInt64, length: UInt64) throws(MemoryError) {
        let end = try Self.userRangeEnd(address, length, nonEmpty: true)
        try mmapLock.withWriteLock { () throws(MemoryError) in
            try checkAlive()
            try checkUnmapBudget(address, end)
            let edit = VMAEdit(self)
            unmapLocked(address, end, edit: edit)
            edit.finish()
        }
    }

    /// The body of munmap (`do_vmi_align_munmap`): split, unlink, zap under one `unmap`
    /// invalidation, free frames after its end, then free page tables in the hole.
    ///
    /// - Precondition: mmap write lock; `[start, end)` page-aligned and valid; map count checked.
    func unmapLocked(_ start: UInt64, _ end: UInt64, edit: VMAEdit) {
        let affected = index.intersecting(start, end)
        guard !affected.isEmpty else { return }
        for vma in isolate(affected, start, end, edit: edit) { edit.remove(vma) }
        noteFreed(start, end)
        edit.publish()
        zapAndEnd(beginInvalidation(start, end, .unmap), start, end)
        // Free the page tables that only covered the hole.
        let floor = index.floor(start &- 1).map { $0.end } ?? 0
        let ceiling = index.findFirst(endingAfter: end &- 1).map { $0.start } ?? Self.userLimit
        let freed = pageTable.freeTables(
            from: start, to: end, floor: min(floor, start), ceiling: max(ceiling, end), retire: edit.retire)
        count(.tablesFreed, freed)
    }

    func recordZap(_ result: ZapResult) {
        if result.pages != 0 { count(.pagesZapped, result.pages) }
        if result.hugePages != 0 { count(.hugePagesZapped, result.hugePages) }
        if result.swapEntries != 0 { count(.swapEntriesZapped, result.swapEntries) }
    }
}
