import Shootdown

// MARK: - The rest of the syscall surface

extension ReferenceModel {
    /// Pages in locked areas, optionally only inside `[start, end)`.
    public func lockedPages(_ start: UInt64 = 0, _ end: UInt64 = .max) -> UInt64 {
        areas.filter { $0.flags.contains(.locked) }.reduce(0) {
            $0 + (min($1.end, end) > max($1.start, start) ? (min($1.end, end) - max($1.start, start)) / Self.pageSize : 0)
        }
    }

    public var canLockFreely: Bool { configuration.capabilities.contains(.ipcLock) || configuration.lockedMemoryLimit == nil }

    public func checkLockLimit(adding length: UInt64, mapping: Bool) throws(MemoryError) {
        if canLockFreely { return }
        let limit = configuration.lockedMemoryLimit!
        if mapping && limit == 0 { throw .permissionDenied }
        if (lockedPages() + leakedLockedPages + length / Self.pageSize) * Self.pageSize > limit { throw .wouldBlock }
    }

    public func checkCanLock() throws(MemoryError) {
        if !configuration.capabilities.contains(.ipcLock) && configuration.lockedMemoryLimit == 0 { throw .permissionDenied }
    }

    /// Faults the locked, not lock-on-fault areas of `[start, end)`: private writable memory for
    /// write, the rest for read; a PROT_NONE area stops it (`ENOMEM`) unless `ignoreErrors`.
    public func populateLocked(_ start: UInt64, _ end: UInt64, ignoreErrors: Bool) throws(MemoryError) {
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

    /// The lock mark of the page mapped at `page` (``Page/lockMark``; shared pages keep theirs in
    /// ``sharedLockMarks``); 0 without a page or for the zero page.
    public func lockMark(at page: UInt64) -> UInt8 {
        guard let entry = pages[page], entry.residence != .swapped else { return 0 }
        switch entry.content {
        case .zeroPage: return 0
        case .anonymous: return entry.lockMark
        case .shared(let object, let objectPage): return sharedLockMarks[object]?[objectPage] ?? 0
        }
    }

    /// Sets the lock mark of the page mapped at `page` (nothing for the zero page).
    public func setLockMark(_ mark: UInt8, at page: UInt64) {
        guard var entry = pages[page], entry.residence != .swapped else { return }
        switch entry.content {
        case .zeroPage: return
        case .anonymous:
            entry.lockMark = mark
            pages[page] = entry
        case .shared(let object, let objectPage): sharedLockMarks[object, default: [:]][objectPage] = mark == 0 ? nil : mark
        }
    }

    /// mlock (`locking`) or munlock of `[start, end)` for the pages still mlocked there: the
    /// lock count one up, or one down and unmarked at zero.
    func adjustLockMarks(_ start: UInt64, _ end: UInt64, locking: Bool) {
        for page in eachPage(start, end) {
            let mark = lockMark(at: page)
            guard mark != 0 else { continue }
            setLockMark(locking ? (mark == .max ? mark : mark + 1) : (mark <= 2 ? 0 : mark - 1), at: page)
        }
    }

    public func lock(address: UInt64, length: UInt64, onFault: Bool) throws(MemoryError) {
        try checkCanLock()
        let start = pageOf(address)
        let rounded = roundUp(length &+ (address - start)) ?? 0
        let (end, overflow) = start.addingReportingOverflow(rounded)
        guard !dead else { throw .addressSpaceDead }
        // The limit first, even for an empty or wrapping range.
        if !canLockFreely {
            let limit = configuration.lockedMemoryLimit!
            let total = lockedPages() + leakedLockedPages + rounded / Self.pageSize - lockedPages(start, overflow ? .max : end)
            if total * Self.pageSize > limit { throw .noMemory }
        }
        guard !overflow else { throw .invalidArgument }
        guard rounded != 0 else { return }
        var newlyLocked: [(UInt64, UInt64)] = []
        defer { for (from, to) in newlyLocked { adjustLockMarks(from, to, locking: true) } }
        try walk(start, end, stopAtHole: true) { area, pieceStart, pieceEnd throws(MemoryError) in
            if !area.flags.contains(.locked) { newlyLocked.append((pieceStart, pieceEnd)) }
            var flags = area.flags
            flags.insert(.locked)
            if onFault { flags.insert(.lockOnFault) } else { flags.remove(.lockOnFault) }
            try modify(area, pieceStart, pieceEnd, protection: area.protection, flags: flags)
        }
        if !onFault { try populateLocked(start, end, ignoreErrors: false) }
    }

    public func unlock(address: UInt64, length: UInt64) throws(MemoryError) {
        let start = pageOf(address)
        guard let rounded = roundUp(length &+ (address - start)), rounded != 0 else { return }
        let (end, overflow) = start.addingReportingOverflow(rounded)
        guard !overflow else { throw .invalidArgument }
        guard !dead else { throw .addressSpaceDead }
        try walk(start, end, stopAtHole: true) { area, pieceStart, pieceEnd throws(MemoryError) in
            if area.flags.contains(.locked) { adjustLockMarks(pieceStart, pieceEnd, locking: false) }
            try modify(area, pieceStart, pieceEnd, protection: area.protection, flags: area.flags.subtracting([.locked, .lockOnFault]))
        }
    }

    public func lockAll(_ flags: AddressSpace.LockAllFlags) throws(MemoryError) {
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
        var newlyLocked: [(UInt64, UInt64)] = []
        defer { for (from, to) in newlyLocked { adjustLockMarks(from, to, locking: true) } }
        var cursor: UInt64 = 0
        while let area = areas.first(where: { $0.start >= cursor }) {
            if !area.flags.contains(.locked) { newlyLocked.append((area.start, area.end)) }
            try modify(area, area.start, area.end, protection: area.protection,
                       flags: area.flags.subtracting([.locked, .lockOnFault]).union(added))
            cursor = area.end
        }
        if !flags.contains(.onFault) { try? populateLocked(0, limit, ignoreErrors: true) }
    }

    public func unlockAll() throws(MemoryError) {
        guard !dead else { throw .addressSpaceDead }
        defaultFlags = []
        var cursor: UInt64 = 0
        while let area = areas.first(where: { $0.start >= cursor }) {
            if area.flags.contains(.locked) { adjustLockMarks(area.start, area.end, locking: false) }
            try modify(area, area.start, area.end, protection: area.protection, flags: area.flags.subtracting([.locked, .lockOnFault]))
            cursor = area.end
        }
    }

    public func seal(address: UInt64, length: UInt64) throws(MemoryError) {
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

    public func residency(address: UInt64, length: UInt64) throws(MemoryError) -> [Bool] {
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

    public func sync(address: UInt64, length: UInt64, flags: AddressSpace.SyncFlags) throws(MemoryError) {
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
    public func setBreak(_ address: UInt64) throws(MemoryError) -> UInt64 {
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
