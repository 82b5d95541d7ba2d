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
    private(set) var areas: [Area] = []
    private(set) var pages: [UInt64: Page] = [:]
    private(set) var dead = false
    /// Content tokens of shared objects' pages (a page never written reads 0).
    private var sharedTokens: [Int: [UInt64: UInt64]] = [:]
    private var nextObject = 1
    private var nextAnon: UInt64 = 2

    init(configuration: AddressSpace.Configuration) {
        self.configuration = configuration
    }

    // MARK: - Small helpers

    private var limit: UInt64 { Self.limit }

    private func isAligned(_ value: UInt64) -> Bool { value % Self.pageSize == 0 }

    /// `length` rounded up to whole pages, or `nil` if that overflows.
    private func roundUp(_ length: UInt64) -> UInt64? {
        let (sum, overflow) = length.addingReportingOverflow(Self.pageSize - 1)
        return overflow ? nil : sum / Self.pageSize * Self.pageSize
    }

    private func pageOf(_ address: UInt64) -> UInt64 { address / Self.pageSize * Self.pageSize }

    private func index(containing address: UInt64) -> Int? {
        areas.firstIndex { $0.start <= address && address < $0.end }
    }

    func area(containing address: UInt64) -> Area? { index(containing: address).map { areas[$0] } }

    private func overlapping(_ start: UInt64, _ end: UInt64) -> [Area] {
        areas.filter { $0.start < end && start < $0.end }
    }

    /// Whether `[start, end)` is covered by areas without a hole.
    private func isCovered(_ start: UInt64, _ end: UInt64) -> Bool {
        var covered = start
        for area in areas where area.end > covered && area.start < end {
            if area.start > covered { return false }
            covered = area.end
        }
        return covered >= end
    }

    /// Splits an unmap of `[start, end)` needs beyond the ones that shrink: one when a single area
    /// sticks out on both sides (the library's rule).
    private func unmapSplits(_ start: UInt64, _ end: UInt64) -> Int {
        guard let area = area(containing: start) else { return 0 }
        return area.start < start && area.end > end ? 1 : 0
    }

    /// Splits needed so that `[start, end)` is made of whole areas.
    /// Whether `splits` more areas would pass the map-count limit (checked only when splitting).
    private func exceeds(_ splits: Int) -> Bool {
        splits > 0 && areas.count + splits > configuration.maxMapCount
    }

    private func isolateSplits(_ start: UInt64, _ end: UInt64, where changes: (Area) -> Bool = { _ in true }) -> Int {
        let inside = overlapping(start, end)
        guard let first = inside.first, let last = inside.last else { return 0 }
        return (first.start < start && changes(first) ? 1 : 0) + (last.end > end && changes(last) ? 1 : 0)
    }

    /// Splits the area strictly containing `address`, if any.
    private func split(at address: UInt64) {
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
    private func isolate(_ start: UInt64, _ end: UInt64) -> [Int] {
        split(at: start)
        split(at: end)
        return areas.indices.filter { areas[$0].start >= start && areas[$0].end <= end }
    }

    /// Removes every area (or part of one) and every page in `[start, end)`.
    private func removeRange(_ start: UInt64, _ end: UInt64) {
        split(at: start)
        split(at: end)
        areas.removeAll { $0.start >= start && $0.end <= end }
        dropPages(start, end)
    }

    private func dropPages(_ start: UInt64, _ end: UInt64) {
        for address in pages.keys where address >= start && address < end {
            pages[address] = nil
        }
    }

    private func insert(_ area: Area) {
        let position = areas.firstIndex { $0.start >= area.end } ?? areas.count
        areas.insert(area, at: position)
    }

    /// Whether `upper` may be merged into `lower` (ignoring soft-dirty; offsets contiguous; one
    /// `anon_vma` or none).
    private func canMerge(_ lower: Area, _ upper: Area) -> Bool {
        lower.end == upper.start && lower.protection == upper.protection
            && lower.flags.subtracting(.softDirty) == upper.flags.subtracting(.softDirty)
            && lower.object == upper.object
            && lower.objectPage + (lower.end - lower.start) / Self.pageSize == upper.objectPage
            && (lower.anon == upper.anon || lower.anon == 0 || upper.anon == 0)
    }

    /// Merges every pair of compatible neighbours; the merged area is soft-dirty if either was.
    private func mergeAll() {
        var merged: [Area] = []
        for area in areas {
            if let last = merged.last, canMerge(last, area) {
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
    private func freeArea(length: UInt64) throws(MemoryError) -> UInt64 {
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
        if replaces {
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
        if options.contains(.locked) { flags.insert(.locked) }
        insert(Area(start: address, end: address + length, protection: protection, flags: flags,
                    object: object, objectPage: object == nil ? address / Self.pageSize : 0))
        mergeAll()
        if (options.contains(.populate) || options.contains(.locked)) && !protection.isEmpty {
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
        if exceeds(unmapSplits(address, end)) { throw .noMemory }
        removeRange(address, end)
    }

    /// Visits the areas of `[start, end)` in order with their piece of the range; a hole is
    /// `ENOMEM`, at once when `stopAtHole`, else after the walk.
    private func walk(
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
    private func modify(_ area: Area, _ start: UInt64, _ end: UInt64, protection: Protection, flags: MappingFlags)
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
            if flags.contains(.locked) && !area.isShared && !wasWritable && protection.contains(.write) {
                for page in eachPage(start, stop) { try? fault(at: page, access: .write) }
            }
        }
    }

    func remap(
        address: UInt64, oldLength: UInt64, newLength: UInt64, move: AddressSpace.RemapMove
    ) throws(MemoryError) -> UInt64 {
        guard isAligned(address), let oldLength = roundUp(oldLength), let newLength = roundUp(newLength),
            newLength != 0
        else { throw .invalidArgument }
        var fixedTarget: UInt64? = nil
        if case .fixed(let target) = move {
            guard isAligned(target), newLength <= limit, target <= limit - newLength else { throw .invalidArgument }
            if target < address &+ oldLength && address < target + newLength { throw .invalidArgument }
            fixedTarget = target
        }
        guard !dead else { throw .addressSpaceDead }
        if let target = fixedTarget, target < configuration.mmapMinAddress { throw .permissionDenied }
        guard let source = area(containing: address) else { throw .badAddress }
        let mayMove = move != .inPlace
        if oldLength == 0 {
            guard source.isShared else { throw .invalidArgument }
            if !mayMove { throw .noMemory }
        }
        let (oldEnd, overflow) = address.addingReportingOverflow(oldLength)
        if fixedTarget == nil && newLength <= oldLength {
            if newLength < oldLength {
                guard !overflow, oldEnd <= limit else { throw .invalidArgument }
                if exceeds(unmapSplits(address + newLength, oldEnd)) { throw .noMemory }
                removeRange(address + newLength, oldEnd)
            }
            return address
        }
        if let target = fixedTarget, oldLength == newLength, oldLength != 0 {
            // Every VMA (or part) of the old range moves to its offset from the target; holes stay.
            var cursor = address
            while cursor < oldEnd, let next = areas.first(where: { $0.end > cursor && $0.start < oldEnd }) {
                if areas.count + 3 >= configuration.maxMapCount { throw .noMemory }
                let start = max(next.start, cursor)
                let stop = min(next.end, oldEnd)
                let pieceTarget = target + (start - address)
                removeRange(pieceTarget, pieceTarget + (stop - start))
                moveArea(start, stop - start, to: pieceTarget, newLength: stop - start)
                cursor = stop
            }
            return target
        }
        let moveLength = min(oldLength, newLength)
        // A fixed shrink unmaps the tail first: only the kept part must lie in the VMA.
        let keptEnd = fixedTarget != nil && oldLength > newLength ? address + newLength : oldEnd
        guard oldLength == 0 || (!overflow && keptEnd <= source.end) else { throw .badAddress }
        if fixedTarget == nil && oldLength != 0 {
            let (newEnd, newOverflow) = address.addingReportingOverflow(newLength)
            if oldEnd == source.end, !newOverflow, newEnd <= limit, overlapping(source.end, newEnd).isEmpty {
                let oldAreaEnd = source.end
                areas[index(containing: address)!].end = newEnd
                mergeAll()
                let merged = area(containing: address)!
                if merged.flags.contains(.locked) && !merged.protection.isEmpty {
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
            removeRange(fixedTarget, fixedTarget + newLength)
            target = fixedTarget
        } else {
            target = try freeArea(length: newLength)
        }
        if oldLength == 0 {
            var copy = source
            copy.objectPage = source.objectPage + (address - source.start) / Self.pageSize
            copy.start = target
            copy.end = target + newLength
            insert(copy)
            mergeAll()
            return target
        }
        if fixedTarget != nil && oldLength > newLength { removeRange(address + newLength, address + oldLength) }
        moveArea(address, moveLength, to: target, newLength: newLength)
        return target
    }

    /// Moves the pages of `[source, source + length)` to a new area of `newLength` bytes at
    /// `target` (which is free), then unmaps the source. Moved present pages become soft-dirty.
    private func moveArea(_ source: UInt64, _ length: UInt64, to target: UInt64, newLength: UInt64) {
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
        removeRange(source, source + length)
        insert(moved)
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
        switch advice {
        case .dontNeed:
            try walk(address, end, stopAtHole: false) { area, start, stop throws(MemoryError) in
                if area.flags.contains(.locked) { throw .invalidArgument }
                dropPages(start, stop)
            }
        case .pageOut:
            try walk(address, end, stopAtHole: false) { area, start, stop throws(MemoryError) in
                if area.flags.contains(.locked) { throw .invalidArgument }
                for page in pages.keys where page >= start && page < stop {
                    var entry = pages[page]!
                    guard !area.isShared, entry.residence == .mapped, entry.content != .zeroPage else { continue }
                    entry.residence = .swapped
                    entry.writable = false
                    pages[page] = entry
                }
            }
        case .hugePage, .noHugePage:
            try walk(address, end, stopAtHole: false) { area, start, stop throws(MemoryError) in
                var flags = area.flags
                if advice == .hugePage {
                    flags.insert(.hugePage)
                    flags.remove(.noHugePage)
                } else {
                    flags.insert(.noHugePage)
                    flags.remove(.hugePage)
                }
                try modify(area, start, stop, protection: area.protection, flags: flags)
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
    private func prepareAnon(at address: UInt64) {
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
