import Shootdown

// The operations of the original differential surface: map, unmap, mprotect, mremap, madvise,
// faults and accesses, migration, soft-dirty, mirror faults and teardown.
extension ReferenceModel {
    // MARK: - Operations

    public func map(
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
            objectPageLimits[nextObject] = length / Self.pageSize
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

    public func unmap(address: UInt64, length: UInt64) throws(MemoryError) {
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
    public func isSealed(_ start: UInt64, _ end: UInt64) -> Bool {
        overlapping(start, end).contains { $0.flags.contains(.sealed) }
    }

    /// Visits the areas of `[start, end)` in order with their piece of the range; a hole is
    /// `ENOMEM`, at once when `stopAtHole`, else after the walk.
    public func walk(
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
    public func modify(_ area: Area, _ start: UInt64, _ end: UInt64, protection: Protection, flags: MappingFlags)
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

    public func protect(address: UInt64, length: UInt64, protection: Protection) throws(MemoryError) {
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

    public func remap(
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
    public func remap(
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
        if source.flags.contains(.locked) && newLength > oldLength {
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
            if fixedShrink {
                // The shrinking tail's munmap checks, once the target is gone.
                guard oldEnd <= limit else { throw .invalidArgument }
                try checkNotSealed(address + newLength, oldEnd)
            }
            target = fixedTarget
        } else if dontUnmap && newAddress != 0 {
            // Taken as it is (not raised to hintMinAddress as mmap's hints are).
            let hint = pageOf(newAddress)
            if hint >= configuration.mmapMinAddress && hint <= limit - newLength && overlapping(hint, hint + newLength).isEmpty {
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
    public func moveArea(_ source: UInt64, _ length: UInt64, to target: UInt64, newLength: UInt64, keepSource: Bool = false) {
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
        var stillLocked: (start: UInt64, end: UInt64)? = nil
        if keepSource {
            // DONTUNMAP: the new area merges first, still locked (a neighbour of the old area
            // becomes part of it); the old area (or what it merged into) stays, emptied, and
            // loses its lock as a whole, still charged.
            dropPages(source, source + length)
            insert(moved)
            mergeAll()
            let i = index(containing: source)!
            if areas[i].flags.contains(.locked) { leakedLockedPages += (areas[i].end - areas[i].start) / Self.pageSize }
            if areas[i].flags.contains(.locked) || areas[i].flags.contains(.lockOnFault) {
                stillLocked = (areas[i].start, areas[i].end)
            }
            areas[i].flags.subtract([.locked, .lockOnFault])
            if areas[i].start == source && areas[i].end == source + length && areas[i].object == nil { areas[i].anon = 0 }
        } else {
            removeRange(source, source + length)
            insert(moved)
        }
        pages.merge(carried) { _, new in new }
        if let stillLocked {
            // The pages the old area (or what the new one merged into) maps stay mlocked, with a
            // count of at least one.
            for page in eachPage(stillLocked.start, stillLocked.end) where pages[page] != nil {
                setLockMark(max(lockMark(at: page), 2), at: page)
            }
        }
        mergeAll()
    }

    public func advise(address: UInt64, length: UInt64, advice: AddressSpace.Advice) throws(MemoryError) {
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
                        sharedDirty[object]?.remove(objectPage)
                        sharedLockMarks[object]?[objectPage] = nil
                    }
                    // Every other mapping of those object pages loses them too.
                    for other in areas where other.object == object {
                        for page in eachPage(other.start, other.end) {
                            let objectPage = other.objectPage + (page - other.start) / Self.pageSize
                            if objectPage >= first && objectPage < last { pages[page] = nil }
                        }
                    }
                case .pageOut where area.isShared:
                    // Unmapped where this entry is the page's only mapping; dropped from the
                    // object's cache if never written.
                    for page in pages.keys.sorted() where page >= start && page < stop {
                        guard let entry = pages[page], entry.residence != .swapped,
                            case .shared(let object, let objectPage) = entry.content,
                            pages.values.filter({ $0.content == entry.content }).count == 1
                        else { continue }
                        if lockMark(at: page) != 0 {
                            setLockMark(1, at: page)  // still mlocked: tried, put back, count reset
                            continue
                        }
                        pages[page] = nil
                        if sharedDirty[object]?.contains(objectPage) != true {
                            sharedResident[object]?.remove(objectPage)
                            sharedTokens[object]?[objectPage] = nil
                        }
                    }
                case .pageOut:
                    for page in pages.keys where page >= start && page < stop {
                        var entry = pages[page]!
                        // A PROT_NONE entry still maps its page: taken like a present one.
                        guard !area.isShared, entry.residence != .swapped, entry.content != .zeroPage else { continue }
                        if entry.lockMark != 0 {
                            pages[page]!.lockMark = 1  // still mlocked: tried, put back, count reset
                            continue
                        }
                        if entry.lazyFree {
                            pages[page] = nil  // discarded: reads zero again
                            continue
                        }
                        entry.residence = .swapped
                        entry.writable = false
                        pages[page] = entry
                    }
                case .free:
                    for page in pages.keys where page >= start && page < stop {
                        // PROT_NONE entries still map their pages: freed lazily too.
                        if pages[page]!.residence != .swapped, case .anonymous = pages[page]!.content, pages[page]!.lockMark == 0 {
                            pages[page]!.lazyFree = true
                        }
                    }
                default:
                    break  // COLD changes nothing visible
                }
            }
        case .populateRead, .populateWrite:
            let access: AddressSpace.Access = advice == .populateWrite ? .write : .read
            var cursor = address
            while cursor < end {
                guard let area = area(containing: cursor) else { throw .noMemory }
                if !area.protection.contains(access == .write ? .write : .read) { throw .invalidArgument }
                for page in eachPage(cursor, min(end, area.end)) {
                    do throws(MemoryError) {
                        try fault(at: page, access: access)
                    } catch {
                        throw error == .busError ? .badAddress : error
                    }
                }
                cursor = min(end, area.end)
            }
        default:
            preconditionFailure("advice \(advice) is not generated")
        }
    }

    public func fault(at address: UInt64, access: AddressSpace.Access) throws(MemoryError) {
        guard !dead, address < limit, let area = area(containing: address), Self.allows(area.protection, access)
        else { throw .segmentationFault }
        let address = pageOf(address)
        let write = access == .write
        if write && area.object == nil && area.anon == 0 { prepareAnon(at: address) }
        guard var entry = pages[address] else {
            if let object = area.object {
                let objectPage = area.objectPage + (address - area.start) / Self.pageSize
                if objectPage >= objectPageLimits[object] ?? .max {
                    // Fault-around comes first: a read maps the window's cached pages, then fails.
                    if !write { faultAround(area, address, object: object) }
                    throw .busError
                }
                sharedResident[object, default: []].insert(objectPage)
                pages[address] = Page(
                    content: .shared(object: object, page: objectPage), residence: .mapped,
                    writable: area.protection.contains(.write), softDirty: true)
                if write {
                    sharedDirty[object, default: []].insert(objectPage)
                } else {
                    faultAround(area, address, object: object)
                }
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
        if write, case .shared(let object, let objectPage) = entry.content {
            sharedDirty[object, default: []].insert(objectPage)
        }
        if write { entry.lazyFree = false }
        if write && !entry.writable {
            // Copy the zero page; reuse anything else (shared, or private and exclusive).
            if entry.content == .zeroPage { entry.content = .anonymous(0) }
            entry.writable = true
            entry.softDirty = true
        }
        pages[address] = entry
    }

    /// Fault-around after a read fault of shared page `address`: every page of the 16-entry
    /// window (aligned, or from the area's start; within the area and the PTE table) that the
    /// object caches and that has no entry gets one.
    func faultAround(_ area: Area, _ address: UInt64, object: Int) {
        let window: UInt64 = 16
        let pteOffset = (address / Self.pageSize) % 512
        let areaOffset = (address - area.start) / Self.pageSize
        let from = max(pteOffset / window * window, pteOffset - min(pteOffset, areaOffset))
        let to = min(from + window, 512, pteOffset + (area.end - area.start) / Self.pageSize - areaOffset)
        for slot in from..<to where slot != pteOffset {
            let page = address - pteOffset * Self.pageSize + slot * Self.pageSize
            let objectPage = area.objectPage + (page - area.start) / Self.pageSize
            guard pages[page] == nil, sharedResident[object]?.contains(objectPage) == true else { continue }
            pages[page] = Page(
                content: .shared(object: object, page: objectPage), residence: .mapped,
                writable: area.protection.contains(.write), softDirty: true)
        }
    }

    /// `anon_vma_prepare`: the next, else the previous, adjacent area's identity when it differs
    /// at most in protection and soft-dirty and its offsets are contiguous; else a new one.
    public func prepareAnon(at address: UInt64) {
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

    public func read(at address: UInt64) throws(MemoryError) -> UInt64 {
        let page = pageOf(address)
        if address < limit, let entry = pages[page], entry.residence == .mapped { return token(of: entry) }
        try fault(at: address, access: .read)
        return token(of: pages[page]!)
    }

    public func write(_ token: UInt64, at address: UInt64) throws(MemoryError) {
        let page = pageOf(address)
        let ready = address < limit && pages[page].map { $0.residence == .mapped && $0.writable } == true
        if !ready { try fault(at: address, access: .write) }
        var entry = pages[page]!
        switch entry.content {
        case .zeroPage: preconditionFailure("writable zero page")
        case .anonymous:
            entry.content = .anonymous(token)
            entry.lazyFree = false
        case .shared(let object, let objectPage):
            sharedTokens[object, default: [:]][objectPage] = token
            sharedDirty[object, default: []].insert(objectPage)
        }
        pages[page] = entry
    }

    public func migrate(address: UInt64, length: UInt64) throws(MemoryError) -> Int {
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

    public func clearSoftDirty(address: UInt64, length: UInt64) throws(MemoryError) {
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

    public func softDirtyPages(address: UInt64, length: UInt64) throws(MemoryError) -> [UInt64] {
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
    public func faultRange(_ start: UInt64, _ end: UInt64, write: Bool) throws(MemoryError) {
        guard isAligned(start), isAligned(end), start < end, end <= limit else { throw .invalidArgument }
        guard !dead else { throw .addressSpaceDead }
        let access: AddressSpace.Access = write ? .write : .read
        for page in eachPage(start, end) {
            guard let area = area(containing: page), Self.allows(area.protection, access) else { throw .badAddress }
            do throws(MemoryError) {
                try fault(at: page, access: access)
            } catch {
                throw error == .busError ? .badAddress : error
            }
        }
    }

    public func teardown() {
        dead = true
        areas.removeAll()
        pages.removeAll()
    }
}
