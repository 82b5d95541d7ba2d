@testable import Shootdown

/// A deliberately simple oracle of an ``AddressSpace``, used by the differential tests.
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
final class ReferenceModel {
    /// One VMA. Shared areas name their backing object and the object page at `start`.
    struct Area: Equatable, CustomStringConvertible {
        var start: UInt64
        var end: UInt64
        var protection: Protection
        var flags: MappingFlags
        var object: Int?
        /// `vm_pgoff`: the object page at `start` for shared areas; for private ones the start
        /// page at mmap, kept by splits and by moves of areas with anonymous pages.
        var objectPage: UInt64
        /// The `anon_vma` identity (0: none).
        var anon: UInt64 = 0

        var isShared: Bool { object != nil }

        var description: String {
            "[\(start.hex)-\(end.hex) \(protection)\(isShared ? "s" : "p") flags:\(flags.rawValue)"
                + (object.map { " obj\($0)@\(objectPage)" } ?? "") + "]"
        }
    }

    /// What a page holds.
    enum Content: Equatable {
        /// The shared zero page (reads as token 0, never writable).
        case zeroPage
        /// A private page with its content token.
        case anonymous(UInt64)
        /// Page `page` of shared object `object`; the token lives in the object.
        case shared(object: Int, page: UInt64)
    }

    /// Where the page-table entry stands.
    enum Residence: Equatable {
        /// A present entry.
        case mapped
        /// A PROT_NONE entry: the frame stays, access is denied.
        case protNone
        /// A swap entry (private pages only).
        case swapped
    }

    /// A page that has a page-table entry. Pages without an entry are absent from ``pages``.
    struct Page: Equatable {
        var content: Content
        var residence: Residence
        var writable: Bool
        var softDirty: Bool
    }

    static let pageSize: UInt64 = 4096
    static let limit: UInt64 = AddressSpace.userLimit

    let configuration: AddressSpace.Configuration
    var areas: [Area] = []
    /// Boundaries between two compatible areas that a failed munmap split (``checkNotSealed``),
    /// with the two areas as they were: kept apart by ``mergeAll()`` until either changes.
    var keptApart: [UInt64: (lower: Area, upper: Area)] = [:]
    /// `locked_vm` pages a DONTUNMAP move of a locked area left charged (the library's
    /// `leakedLockedPages`).
    var leakedLockedPages: UInt64 = 0
    var pages: [UInt64: Page] = [:]
    var dead = false
    /// Content tokens of shared objects' pages (a page never written reads 0).
    var sharedTokens: [Int: [UInt64: UInt64]] = [:]
    var nextObject = 1
    var nextAnon: UInt64 = 2
    /// Pages of shared objects in their page cache (faulted in through any mapping).
    var sharedResident: [Int: Set<UInt64>] = [:]
    /// `mm->def_flags` after `mlockall(MCL_FUTURE)`.
    var defaultFlags: MappingFlags = []
    /// The program break (`start_brk` is `configuration.programBreakStart`).
    var programBreak: UInt64 = 0

    init(configuration: AddressSpace.Configuration) {
        self.configuration = configuration
        programBreak = configuration.programBreakStart ?? 0
    }

    // MARK: - Small helpers

    var limit: UInt64 { Self.limit }

    func isAligned(_ value: UInt64) -> Bool { value % Self.pageSize == 0 }

    /// `length` rounded up to whole pages, or `nil` if that overflows.
    func roundUp(_ length: UInt64) -> UInt64? {
        let (sum, overflow) = length.addingReportingOverflow(Self.pageSize - 1)
        return overflow ? nil : sum / Self.pageSize * Self.pageSize
    }

    func pageOf(_ address: UInt64) -> UInt64 { address / Self.pageSize * Self.pageSize }

    func index(containing address: UInt64) -> Int? {
        areas.firstIndex { $0.start <= address && address < $0.end }
    }

    func area(containing address: UInt64) -> Area? { index(containing: address).map { areas[$0] } }

    func overlapping(_ start: UInt64, _ end: UInt64) -> [Area] {
        areas.filter { $0.start < end && start < $0.end }
    }

    /// Whether `[start, end)` is covered by areas without a hole.
    func isCovered(_ start: UInt64, _ end: UInt64) -> Bool {
        var covered = start
        for area in areas where area.end > covered && area.start < end {
            if area.start > covered { return false }
            covered = area.end
        }
        return covered >= end
    }

    /// Splits an unmap of `[start, end)` needs beyond the ones that shrink: one when a single area
    /// sticks out on both sides (the library's rule).
    func unmapSplits(_ start: UInt64, _ end: UInt64) -> Int {
        guard let area = area(containing: start) else { return 0 }
        return area.start < start && area.end > end ? 1 : 0
    }

    /// Splits needed so that `[start, end)` is made of whole areas.
    /// Whether `splits` more areas would pass the map-count limit (checked only when splitting).
    func exceeds(_ splits: Int) -> Bool {
        splits > 0 && areas.count + splits > configuration.maxMapCount
    }

    func isolateSplits(_ start: UInt64, _ end: UInt64, where changes: (Area) -> Bool = { _ in true }) -> Int {
        let inside = overlapping(start, end)
        guard let first = inside.first, let last = inside.last else { return 0 }
        return (first.start < start && changes(first) ? 1 : 0) + (last.end > end && changes(last) ? 1 : 0)
    }

    /// Splits the area strictly containing `address`, if any.
    func split(at address: UInt64) {
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
    func isolate(_ start: UInt64, _ end: UInt64) -> [Int] {
        split(at: start)
        split(at: end)
        return areas.indices.filter { areas[$0].start >= start && areas[$0].end <= end }
    }

    /// Removes every area (or part of one) and every page in `[start, end)`.
    func removeRange(_ start: UInt64, _ end: UInt64) {
        split(at: start)
        split(at: end)
        areas.removeAll { $0.start >= start && $0.end <= end }
        dropPages(start, end)
    }

    func dropPages(_ start: UInt64, _ end: UInt64) {
        for address in pages.keys where address >= start && address < end {
            pages[address] = nil
        }
    }

    func insert(_ area: Area) {
        let position = areas.firstIndex { $0.start >= area.end } ?? areas.count
        areas.insert(area, at: position)
    }

    /// Whether `upper` may be merged into `lower` (ignoring soft-dirty; offsets contiguous; one
    /// `anon_vma` or none).
    func canMerge(_ lower: Area, _ upper: Area) -> Bool {
        lower.end == upper.start && lower.protection == upper.protection
            && lower.flags.subtracting(.softDirty) == upper.flags.subtracting(.softDirty)
            && lower.object == upper.object
            && lower.objectPage + (lower.end - lower.start) / Self.pageSize == upper.objectPage
            && (lower.anon == upper.anon || lower.anon == 0 || upper.anon == 0)
    }

    /// Whether the split at `boundary` still separates the two areas it made, unchanged.
    func isKeptApart(_ boundary: UInt64) -> Bool {
        guard let pair = keptApart[boundary] else { return false }
        let lower = areas.first { $0.end == boundary }
        let upper = areas.first { $0.start == boundary }
        return lower.map { Self.shape($0, at: boundary) } == Self.shape(pair.lower, at: boundary)
            && upper.map { Self.shape($0, at: boundary) } == Self.shape(pair.upper, at: boundary)
    }

    /// Compatible neighbours the model keeps apart (the library's audit counts them as unmerged).
    var keptApartCount: Int { keptApart.keys.count { isKeptApart($0) } }

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
    func mergeAll() {
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

    private static func allows(_ protection: Protection, _ access: AddressSpace.Access) -> Bool {
        access == .write ? protection.contains(.write) : !protection.isEmpty
    }

    /// The content token a page reads.
    func token(of page: Page) -> UInt64 {
        switch page.content {
        case .zeroPage: 0
        case .anonymous(let token): token
        case .shared(let object, let objectPage): sharedTokens[object]?[objectPage] ?? 0
        }
    }

    /// Pages mapped by areas (for bounding tests).
    var mappedPages: UInt64 { areas.reduce(0) { $0 + ($1.end - $1.start) / Self.pageSize } }

    /// The areas as the library reports them.
    func mappings() -> [Mapping] {
        areas.map { Mapping(start: $0.start, end: $0.end, protection: $0.protection, flags: $0.flags) }
    }

    // MARK: - Placement

    /// The highest gap below the mmap base that fits, else the lowest one above it.
    func freeArea(length: UInt64) throws(MemoryError) -> UInt64 {
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

    // MARK: - Operations

    func map(
        length: UInt64, protection: Protection, placement: AddressSpace.Placement,
        options: AddressSpace.MapOptions
    ) throws(MemoryError) -> UInt64 {
        guard length != 0 else { throw .invalidArgument }
        guard let length = roundUp(length), length <= limit else { throw .noMemory }
        guard !dead else { throw .addressSpaceDead }
        if areas.count > configuration.maxMapCount { throw .noMemory }
        let address: UInt64
        var replaces = false
        switch placement {
        case .fixed(let fixed), .fixedNoReplace(let fixed):
            guard fixed <= limit - length else { throw .noMemory }
            guard isAligned(fixed) else { throw .invalidArgument }
            guard fixed >= configuration.mmapMinAddress else { throw .permissionDenied }
            if case .fixedNoReplace = placement, !overlapping(fixed, fixed + length).isEmpty {
                throw .alreadyExists
            }
            address = fixed
            if case .fixed = placement { replaces = true }
        case .hint(let hint):
            var rounded = pageOf(hint)
            let floor = max(configuration.hintMinAddress, configuration.mmapMinAddress)
            if rounded != 0 && rounded < floor { rounded = floor }
            if rounded != 0, rounded <= limit - length, overlapping(rounded, rounded + length).isEmpty {
                address = rounded
            } else {
                address = try freeArea(length: length)
            }
        case .anywhere:
            address = try freeArea(length: length)
        }
        if options.contains(.locked) || defaultFlags.contains(.locked) {
            try checkLockLimit(adding: length, mapping: options.contains(.locked))
        }
        if replaces {
            try checkNotSealed(address, address + length)
            if exceeds(unmapSplits(address, address + length)) {
                throw .noMemory
            }
            removeRange(address, address + length)
        }
        var flags: MappingFlags = [.softDirty, .mayRead, .mayWrite, .mayExec]
        var object: Int? = nil
        if options.contains(.shared) {
            flags.formUnion([.shared, .mayShare])
            object = nextObject
            nextObject += 1
        } else if protection.contains(.write) && !options.contains(.noReserve) {
            flags.insert(.account)
        }
        if options.contains(.noReserve) { flags.insert(.noReserve) }
        if options.contains(.hugePage) { flags.insert(.hugePage) }
        flags.formUnion(defaultFlags)
        if options.contains(.locked) { flags.insert(.locked) }
        insert(Area(start: address, end: address + length, protection: protection, flags: flags,
                    object: object, objectPage: object == nil ? address / Self.pageSize : 0))
        mergeAll()
        if (options.contains(.populate) || flags.contains(.locked)) && !flags.contains(.lockOnFault) && !protection.isEmpty {
            // Best effort, like Linux's mm_populate: the mapping stands whatever happens.
            let write = object == nil && protection.contains(.write)
            for address in eachPage(address, address + length) {
                try? fault(at: address, access: write ? .write : .read)
            }
        }
        return address
    }

    func unmap(address: UInt64, length: UInt64) throws(MemoryError) {
        guard isAligned(address), length != 0, let length = roundUp(length), address <= limit,
            length <= limit - address
        else { throw .invalidArgument }
        guard !dead else { throw .addressSpaceDead }
        let end = address + length
        try checkNotSealed(address, end)
        if exceeds(unmapSplits(address, end)) { throw .noMemory }
        removeRange(address, end)
    }

    /// munmap's check (and `MAP_FIXED`'s, and mremap's targets): `EPERM` if a sealed area
    /// intersects `[start, end)`, after splitting the unsealed area that strictly contains `start`
    /// (Linux splits it before it meets the sealed one). The two halves stay apart (see
    /// ``keptApart``).
    func checkNotSealed(_ start: UInt64, _ end: UInt64) throws(MemoryError) {
        guard isSealed(start, end) else { return }
        if let i = index(containing: start), areas[i].start < start, !areas[i].flags.contains(.sealed) {
            let kept = keptApart.keys.filter { isKeptApart($0) }
            split(at: start)
            // A split merges nothing: earlier splits that bordered the split area stay apart.
            for boundary in kept + [start] {
                if let lower = areas.first(where: { $0.end == boundary }),
                    let upper = areas.first(where: { $0.start == boundary })
                {
                    keptApart[boundary] = (lower, upper)
                }
            }
        }
        throw .permissionDenied
    }

    /// Whether a sealed area intersects `[start, end)`.
    func isSealed(_ start: UInt64, _ end: UInt64) -> Bool {
        overlapping(start, end).contains { $0.flags.contains(.sealed) }
    }

    /// Visits the areas of `[start, end)` in order with their piece of the range; a hole is
    /// `ENOMEM`, at once when `stopAtHole`, else after the walk.
    func walk(
        _ start: UInt64, _ end: UInt64, stopAtHole: Bool, _ body: (Area, UInt64, UInt64) throws(MemoryError) -> Void
    ) throws(MemoryError) {
        var cursor = start
        var hole = false
        while cursor < end {
            guard let area = areas.first(where: { $0.end > cursor }), area.start < end else {
                hole = true
                break
            }
            if area.start > cursor {
                hole = true
                if stopAtHole { throw .noMemory }
                cursor = area.start
            }
            let stop = min(end, area.end)
            try body(area, cursor, stop)
            cursor = stop
        }
        if hole { throw .noMemory }
    }

    /// Gives `[start, end)` of `area` new attributes: `ENOMEM` if the splits it needs (after
    /// merging into a touching compatible neighbour) pass the map-count limit.
    func modify(_ area: Area, _ start: UInt64, _ end: UInt64, protection: Protection, flags: MappingFlags)
        throws(MemoryError)
    {
        if area.protection == protection && area.flags == flags { return }
        var piece = area
        piece.objectPage += (start - area.start) / Self.pageSize
        piece.start = start
        piece.end = end
        piece.protection = protection
        piece.flags = flags
        let i = index(containing: start)!
        var splits = 0
        if start > area.start {
            if !(end == area.end && i + 1 < areas.count && canMerge(piece, areas[i + 1])) { splits += 1 }
        }
        if end < area.end {
            if !(start == area.start && i > 0 && canMerge(areas[i - 1], piece)) { splits += 1 }
        }
        if exceeds(splits) { throw .noMemory }
        for j in isolate(start, end) {
            areas[j].protection = protection
            areas[j].flags = flags
        }
        mergeAll()
    }

    func protect(address: UInt64, length: UInt64, protection: Protection) throws(MemoryError) {
        guard isAligned(address) else { throw .invalidArgument }
        if length == 0 { return }
        guard let length = roundUp(length), !address.addingReportingOverflow(length).overflow else { throw .noMemory }
        guard !dead else { throw .addressSpaceDead }
        let end = address + length
        guard let first = areas.first(where: { $0.end > address }), first.start <= address else { throw .noMemory }
        _ = first
        try walk(address, end, stopAtHole: true) { area, start, stop throws(MemoryError) in
            if area.flags.contains(.sealed) { throw .permissionDenied }
            if area.protection == protection { return }
            var flags = area.flags
            if protection.contains(.write) {
                if !area.isShared && !flags.contains(.noReserve) { flags.insert(.account) }
            } else if !area.isShared && area.anon == 0 {
                flags.remove(.account)
            }
            let wasWritable = area.protection.contains(.write)
            try modify(area, start, stop, protection: protection, flags: flags)
            for page in pages.keys where page >= start && page < stop {
                var entry = pages[page]!
                switch entry.residence {
                case .mapped:
                    if protection.isEmpty {
                        entry.residence = .protNone
                        entry.writable = false
                    } else if !protection.contains(.write) {
                        entry.writable = false
                    }
                case .protNone:
                    if !protection.isEmpty {
                        entry.residence = .mapped
                        entry.writable = false
                    }
                case .swapped:
                    break
                }
                pages[page] = entry
            }
            if flags.contains(.locked) && !flags.contains(.lockOnFault) && !area.isShared && !wasWritable
                && protection.contains(.write)
            {
                for page in eachPage(start, stop) { try? fault(at: page, access: .write) }
            }
        }
    }

    func remap(
        address: UInt64, oldLength: UInt64, newLength: UInt64, move: AddressSpace.RemapMove
    ) throws(MemoryError) -> UInt64 {
        switch move {
        case .inPlace: try remap(address: address, oldLength: oldLength, newLength: newLength, flags: [], newAddress: 0)
        case .mayMove: try remap(address: address, oldLength: oldLength, newLength: newLength, flags: .mayMove, newAddress: 0)
        case .fixed(let target):
            try remap(address: address, oldLength: oldLength, newLength: newLength, flags: [.mayMove, .fixed], newAddress: target)
        }
    }

    /// mremap with raw flags (the library's documented rules, which follow the measured kernel).
    func remap(
        address: UInt64, oldLength: UInt64, newLength: UInt64, flags: AddressSpace.RemapFlags, newAddress: UInt64
    ) throws(MemoryError) -> UInt64 {
        guard flags.isSubset(of: [.mayMove, .fixed, .dontUnmap]), isAligned(address) else { throw .invalidArgument }
        if (flags.contains(.fixed) || flags.contains(.dontUnmap)) && !flags.contains(.mayMove) { throw .invalidArgument }
        let oldLength = (oldLength &+ (Self.pageSize - 1)) / Self.pageSize * Self.pageSize  // wraps like PAGE_ALIGN
        let newLength = (newLength &+ (Self.pageSize - 1)) / Self.pageSize * Self.pageSize
        guard newLength != 0, newLength <= limit else { throw .invalidArgument }
        if flags.contains(.dontUnmap) && oldLength != newLength { throw .invalidArgument }
        var fixedTarget: UInt64? = nil
        if flags.contains(.fixed) || flags.contains(.dontUnmap) {
            guard isAligned(newAddress), newAddress <= limit - newLength else { throw .invalidArgument }
            if newAddress < address &+ oldLength && address < newAddress + newLength { throw .invalidArgument }
            if flags.contains(.fixed) { fixedTarget = newAddress }
        }
        let dontUnmap = flags.contains(.dontUnmap)
        guard !dead else { throw .addressSpaceDead }
        guard let source = area(containing: address) else { throw .badAddress }
        if source.flags.contains(.sealed) { throw .permissionDenied }
        let mayMove = flags.contains(.mayMove)
        if oldLength == 0 {
            guard source.isShared else { throw .invalidArgument }
            if !mayMove { throw .noMemory }
        }
        let (oldEnd, overflow) = address.addingReportingOverflow(oldLength)
        if fixedTarget == nil && !dontUnmap && newLength <= oldLength {
            if newLength < oldLength {
                guard !overflow, oldEnd <= limit else { throw .invalidArgument }
                try checkNotSealed(address + newLength, oldEnd)
                if exceeds(unmapSplits(address + newLength, oldEnd)) { throw .noMemory }
                removeRange(address + newLength, oldEnd)
            }
            return address
        }
        if let target = fixedTarget, oldLength == newLength, oldLength != 0 {
            // Every VMA (or part) of the old range moves to its offset from the target; holes stay.
            var cursor = address
            while cursor < oldEnd, let next = areas.first(where: { $0.end > cursor && $0.start < oldEnd }) {
                if next.flags.contains(.sealed) { throw .permissionDenied }
                if areas.count + 3 >= configuration.maxMapCount { throw .noMemory }
                let start = max(next.start, cursor)
                let stop = min(next.end, oldEnd)
                let pieceTarget = target + (start - address)
                try checkNotSealed(pieceTarget, pieceTarget + (stop - start))
                removeRange(pieceTarget, pieceTarget + (stop - start))
                if pieceTarget < configuration.mmapMinAddress { throw .permissionDenied }
                moveArea(start, stop - start, to: pieceTarget, newLength: stop - start, keepSource: dontUnmap)
                cursor = stop
            }
            return target
        }
        let moveLength = min(oldLength, newLength)
        // A fixed shrink unmaps the tail first: only the kept part must lie in the VMA.
        let fixedShrink = fixedTarget != nil && oldLength > newLength
        guard oldLength == 0 || (!overflow && address + moveLength <= source.end && (fixedShrink || oldEnd <= source.end))
        else { throw .badAddress }
        if fixedShrink {
            guard oldEnd <= limit else { throw .invalidArgument }
            try checkNotSealed(address + newLength, oldEnd)
        }
        if source.flags.contains(.locked) && newLength > oldLength && oldLength != 0 {
            try checkLockLimit(adding: newLength - oldLength, mapping: false)
        }
        if fixedTarget == nil && !dontUnmap && oldLength != 0 {
            let (newEnd, newOverflow) = address.addingReportingOverflow(newLength)
            if oldEnd == source.end, !newOverflow, newEnd <= limit, overlapping(source.end, newEnd).isEmpty {
                let oldAreaEnd = source.end
                areas[index(containing: address)!].end = newEnd
                mergeAll()
                let merged = area(containing: address)!
                if merged.flags.contains(.locked) && !merged.flags.contains(.lockOnFault) && !merged.protection.isEmpty {
                    let write = !merged.isShared && merged.protection.contains(.write)
                    for page in eachPage(oldAreaEnd, newEnd) { try? fault(at: page, access: write ? .write : .read) }
                }
                return address
            }
            guard mayMove else { throw .noMemory }
        }
        if areas.count + 3 >= configuration.maxMapCount { throw .noMemory }
        let target: UInt64
        if let fixedTarget {
            try checkNotSealed(fixedTarget, fixedTarget + newLength)
            removeRange(fixedTarget, fixedTarget + newLength)
            target = fixedTarget
        } else if dontUnmap && newAddress != 0 {
            var hint = pageOf(newAddress)
            if hint < configuration.hintMinAddress { hint = configuration.hintMinAddress }
            if hint <= limit - newLength && overlapping(hint, hint + newLength).isEmpty {
                target = hint
            } else {
                target = try freeArea(length: newLength)
            }
        } else {
            target = try freeArea(length: newLength)
        }
        // A fixed target below mmap_min_addr: EPERM once the target (and a shrinking tail) is gone.
        if fixedTarget != nil && oldLength > newLength { removeRange(address + newLength, address + oldLength) }
        if let fixedTarget, fixedTarget < configuration.mmapMinAddress { throw .permissionDenied }
        if oldLength == 0 {
            var copy = source
            copy.objectPage = source.objectPage + (address - source.start) / Self.pageSize
            copy.start = target
            copy.end = target + newLength
            insert(copy)
            mergeAll()
            return target
        }
        moveArea(address, moveLength, to: target, newLength: newLength, keepSource: dontUnmap)
        if source.flags.contains(.locked) && !source.flags.contains(.lockOnFault) && newLength > moveLength
            && !source.protection.isEmpty
        {
            let write = !source.isShared && source.protection.contains(.write)
            for page in eachPage(target + moveLength, target + newLength) { try? fault(at: page, access: write ? .write : .read) }
        }
        return target
    }

    /// Moves the pages of `[source, source + length)` to a new area of `newLength` bytes at
    /// `target` (which is free), then unmaps the source. Moved present pages become soft-dirty.
    func moveArea(_ source: UInt64, _ length: UInt64, to target: UInt64, newLength: UInt64, keepSource: Bool = false) {
        let from = area(containing: source)!
        let offset = from.object == nil && from.anon == 0
            ? target / Self.pageSize : from.objectPage + (source - from.start) / Self.pageSize
        var moved = Area(
            start: target, end: target + newLength, protection: from.protection, flags: from.flags,
            object: from.object, objectPage: offset)
        moved.anon = from.anon
        var carried: [UInt64: Page] = [:]
        for offset in stride(from: 0, to: length, by: Int(Self.pageSize)) {
            guard var entry = pages[source + offset] else { continue }
            entry.softDirty = true  // every moved entry, present, PROT_NONE or swapped
            carried[target + offset] = entry
        }
        if keepSource {
            // DONTUNMAP: the new area merges first, still locked (a neighbour of the old area
            // becomes part of it); the old area (or what it merged into) stays, emptied, and
            // loses its lock as a whole, still charged.
            dropPages(source, source + length)
            insert(moved)
            mergeAll()
            let i = index(containing: source)!
            if areas[i].flags.contains(.locked) { leakedLockedPages += (areas[i].end - areas[i].start) / Self.pageSize }
            areas[i].flags.subtract([.locked, .lockOnFault])
            if areas[i].start == source && areas[i].end == source + length && areas[i].object == nil { areas[i].anon = 0 }
        } else {
            removeRange(source, source + length)
            insert(moved)
        }
        pages.merge(carried) { _, new in new }
        mergeAll()
    }

    func advise(address: UInt64, length: UInt64, advice: AddressSpace.Advice) throws(MemoryError) {
        guard isAligned(address), let length = roundUp(length), !address.addingReportingOverflow(length).overflow
        else { throw .invalidArgument }
        if length == 0 { return }
        guard address <= limit, length <= limit - address else { throw .noMemory }
        guard !dead else { throw .addressSpaceDead }
        let end = address + length
        let discards: Set<AddressSpace.Advice> = [.dontNeed, .dontNeedLocked, .free, .remove, .dontFork, .wipeOnFork, .guardInstall]
        func refusedBySeal(_ area: Area) -> Bool {
            discards.contains(advice) && area.flags.contains(.sealed) && !area.isShared && !area.protection.contains(.write)
        }
        switch advice {
        case .normal, .random, .sequential, .dontFork, .doFork, .wipeOnFork, .keepOnFork, .dontDump, .doDump,
            .mergeable, .unmergeable, .hugePage, .noHugePage:
            try walk(address, end, stopAtHole: false) { area, start, stop throws(MemoryError) in
                if refusedBySeal(area) { throw .permissionDenied }
                var flags = area.flags
                switch advice {
                case .normal: flags.subtract([.randomRead, .sequentialRead])
                case .random: flags = flags.subtracting(.sequentialRead).union(.randomRead)
                case .sequential: flags = flags.subtracting(.randomRead).union(.sequentialRead)
                case .dontFork: flags.insert(.dontCopy)
                case .doFork: flags.remove(.dontCopy)
                case .wipeOnFork:
                    if area.isShared { throw .invalidArgument }
                    flags.insert(.wipeOnFork)
                case .keepOnFork: flags.remove(.wipeOnFork)
                case .dontDump: flags.insert(.dontDump)
                case .doDump: flags.remove(.dontDump)
                case .mergeable: if !area.isShared { flags.insert(.mergeable) }
                case .unmergeable: flags.remove(.mergeable)
                case .hugePage: flags = flags.subtracting(.noHugePage).union(.hugePage)
                default: flags = flags.subtracting(.hugePage).union(.noHugePage)
                }
                try modify(area, start, stop, protection: area.protection, flags: flags)
            }
        case .willNeed:
            try walk(address, end, stopAtHole: false) { _, _, _ throws(MemoryError) in }
        case .dontNeed, .dontNeedLocked, .free, .remove, .cold, .pageOut:
            try walk(address, end, stopAtHole: false) { area, start, stop throws(MemoryError) in
                if refusedBySeal(area) { throw .permissionDenied }
                if area.flags.contains(.locked) && advice != .dontNeedLocked { throw .invalidArgument }
                switch advice {
                case .free: if area.isShared { throw .invalidArgument }
                case .remove:
                    guard area.isShared else { throw .invalidArgument }  // shared anonymous memory is always may-write
                default: break
                }
                switch advice {
                case .dontNeed, .dontNeedLocked:
                    dropPages(start, stop)
                case .remove:
                    dropPages(start, stop)
                    let object = area.object!
                    let first = area.objectPage + (start - area.start) / Self.pageSize
                    let last = area.objectPage + (stop - area.start) / Self.pageSize
                    for objectPage in first..<last {
                        sharedTokens[object]?[objectPage] = nil
                        sharedResident[object]?.remove(objectPage)
                    }
                    // Every other mapping of those object pages loses them too.
                    for other in areas where other.object == object {
                        for page in eachPage(other.start, other.end) {
                            let objectPage = other.objectPage + (page - other.start) / Self.pageSize
                            if objectPage >= first && objectPage < last { pages[page] = nil }
                        }
                    }
                case .pageOut:
                    for page in pages.keys where page >= start && page < stop {
                        var entry = pages[page]!
                        guard !area.isShared, entry.residence == .mapped, entry.content != .zeroPage else { continue }
                        entry.residence = .swapped
                        entry.writable = false
                        pages[page] = entry
                    }
                default:
                    break  // FREE only clears dirty bits (not modelled); COLD nothing visible
                }
            }
        case .populateRead, .populateWrite:
            let access: AddressSpace.Access = advice == .populateWrite ? .write : .read
            var cursor = address
            while cursor < end {
                guard let area = area(containing: cursor) else { throw .noMemory }
                if !area.protection.contains(access == .write ? .write : .read) { throw .invalidArgument }
                for page in eachPage(cursor, min(end, area.end)) { try fault(at: page, access: access) }
                cursor = min(end, area.end)
            }
        default:
            preconditionFailure("advice \(advice) is not generated")
        }
    }

    func fault(at address: UInt64, access: AddressSpace.Access) throws(MemoryError) {
        guard !dead, address < limit, let area = area(containing: address), Self.allows(area.protection, access)
        else { throw .segmentationFault }
        let address = pageOf(address)
        let write = access == .write
        if write && area.object == nil && area.anon == 0 { prepareAnon(at: address) }
        guard var entry = pages[address] else {
            if let object = area.object {
                let objectPage = area.objectPage + (address - area.start) / Self.pageSize
                sharedResident[object, default: []].insert(objectPage)
                pages[address] = Page(
                    content: .shared(object: object, page: objectPage), residence: .mapped,
                    writable: area.protection.contains(.write), softDirty: true)
            } else if write {
                pages[address] = Page(content: .anonymous(0), residence: .mapped, writable: true, softDirty: true)
            } else {
                pages[address] = Page(content: .zeroPage, residence: .mapped, writable: false, softDirty: false)
            }
            return
        }
        switch entry.residence {
        case .swapped:
            // Swap-in: writable only for a write; soft-dirty kept or set by the write.
            entry.residence = .mapped
            entry.writable = write
            entry.softDirty = entry.softDirty || write
        case .protNone:
            entry.residence = .mapped
            entry.writable = false
        case .mapped:
            break
        }
        if write && !entry.writable {
            // Copy the zero page; reuse anything else (shared, or private and exclusive).
            if entry.content == .zeroPage { entry.content = .anonymous(0) }
            entry.writable = true
            entry.softDirty = true
        }
        pages[address] = entry
    }

    /// `anon_vma_prepare`: the next, else the previous, adjacent area's identity when it differs
    /// at most in protection and soft-dirty and its offsets are contiguous; else a new one.
    func prepareAnon(at address: UInt64) {
        let i = index(containing: address)!
        let area = areas[i]
        var chosen: UInt64 = 0
        for j in [i + 1, i - 1] where j >= 0 && j < areas.count && areas[j].anon != 0 && areas[j].object == nil {
            let (lower, upper) = j > i ? (area, areas[j]) : (areas[j], area)
            if lower.end == upper.start, lower.flags.subtracting(.softDirty) == upper.flags.subtracting(.softDirty),
                lower.objectPage + (lower.end - lower.start) / Self.pageSize == upper.objectPage
            {
                chosen = areas[j].anon
                break
            }
        }
        if chosen == 0 {
            chosen = nextAnon
            nextAnon += 2
        }
        areas[i].anon = chosen
    }

    func read(at address: UInt64) throws(MemoryError) -> UInt64 {
        let page = pageOf(address)
        if address < limit, let entry = pages[page], entry.residence == .mapped { return token(of: entry) }
        try fault(at: address, access: .read)
        return token(of: pages[page]!)
    }

    func write(_ token: UInt64, at address: UInt64) throws(MemoryError) {
        let page = pageOf(address)
        let ready = address < limit && pages[page].map { $0.residence == .mapped && $0.writable } == true
        if !ready { try fault(at: address, access: .write) }
        var entry = pages[page]!
        switch entry.content {
        case .zeroPage: preconditionFailure("writable zero page")
        case .anonymous: entry.content = .anonymous(token)
        case .shared(let object, let objectPage): sharedTokens[object, default: [:]][objectPage] = token
        }
        pages[page] = entry
    }

    func migrate(address: UInt64, length: UInt64) throws(MemoryError) -> Int {
        guard isAligned(address), let length = roundUp(length), length != 0, address <= limit,
            length <= limit - address
        else { throw .invalidArgument }
        guard !dead else { throw .addressSpaceDead }
        let end = address + length
        guard isCovered(address, end) else { throw .noMemory }
        // Tokens follow the pages, so only the count is visible.
        var migrated = 0
        for (page, entry) in pages where page >= address && page < end {
            if !area(containing: page)!.isShared && entry.residence == .mapped && entry.content != .zeroPage {
                migrated += 1
            }
        }
        return migrated
    }

    func clearSoftDirty(address: UInt64, length: UInt64) throws(MemoryError) {
        guard isAligned(address), let length = roundUp(length), address <= limit, length <= limit - address
        else { throw .invalidArgument }
        if length == 0 { return }
        guard !dead else { throw .addressSpaceDead }
        let end = address + length
        for i in areas.indices where areas[i].start >= address && areas[i].end <= end {
            areas[i].flags.remove(.softDirty)
        }
        for page in pages.keys where page >= address && page < end {
            pages[page]!.softDirty = false
            if pages[page]!.residence != .swapped { pages[page]!.writable = false }
        }
    }

    func softDirtyPages(address: UInt64, length: UInt64) throws(MemoryError) -> [UInt64] {
        guard isAligned(address), let length = roundUp(length), address <= limit, length <= limit - address
        else { throw .invalidArgument }
        guard !dead else { throw .addressSpaceDead }
        let end = address + length
        var result: [UInt64] = []
        for area in overlapping(address, end) {
            for page in eachPage(max(address, area.start), min(end, area.end))
            where area.flags.contains(.softDirty) || pages[page]?.softDirty == true {
                result.append(page)
            }
        }
        return result
    }

    /// `faultRange` (`hmm_range_fault`): faults `[start, end)` in page by page, failing with
    /// `EFAULT` at the first page without a VMA allowing the access (earlier pages stay faulted).
    func faultRange(_ start: UInt64, _ end: UInt64, write: Bool) throws(MemoryError) {
        guard isAligned(start), isAligned(end), start < end, end <= limit else { throw .invalidArgument }
        guard !dead else { throw .addressSpaceDead }
        let access: AddressSpace.Access = write ? .write : .read
        for page in eachPage(start, end) {
            guard let area = area(containing: page), Self.allows(area.protection, access) else { throw .badAddress }
            try fault(at: page, access: access)
        }
    }

    func teardown() {
        dead = true
        areas.removeAll()
        pages.removeAll()
    }
}

// MARK: - The rest of the syscall surface

extension ReferenceModel {
    /// Pages in locked areas, optionally only inside `[start, end)`.
    func lockedPages(_ start: UInt64 = 0, _ end: UInt64 = .max) -> UInt64 {
        areas.filter { $0.flags.contains(.locked) }.reduce(0) {
            $0 + (min($1.end, end) > max($1.start, start) ? (min($1.end, end) - max($1.start, start)) / Self.pageSize : 0)
        }
    }

    var canLockFreely: Bool { configuration.capabilities.contains(.ipcLock) || configuration.lockedMemoryLimit == nil }

    func checkLockLimit(adding length: UInt64, mapping: Bool) throws(MemoryError) {
        if canLockFreely { return }
        let limit = configuration.lockedMemoryLimit!
        if mapping && limit == 0 { throw .permissionDenied }
        if (lockedPages() + leakedLockedPages + length / Self.pageSize) * Self.pageSize > limit { throw .wouldBlock }
    }

    func checkCanLock() throws(MemoryError) {
        if !configuration.capabilities.contains(.ipcLock) && configuration.lockedMemoryLimit == 0 { throw .permissionDenied }
    }

    /// Faults the locked, not lock-on-fault areas of `[start, end)`: private writable memory for
    /// write, the rest for read; a PROT_NONE area stops it (`ENOMEM`) unless `ignoreErrors`.
    func populateLocked(_ start: UInt64, _ end: UInt64, ignoreErrors: Bool) throws(MemoryError) {
        var cursor = start
        while cursor < end, let area = areas.first(where: { $0.end > cursor && $0.start < end }) {
            cursor = max(cursor, area.start)
            let stop = min(end, area.end)
            if area.flags.contains(.locked) && !area.flags.contains(.lockOnFault) {
                if area.protection.isEmpty {
                    if !ignoreErrors { throw .noMemory }
                } else {
                    let write = !area.isShared && area.protection.contains(.write)
                    for page in eachPage(cursor, stop) {
                        do throws(MemoryError) {
                            try fault(at: page, access: write ? .write : .read)
                        } catch {
                            if !ignoreErrors { throw .noMemory }
                        }
                    }
                }
            }
            cursor = stop
        }
    }

    func lock(address: UInt64, length: UInt64, onFault: Bool) throws(MemoryError) {
        try checkCanLock()
        let start = pageOf(address)
        guard let rounded = roundUp(length &+ (address - start)), rounded != 0 else { return }
        let (end, overflow) = start.addingReportingOverflow(rounded)
        guard !overflow else { throw .invalidArgument }
        guard !dead else { throw .addressSpaceDead }
        if !canLockFreely {
            let limit = configuration.lockedMemoryLimit!
            let total = lockedPages() + leakedLockedPages + rounded / Self.pageSize - lockedPages(start, end)
            if total * Self.pageSize > limit { throw .noMemory }
        }
        try walk(start, end, stopAtHole: true) { area, pieceStart, pieceEnd throws(MemoryError) in
            var flags = area.flags
            flags.insert(.locked)
            if onFault { flags.insert(.lockOnFault) } else { flags.remove(.lockOnFault) }
            try modify(area, pieceStart, pieceEnd, protection: area.protection, flags: flags)
        }
        if !onFault { try populateLocked(start, end, ignoreErrors: false) }
    }

    func unlock(address: UInt64, length: UInt64) throws(MemoryError) {
        let start = pageOf(address)
        guard let rounded = roundUp(length &+ (address - start)), rounded != 0 else { return }
        let (end, overflow) = start.addingReportingOverflow(rounded)
        guard !overflow else { throw .invalidArgument }
        guard !dead else { throw .addressSpaceDead }
        try walk(start, end, stopAtHole: true) { area, pieceStart, pieceEnd throws(MemoryError) in
            try modify(area, pieceStart, pieceEnd, protection: area.protection, flags: area.flags.subtracting([.locked, .lockOnFault]))
        }
    }

    func lockAll(_ flags: AddressSpace.LockAllFlags) throws(MemoryError) {
        guard !flags.isEmpty, flags.isSubset(of: [.current, .future, .onFault]),
            !flags.intersection([.current, .future]).isEmpty
        else { throw .invalidArgument }
        try checkCanLock()
        guard !dead else { throw .addressSpaceDead }
        if flags.contains(.current) && !canLockFreely {
            if mappedPages * Self.pageSize > configuration.lockedMemoryLimit! { throw .noMemory }
        }
        var added: MappingFlags = [.locked]
        if flags.contains(.onFault) { added.insert(.lockOnFault) }
        defaultFlags = flags.contains(.future) ? added : []
        guard flags.contains(.current) else { return }
        var cursor: UInt64 = 0
        while let area = areas.first(where: { $0.start >= cursor }) {
            try modify(area, area.start, area.end, protection: area.protection,
                       flags: area.flags.subtracting([.locked, .lockOnFault]).union(added))
            cursor = area.end
        }
        if !flags.contains(.onFault) { try? populateLocked(0, limit, ignoreErrors: true) }
    }

    func unlockAll() throws(MemoryError) {
        guard !dead else { throw .addressSpaceDead }
        defaultFlags = []
        var cursor: UInt64 = 0
        while let area = areas.first(where: { $0.start >= cursor }) {
            try modify(area, area.start, area.end, protection: area.protection, flags: area.flags.subtracting([.locked, .lockOnFault]))
            cursor = area.end
        }
    }

    func seal(address: UInt64, length: UInt64) throws(MemoryError) {
        guard isAligned(address), let rounded = roundUp(length), !address.addingReportingOverflow(rounded).overflow
        else { throw .invalidArgument }
        if length == 0 { return }
        guard !dead else { throw .addressSpaceDead }
        let end = address + rounded
        guard isCovered(address, end) else { throw .noMemory }
        try walk(address, end, stopAtHole: true) { area, start, stop throws(MemoryError) in
            try modify(area, start, stop, protection: area.protection, flags: area.flags.union(.sealed))
        }
    }

    func residency(address: UInt64, length: UInt64) throws(MemoryError) -> [Bool] {
        guard isAligned(address) else { throw .invalidArgument }
        if length == 0 { return [] }
        guard let rounded = roundUp(length), rounded != 0, address <= limit, rounded <= limit - address else { throw .noMemory }
        guard !dead else { throw .addressSpaceDead }
        var result: [Bool] = []
        try walk(address, address + rounded, stopAtHole: true) { area, start, stop throws(MemoryError) in
            for page in eachPage(start, stop) {
                if let object = area.object {
                    let objectPage = area.objectPage + (page - area.start) / Self.pageSize
                    result.append(sharedResident[object]?.contains(objectPage) == true)
                } else if let entry = pages[page] {
                    result.append(entry.residence != .swapped)
                } else {
                    result.append(false)
                }
            }
        }
        return result
    }

    func sync(address: UInt64, length: UInt64, flags: AddressSpace.SyncFlags) throws(MemoryError) {
        guard flags.isSubset(of: [.async, .invalidate, .sync]), isAligned(address) else { throw .invalidArgument }
        if flags.contains(.async) && flags.contains(.sync) { throw .invalidArgument }
        let rounded = (length &+ (Self.pageSize - 1)) & ~(Self.pageSize - 1)
        let end = address &+ rounded
        if end < address { throw .noMemory }
        if end == address { return }
        guard !dead else { throw .addressSpaceDead }
        try walk(address, end, stopAtHole: false) { area, _, _ throws(MemoryError) in
            if flags.contains(.invalidate) && area.flags.contains(.locked) { throw .busy }
        }
    }

    /// brk: the new break, or the current one when refused.
    func setBreak(_ address: UInt64) throws(MemoryError) -> UInt64 {
        guard !dead else { throw .addressSpaceDead }
        guard let startBreak = configuration.programBreakStart else { return 0 }
        if address < startBreak { return programBreak }
        guard let newEnd = roundUp(address), let oldEnd = roundUp(programBreak) else { return programBreak }
        if newEnd == oldEnd {
            programBreak = address
            return address
        }
        if newEnd < oldEnd {
            if overlapping(newEnd, oldEnd).isEmpty { return programBreak }
            do throws(MemoryError) { try checkNotSealed(newEnd, oldEnd) } catch { return programBreak }
            if exceeds(unmapSplits(newEnd, oldEnd)) { return programBreak }
            removeRange(newEnd, oldEnd)
            programBreak = address
            return address
        }
        guard newEnd <= limit - Self.pageSize else { return programBreak }
        if let next = areas.first(where: { $0.end > oldEnd }) {
            let gapStart = next.flags.contains(.growsDown) ? next.start &- AddressSpace.stackGuardGap : next.start
            if newEnd + Self.pageSize > gapStart { return programBreak }
        }
        var flags: MappingFlags = [.mayRead, .mayWrite, .mayExec, .account, .softDirty]
        flags.formUnion(defaultFlags)
        if flags.contains(.locked) && !canLockFreely
            && (lockedPages() + leakedLockedPages) * Self.pageSize + (newEnd - oldEnd) > configuration.lockedMemoryLimit!
        {
            return programBreak
        }
        if areas.count >= configuration.maxMapCount { return programBreak }
        insert(Area(start: oldEnd, end: newEnd, protection: .readWrite, flags: flags, object: nil, objectPage: oldEnd / Self.pageSize))
        mergeAll()
        if flags.contains(.locked) && !flags.contains(.lockOnFault) {
            for page in eachPage(oldEnd, newEnd) { try? fault(at: page, access: .write) }
        }
        programBreak = address
        return address
    }
}
