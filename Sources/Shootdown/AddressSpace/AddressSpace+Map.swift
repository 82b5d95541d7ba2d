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

    /// Options of a new mapping (the `MAP_*` flags beyond the placement).
    public struct MapOptions: OptionSet, Hashable, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }

        /// `MAP_SHARED`: shared with forks, never copied on write (shmem-like; `sh ms`).
        public static let shared = MapOptions(rawValue: 1 << 0)
        /// Allow 2 MiB mappings (as if `madvise(MADV_HUGEPAGE)` followed; `hg`).
        public static let hugePage = MapOptions(rawValue: 1 << 1)
        /// `MAP_LOCKED`: `VM_LOCKED`, populated like ``populate``; never paged out or reaped.
        public static let locked = MapOptions(rawValue: 1 << 2)
        /// `MAP_POPULATE`: fault every page in before returning. Best effort, as in Linux
        /// (`mm_populate` ignores errors): nothing is populated under `PROT_NONE`, and running out
        /// of frames leaves the rest unpopulated without failing the (already made) mapping.
        /// Private writable memory is write-faulted (real pages, not the zero page).
        public static let populate = MapOptions(rawValue: 1 << 3)
        /// `MAP_NORESERVE`: `nr`, and no `ac` (not charged), which keeps it from merging with
        /// charged neighbours.
        public static let noReserve = MapOptions(rawValue: 1 << 4)
        /// `MAP_GROWSDOWN`: a stack VMA (`gd`); private only (`EINVAL` with ``shared``). Non-fixed
        /// placements keep the stack guard gap (256 pages) free below it.
        public static let growsDown = MapOptions(rawValue: 1 << 5)
        /// `VM_NOHUGEPAGE` (`nh`) from the start, as `MAP_STACK` sets it on this kernel: faults
        /// never install 2 MiB mappings, and the VMA merges only with `nh` neighbours.
        public static let noHugePage = MapOptions(rawValue: 1 << 6)
        /// `MAP_32BIT` (x86-64): a non-fixed placement in the low 2 GiB. The search runs
        /// bottom-up in `[1 GiB, 2 GiB)` (`ENOMEM` when nothing fits there, no fallback); a hint is
        /// taken when the range ends at or below 2 GiB and is free; fixed placements ignore it.
        public static let below2GiB = MapOptions(rawValue: 1 << 7)
    }

    /// Where `MAP_32BIT` placements search (x86-64 `find_start_end`, no randomisation).
    public static let low32BitRange: Range<UInt64> = 0x4000_0000..<0x8000_0000

    /// `stack_guard_gap`: non-fixed placements keep this much free below a growsdown VMA.
    public static let stackGuardGap: UInt64 = 256 * 4096

    /// Maps `length` bytes of anonymous memory (`mmap(MAP_ANONYMOUS)`), private or shared.
    ///
    /// Linux rules, in Linux's order (measured on 6.18):
    /// - zero length is `EINVAL`;
    /// - the length is rounded up to pages: `ENOMEM` if that overflows or exceeds `userLimit`;
    /// - more than `maxMapCount` VMAs already is `ENOMEM`;
    /// - fixed placements: past `userLimit - length` is `ENOMEM` (checked before alignment),
    ///   unaligned is `EINVAL`, below `mmapMinAddress` without `CAP_SYS_RAWIO` is `EPERM`,
    ///   `fixedNoReplace` over a mapping is `EEXIST`; `fixed` replaces what is there (`EPERM` if
    ///   a sealed VMA is in the way, `ENOMEM` if splitting would pass `maxMapCount`);
    /// - a hint is rounded down to a page and raised to `hintMinAddress` when nonzero and below
    ///   it; it is taken when the range fits below `userLimit` and is free (with the stack guard
    ///   gap below growsdown VMAs), else the search runs;
    /// - the search is top-down below `mmapBase` (then bottom-up above it); a gap right below a
    ///   growsdown VMA whose guard gap reaches into it restarts the search below the guard gap;
    ///   private memory whose length is a multiple of 2 MiB and that has no hint is placed
    ///   2 MiB-aligned inside a gap of the length plus 2 MiB (`__thp_get_unmapped_area`; without
    ///   such a gap, unaligned); nothing fits: `ENOMEM`;
    /// - then ``MapOptions/locked`` (or `mlockall(MCL_FUTURE)`) without `CAP_IPC_LOCK`: `EPERM`
    ///   with a zero `RLIMIT_MEMLOCK` (`MAP_LOCKED` only), `EAGAIN` when the locked total would
    ///   pass it;
    /// - ``MapOptions/growsDown`` with ``MapOptions/shared`` is `EINVAL` only now (after `EEXIST`
    ///   and the lock checks).
    ///
    /// Flags: `mr mw me` always; `sh ms` when shared; `ac` for private writable memory without
    /// ``MapOptions/noReserve``; `nr`, `gd`, `lo` (and `lf` after `mlockall(MCL_ONFAULT)`), `hg`
    /// from the options. A private mapping merges with compatible neighbours.
    ///
    /// Unmapping a fixed range sends `unmap`; the new mapping sends nothing.
    ///
    /// - Returns: the start address of the mapping.
    @discardableResult
    public func map(
        length: UInt64, protection: Protection = .readWrite, placement: Placement = .anywhere,
        options: MapOptions = []
    ) throws(MemoryError) -> UInt64 {
        try mapArea(length: length, protection: protection, placement: placement, options: options, file: nil)
    }

    /// The body of mmap, anonymous (`file == nil`) or file-backed (see
    /// ``map(file:offset:length:protection:placement:options:access:)``). `invalidType` (a raw mmap
    /// with a map type Linux rejects for anonymous memory) fails with `EINVAL` where Linux checks
    /// the type: after placement and the lock checks, before anything changes.
    func mapArea(
        length: UInt64, protection: Protection, placement: Placement, options: MapOptions, file: FileBacking?,
        invalidType: Bool = false
    ) throws(MemoryError) -> UInt64 {
        guard length != 0 else { throw .invalidArgument }
        guard let length = Self.pageAlign(length), length != 0 else { throw .noMemory }
        guard length <= Self.userLimit else { throw .noMemory }
        let protection = protection.access
        var populateLength: UInt64 = 0
        var populateWrite = false
        let address: UInt64 = try mmapLock.withWriteLock { () throws(MemoryError) -> UInt64 in
            try checkAlive()
            if index.count > configuration.maxMapCount { throw .noMemory }
            var flags: VMFlags = [.mayRead, .mayWrite, .mayExec, .softDirty]
            flags.formUnion(defaultFlags)
            if options.contains(.shared) { flags.formUnion([.shared, .mayShare]) }
            if let file {
                flags.insert(.fileBacked)
                // A file opened read-only: a shared mapping may never write (`VM_SHARED` and
                // `VM_MAYWRITE` cleared; `ms` stays).
                if options.contains(.shared) && file.access == .readOnly { flags.subtract([.shared, .mayWrite]) }
            }
            if options.contains(.noReserve) { flags.insert(.noReserve) }
            if !options.contains(.shared) && protection.contains(.write) && !options.contains(.noReserve) {
                flags.insert(.account)
            }
            if options.contains(.growsDown) { flags.insert(.growsDown) }
            if options.contains(.hugePage) { flags.insert(.hugePage) }
            if options.contains(.noHugePage) { flags.insert(.noHugePage) }
            // `MAP_LOCKED` adds `lo`; `lf` from `mlockall(MCL_FUTURE|MCL_ONFAULT)` stays (oracle).
            if options.contains(.locked) { flags.insert(.locked) }
            let address = try placementAddress(
                length: length, placement: placement, shared: options.contains(.shared), file: file,
                below2GiB: options.contains(.below2GiB))
            if flags.contains(.locked) { try checkLockLimit(adding: length, mapping: options.contains(.locked)) }
            if let file {
                // The file's open mode, then no growsdown file mappings (after the lock checks).
                if options.contains(.shared) && file.access == .readOnly && protection.contains(.write) {
                    throw .accessDenied
                }
                if options.contains(.growsDown) { throw .invalidArgument }
            }
            // An invalid type, or shared and growsdown: EINVAL only now, after placement (EEXIST)
            // and the lock checks (oracle).
            if invalidType || (options.contains(.shared) && options.contains(.growsDown)) { throw .invalidArgument }
            let end = address + length
            let edit = VMAEdit(self)
            do throws(MemoryError) {
                if case .fixed = placement {
                    try checkNotSealed(address, end, splittingWith: edit)
                    try checkUnmapBudget(address, end)
                }
                // Heuristic overcommit: private writable memory is charged to the mapping, shared
                // memory to its object, unless `MAP_NORESERVE` (measured).
                if let limit = configuration.commitLimit, length > limit,
                    flags.contains(.account) || (options.contains(.shared) && !options.contains(.noReserve))
                {
                    throw .noMemory
                }
            } catch {
                edit.finish()
                throw error
            }
            if case .fixed = placement { unmapLocked(address, end, edit: edit) }
            let vma: VMA
            if let file {
                vma = VMA(
                    start: address, end: end, protection: protection, flags: flags, sharedObject: file.object,
                    pageOffset: file.pageOffset)
            } else {
                vma = VMA(
                    start: address, end: end, protection: protection, flags: flags,
                    sharedObject: options.contains(.shared)
                        ? SharedMemoryObject(memory: memory, pageLimit: length / Self.pageSize) : nil)
            }
            edit.insert(vma)
            edit.mergeNeighbours(vma, chain: false)
            edit.finish()
            // Populate (`MAP_POPULATE`, or locked): never a lock-on-fault VMA, whose population
            // `populate_vma_page_range` skips.
            if !protection.isEmpty && !flags.contains(.lockOnFault)
                && (options.contains(.populate) || flags.contains(.locked))
            {
                populateLength = length
                populateWrite = !flags.contains(.shared) && protection.contains(.write)
            }
            return address
        }
        if populateLength != 0 {
            // The mapping exists now: a populate failure must not turn it into a failed call.
            try? populate(address, length: populateLength, write: populateWrite)
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

    /// Chooses the address of a new mapping of `length` bytes (`get_unmapped_area` and the checks
    /// around it). Caller: mmap write lock.
    private func placementAddress(
        length: UInt64, placement: Placement, shared: Bool, file: FileBacking? = nil, below2GiB: Bool = false
    ) throws(MemoryError) -> UInt64 {
        // THP alignment is for private anonymous memory: shared anonymous memory is shmem, which
        // does not align with shmem THP off (oracle); files have their own rule.
        let alignment = shared || file != nil ? Self.pageSize : Self.placementAlignment(length)
        if below2GiB, case .hint(let hint) = placement {
            // `MAP_32BIT`: the bottom-up `arch_get_unmapped_area` takes a hint that ends at or
            // below 2 GiB, whatever its start.
            var aligned = hint & ~(Self.pageSize - 1)
            let floor = max(configuration.hintMinAddress, configuration.mmapMinAddress)
            if aligned != 0 && aligned < floor { aligned = floor }
            let top = Self.low32BitRange.upperBound
            if aligned != 0, length <= top, aligned <= top - length, isFreeForPlacement(aligned, aligned + length) {
                try checkMinAddress(aligned)
                return aligned
            }
            return try findFreeArea32(length: length, alignment: aligned != 0 ? Self.pageSize : alignment)
        }
        if below2GiB, placement == .anywhere {
            return try findFreeArea32(length: length, alignment: alignment)
        }
        switch placement {
        case .fixed(let address), .fixedNoReplace(let address):
            guard address <= Self.userLimit - length else { throw .noMemory }
            guard Self.isPageAligned(address) else { throw .invalidArgument }
            try checkMinAddress(address)
            if case .fixedNoReplace = placement, !index.intersecting(address, address + length).isEmpty {
                throw .alreadyExists
            }
            return address
        case .hint(let hint):
            var aligned = hint & ~(Self.pageSize - 1)
            let floor = max(configuration.hintMinAddress, configuration.mmapMinAddress)
            if aligned != 0 && aligned < floor { aligned = floor }
            if let file, let address = fileAlignedAddress(length: length, pageOffset: file.pageOffset, hint: aligned) {
                try checkMinAddress(address)
                return address
            }
            if aligned != 0, aligned <= Self.userLimit - length, isFreeForPlacement(aligned, aligned + length) {
                try checkMinAddress(aligned)
                return aligned
            }
            // Only without a hint: a nonzero hint that cannot be taken searches unaligned (oracle).
            return try findFreeArea(length: length, alignment: aligned != 0 ? Self.pageSize : alignment)
        case .anywhere:
            if let file, let address = fileAlignedAddress(length: length, pageOffset: file.pageOffset, hint: 0) {
                return address
            }
            return try findFreeArea(length: length, alignment: alignment)
        }
    }

    /// `EPERM` below `mmapMinAddress` without `CAP_SYS_RAWIO` (`security_mmap_addr`).
    func checkMinAddress(_ address: UInt64) throws(MemoryError) {
        if address < configuration.mmapMinAddress && !configuration.capabilities.contains(.sysRawIO) {
            throw .permissionDenied
        }
    }

    /// The alignment of a non-fixed anonymous mapping: 2 MiB for lengths that are a multiple of
    /// 2 MiB (this kernel's THP alignment of anonymous mappings), else a page.
    static func placementAlignment(_ length: UInt64) -> UInt64 {
        length % hugePageSize == 0 ? hugePageSize : pageSize
    }

    /// Whether `[start, end)` is free, with the stack guard gap below a growsdown VMA above it.
    func isFreeForPlacement(_ start: UInt64, _ end: UInt64) -> Bool {
        guard let next = index.findFirst(endingAfter: start) else { return true }
        return end <= gapStart(next)
    }

    /// Where the free area below `vma` ends (`vm_start_gap`).
    func gapStart(_ vma: VMA) -> UInt64 {
        let start = vma.start
        guard vma.flags.contains(.growsDown) else { return start }
        return start > Self.stackGuardGap ? start - Self.stackGuardGap : 0
    }

    /// Top-down search for the highest free range below the mmap base, then bottom-up above it
    /// (`arch_get_unmapped_area_topdown` and its fallback), `alignment`-aligned.
    ///
    /// The search starts at the free-area cache, which keeps the invariant "no page in
    /// `[freeAreaCache, mmapBase)` is free": every unmap raises it over the hole it creates, and a
    /// mapping placed directly below it lowers it. So the first gap found below the cache is the
    /// highest gap overall, as Linux's gap search returns, and contiguous top-down allocation costs
    /// O(log n) rather than a walk over every VMA. (An aligned placement may leave free pages
    /// above it, so it does not lower the cache.)
    func findFreeArea(length: UInt64, alignment: UInt64 = pageSize) throws(MemoryError) -> UInt64 {
        guard length <= Self.userLimit else { throw .noMemory }
        if alignment > Self.pageSize {
            // `__thp_get_unmapped_area`: search for `length + alignment` unaligned, then align the
            // start up inside that padding (top-down: an already aligned start moves to the top of
            // the padding); no such room falls back to an unaligned search (oracle: the aligned slot
            // must come from a padded gap).
            if length <= Self.userLimit - alignment,
                let padded = try? findFreeArea(length: length + alignment, alignment: Self.pageSize)
            {
                let offset = (alignment - padded % alignment) % alignment
                if offset == 0 { return padded + alignment }
                return padded + offset
            }
            return try findFreeArea(length: length, alignment: Self.pageSize)
        }
        let low = configuration.mmapMinAddress
        let high = configuration.mmapBase
        if let found = searchDown(length: length, alignment: alignment, low: low, high: min(freeAreaCache, high)) {
            return found  // the cache is lowered when the VMA is inserted (`VMAEdit.insert`)
        }
        // Bottom-up above the base.
        var candidate = (high + alignment - 1) & ~(alignment - 1)
        var cursor = index.findFirst(endingAfter: candidate)
        while candidate <= Self.userLimit - length {
            guard let vma = cursor else { return candidate }
            if gapStart(vma) >= candidate + length { return candidate }
            candidate = max(candidate, (vma.end + alignment - 1) & ~(alignment - 1))
            cursor = vma.next
        }
        throw .noMemory
    }

    /// The lowest free `alignment`-aligned range of `length` bytes inside ``low32BitRange``
    /// (`MAP_32BIT`: bottom-up `vm_unmapped_area` between 1 and 2 GiB, with the stack guard gap
    /// below growsdown VMAs). A THP alignment pads the search as ``findFreeArea(length:alignment:)``
    /// does, and as there an already aligned start moves up by the alignment (the space is
    /// top-down). Nothing fits: `ENOMEM`. Caller: mmap write lock.
    func findFreeArea32(length: UInt64, alignment: UInt64 = pageSize) throws(MemoryError) -> UInt64 {
        let (low, high) = (Self.low32BitRange.lowerBound, Self.low32BitRange.upperBound)
        guard length <= high - low else { throw .noMemory }
        if alignment > Self.pageSize {
            if length <= high - low - alignment,
                let padded = try? findFreeArea32(length: length + alignment, alignment: Self.pageSize)
            {
                let offset = (alignment - padded % alignment) % alignment
                return offset == 0 ? padded + alignment : padded + offset
            }
            return try findFreeArea32(length: length, alignment: Self.pageSize)
        }
        var candidate = low
        var cursor = index.findFirst(endingAfter: candidate)
        while candidate <= high - length {
            guard let vma = cursor else { return candidate }
            if gapStart(vma) >= candidate + length { return candidate }
            candidate = max(candidate, (vma.end + alignment - 1) & ~(alignment - 1))
            cursor = vma.next
        }
        throw .noMemory
    }

    /// Keeps the free-area cache invariant after `[start, end)` became free.
    func noteFreed(_ start: UInt64, _ end: UInt64) {
        let base = configuration.mmapBase
        if start < base && end > freeAreaCache { freeAreaCache = min(end, base) }
    }

    /// The highest `alignment`-aligned `length`-sized gap in `[low, high)`, as
    /// `unmapped_area_topdown` finds it: gaps are tried from the top, sized without guard gaps; the
    /// first that fits is taken unless the VMA right above it grows down and its stack guard gap
    /// reaches into the gap, in which case the search starts again below that guard gap (so every
    /// gap above it is passed over). A guard gap above a gap too small to fit plays no part
    /// (measured by the oracle both ways).
    private func searchDown(length: UInt64, alignment: UInt64, low: UInt64, high: UInt64) -> UInt64? {
        var limit = high
        restart: while limit >= low &+ length {
            // The VMA above the first gap (containing `limit - 1`, or the first one above it).
            var upper = index.findFirst(endingAfter: limit &- 1)
            var gapTop = limit
            var lower: VMA?
            if let vma = upper, vma.start < limit {
                gapTop = vma.start
                lower = vma.previous
            } else {
                lower = upper.map { $0.previous } ?? index.last
            }
            while true {
                let gapBottom = max(low, lower?.end ?? low)
                if gapTop >= gapBottom &+ length {
                    let candidate = (gapTop - length) & ~(alignment - 1)
                    if candidate >= gapBottom {
                        if let vma = upper, vma.flags.contains(.growsDown), gapStart(vma) < gapTop {
                            limit = gapStart(vma)
                            continue restart
                        }
                        return candidate
                    }
                }
                guard let vma = lower else { return nil }
                upper = vma
                gapTop = vma.start
                lower = vma.previous
                if gapTop < low &+ length { return nil }
            }
        }
        return nil
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
    /// boundaries are split. Sends `unmap` over the range.
    ///
    /// Linux rules: unaligned address or zero length is `EINVAL`; the length is rounded up to pages
    /// and the range must lie below `userLimit` (`EINVAL`); a sealed VMA in the range is `EPERM`
    /// (nothing unmapped); splitting a VMA beyond `maxMapCount` VMAs is `ENOMEM`. Locked pages go
    /// too (the locked total drops).
    public func unmap(address: UInt64, length: UInt64) throws(MemoryError) {
        let end = try Self.userRangeEnd(address, length, nonEmpty: true)
        try mmapLock.withWriteLock { () throws(MemoryError) in
            try checkAlive()
            let edit = VMAEdit(self)
            defer { edit.finish() }
            try checkNotSealed(address, end, splittingWith: edit)
            try checkUnmapBudget(address, end)
            unmapLocked(address, end, edit: edit)
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
        let ceiling = index.findFirst(endingAfter: end &- 1).map { $0.start } ?? (1 << 47)
        let freed = pageTable.freeTables(
            from: start, to: end, floor: min(floor, start), ceiling: max(ceiling, end), retire: edit.retire)
        count(.tablesFreed, freed)
    }


    /// `EPERM` if a sealed VMA intersects `[start, end)`, with munmap's partial effect
    /// (`vms_gather_munmap_vmas`, measured on 6.18 for munmap, `MAP_FIXED` and mremap targets):
    /// the VMA containing `start`, when it begins below `start` and is not sealed itself, is split
    /// at `start` (by `edit`) before the sealed VMA is found. Caller: mmap write lock.
    func checkNotSealed(_ start: UInt64, _ end: UInt64, splittingWith edit: VMAEdit) throws(MemoryError) {
        guard index.contains(intersecting: start, end, where: { $0.isSealed }) else { return }
        if let first = index.find(containing: start), first.start < start, !first.isSealed {
            splitHugeMapping(across: start)
            edit.split(first, at: start)
            edit.publish()
        }
        throw .permissionDenied
    }

    func recordZap(_ result: ZapResult) {
        if result.pages != 0 { count(.pagesZapped, result.pages) }
        if result.hugePages != 0 { count(.hugePagesZapped, result.hugePages) }
        if result.swapEntries != 0 { count(.swapEntriesZapped, result.swapEntries) }
    }
}
