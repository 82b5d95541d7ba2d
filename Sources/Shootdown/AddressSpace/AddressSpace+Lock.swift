import Synchronization

extension AddressSpace {
    /// Flags of ``lockAll(_:)`` (`mlockall`).
    public struct LockAllFlags: OptionSet, Hashable, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }

        /// `MCL_CURRENT`: lock every existing VMA.
        public static let current = LockAllFlags(rawValue: 1)
        /// `MCL_FUTURE`: lock every VMA created later (mmap, brk, growth).
        public static let future = LockAllFlags(rawValue: 2)
        /// `MCL_ONFAULT`: lock on fault (`lf`): nothing is populated up front.
        public static let onFault = LockAllFlags(rawValue: 4)
    }

    /// `mlock2`'s `MLOCK_ONFAULT`.
    public static let lockOnFaultFlag: UInt32 = 1

    /// Pages in locked VMAs plus ``leakedLockedPages`` (`mm->locked_vm`). Caller: mmap lock.
    func lockedPages() -> UInt64 {
        index.all.reduce(leakedLockedPages) { $0 + ($1.isLocked ? ($1.end - $1.start) / Self.pageSize : 0) }
    }

    /// Locked pages inside `[start, end)`. Caller: mmap lock.
    private func lockedPages(_ start: UInt64, _ end: UInt64) -> UInt64 {
        index.intersecting(start, end).reduce(0) {
            $0 + ($1.isLocked ? (min(end, $1.end) - max(start, $1.start)) / Self.pageSize : 0)
        }
    }

    /// `can_do_mlock`: `EPERM` when `RLIMIT_MEMLOCK` is zero and the process lacks
    /// `CAP_IPC_LOCK`.
    private func checkCanLock() throws(MemoryError) {
        if configuration.lockedMemoryLimit == 0 && !configuration.capabilities.contains(.ipcLock) {
            throw .permissionDenied
        }
    }

    /// `mlock_future_ok` for a new locked mapping of `length` bytes (mmap, brk, mremap growth):
    /// `EAGAIN` past `RLIMIT_MEMLOCK` without `CAP_IPC_LOCK`; with `mapping`, a zero limit is
    /// `EPERM` first (`MAP_LOCKED`). Caller: mmap lock.
    func checkLockLimit(adding length: UInt64, mapping: Bool) throws(MemoryError) {
        if configuration.capabilities.contains(.ipcLock) { return }
        guard let limit = configuration.lockedMemoryLimit else { return }
        if mapping && limit == 0 { throw .permissionDenied }
        if (lockedPages() + length / Self.pageSize) * Self.pageSize > limit { throw .wouldBlock }
    }

    /// `mlock2` with raw flags: bits other than `MLOCK_ONFAULT` are `EINVAL` before anything else.
    public func lock(address: UInt64, length: UInt64, rawFlags: UInt32) throws(MemoryError) {
        guard rawFlags & ~Self.lockOnFaultFlag == 0 else { throw .invalidArgument }
        try lock(address: address, length: length, onFault: rawFlags != 0)
    }

    /// Locks `[address, address + length)` (`mlock`, or `mlock2(MLOCK_ONFAULT)` with `onFault`).
    ///
    /// Linux rules, in Linux's order (measured on 6.18): a zero `RLIMIT_MEMLOCK` without
    /// `CAP_IPC_LOCK` is `EPERM`; the address is rounded down to a page and the length up (an
    /// overflowing length becomes 0); locking more than `RLIMIT_MEMLOCK` in total (pages already
    /// locked in the range do not count twice) without `CAP_IPC_LOCK` is `ENOMEM` before anything
    /// changes, even for an empty range; then a range wrapping past 2^64 is `EINVAL` and an empty
    /// one succeeds doing nothing; then VMA by VMA `lo` (and `lf` with `onFault`, or its
    /// removal without) is set, splitting and merging; a hole is `ENOMEM` with the VMAs before it
    /// locked and nothing populated. Without `onFault` the range is then populated: private
    /// writable memory write-faulted, other memory read-faulted; a `PROT_NONE` VMA or a guard
    /// region stops it with `ENOMEM` (the VMAs stay locked). No invalidation is sent.
    public func lock(address: UInt64, length: UInt64, onFault: Bool = false) throws(MemoryError) {
        try checkCanLock()
        let start = address & ~(Self.pageSize - 1)
        // `PAGE_ALIGN` wraps: a length within a page of 2^64 becomes 0.
        let rounded = Self.pageAlign(length &+ (address - start)) ?? 0
        let end = start.addingReportingOverflow(rounded)
        // Pieces this call locks: pages still mlocked there count one more lock once populated.
        var newlyLocked: [(UInt64, UInt64)] = []
        defer { adjustLockCounts(newlyLocked, locking: true) }
        try mmapLock.withWriteLock { () throws(MemoryError) in
            try checkAlive()
            // The limit first, whatever the range: with more locked than the limit already (a
            // DONTUNMAP move leaves its pages charged), even an empty or wrapping range is ENOMEM
            // (oracle; measured).
            if let limit = configuration.lockedMemoryLimit, !configuration.capabilities.contains(.ipcLock) {
                var locked = lockedPages() + rounded / Self.pageSize
                if locked * Self.pageSize > limit {
                    locked -= lockedPages(start, end.overflow ? UInt64.max : end.partialValue)
                    if locked * Self.pageSize > limit { throw .noMemory }
                }
            }
            guard !end.overflow else { throw .invalidArgument }  // the range wraps past 2^64 (oracle)
            guard rounded != 0 else { return }
            let edit = VMAEdit(self)
            defer { edit.finish() }
            try walkVMAs(start, end.partialValue, stopAtHole: true) { vma, pieceStart, pieceEnd throws(MemoryError) in
                if !vma.flags.contains(.locked) && memory.hasLockMarks.load(ordering: .relaxed) {
                    newlyLocked.append((pieceStart, pieceEnd))
                }
                var flags = vma.flags
                flags.insert(.locked)
                if onFault { flags.insert(.lockOnFault) } else { flags.remove(.lockOnFault) }
                try modifyVMA(vma, pieceStart, pieceEnd, protection: vma.protection, flags: flags, edit: edit)
            }
        }
        if !onFault && rounded != 0 { try populateLocked(start, end.partialValue, ignoreErrors: false) }
    }

    /// `__mm_populate` over the locked VMAs of `[start, end)`: private writable memory is
    /// write-faulted, the rest read-faulted; `lf` VMAs are skipped. A `PROT_NONE` VMA or a guard
    /// marker is `ENOMEM` (unless `ignoreErrors`, as mlockall and `MAP_LOCKED` do).
    func populateLocked(_ start: UInt64, _ end: UInt64, ignoreErrors: Bool) throws(MemoryError) {
        var cursor = start
        while cursor < end {
            let piece: (stop: UInt64, write: Bool, skip: Bool)? = mmapLock.withReadLock {
                guard let vma = index.findFirst(endingAfter: cursor), vma.start < end else { return nil }
                cursor = max(cursor, vma.start)
                let skip = !vma.isLocked || vma.flags.contains(.lockOnFault)
                let write = !vma.isShared && vma.protection.contains(.write)
                if vma.protection.isEmpty && !skip { return (cursor, write, false) }
                return (min(end, vma.end), write, skip)
            }
            guard let piece else { return }
            if piece.stop == cursor {
                // PROT_NONE: populating fails (`EFAULT`, reported as `ENOMEM`).
                if !ignoreErrors { throw .noMemory }
                cursor = mmapLock.withReadLock { index.find(containing: cursor)?.end ?? end }
                continue
            }
            if !piece.skip {
                while cursor < piece.stop {
                    if translate(cursor)?.isGuard == true {
                        if !ignoreErrors { throw .noMemory }
                    } else {
                        do throws(MemoryError) {
                            try fault(at: cursor, access: piece.write ? .write : .read)
                        } catch {
                            if !ignoreErrors { throw .noMemory }
                        }
                    }
                    cursor += Self.pageSize
                }
            }
            cursor = piece.stop
        }
    }

    /// Unlocks `[address, address + length)` (`munlock`): `lo` and `lf` cleared VMA by VMA,
    /// splitting and merging. Address rounded down, length up (overflow: nothing done); a hole is
    /// `ENOMEM` with the VMAs before it unlocked. Needs no privilege. No invalidation is sent.
    public func unlock(address: UInt64, length: UInt64) throws(MemoryError) {
        let start = address & ~(Self.pageSize - 1)
        guard let rounded = Self.pageAlign(length &+ (address - start)), rounded != 0 else { return }
        let end = start.addingReportingOverflow(rounded)
        guard !end.overflow else { throw .invalidArgument }  // the range wraps past 2^64 (oracle)
        try mmapLock.withWriteLock { () throws(MemoryError) in
            try checkAlive()
            let edit = VMAEdit(self)
            defer { edit.finish() }
            try walkVMAs(start, end.partialValue, stopAtHole: true) { vma, pieceStart, pieceEnd throws(MemoryError) in
                if vma.flags.contains(.locked) && memory.hasLockMarks.load(ordering: .relaxed) {
                    forEachMappedFrame(pieceStart, pieceEnd) { memory.adjustLockCount($0, locking: false) }
                }
                try modifyVMA(
                    vma, pieceStart, pieceEnd, protection: vma.protection,
                    flags: vma.flags.subtracting([.locked, .lockOnFault]), edit: edit)
            }
        }
    }

    /// Locks the whole space (`mlockall`).
    ///
    /// Linux rules (measured on 6.18): no flag, an unknown bit, or ``LockAllFlags/onFault``
    /// without ``LockAllFlags/current`` or ``LockAllFlags/future`` is `EINVAL`; a zero
    /// `RLIMIT_MEMLOCK` without `CAP_IPC_LOCK` is `EPERM`; with ``LockAllFlags/current``, a space
    /// whose mapped total exceeds the limit is `ENOMEM` (without `CAP_IPC_LOCK`). Then
    /// ``LockAllFlags/future`` makes every later mapping locked (`lo`, and `lf` with
    /// ``LockAllFlags/onFault``; not inherited by forks); ``LockAllFlags/current`` locks every VMA
    /// and populates them (errors ignored) unless ``LockAllFlags/onFault``.
    public func lockAll(_ flags: LockAllFlags) throws(MemoryError) {
        let known: LockAllFlags = [.current, .future, .onFault]
        guard !flags.isEmpty, flags.isSubset(of: known), !flags.intersection([.current, .future]).isEmpty else {
            throw .invalidArgument
        }
        try checkCanLock()
        var newlyLocked: [(UInt64, UInt64)] = []
        defer { adjustLockCounts(newlyLocked, locking: true) }
        try mmapLock.withWriteLock { () throws(MemoryError) in
            try checkAlive()
            if flags.contains(.current), let limit = configuration.lockedMemoryLimit,
                !configuration.capabilities.contains(.ipcLock)
            {
                let total = index.all.reduce(UInt64(0)) { $0 + ($1.end - $1.start) }
                if total > limit { throw .noMemory }
            }
            defaultFlags = []
            var added: VMFlags = [.locked]
            if flags.contains(.onFault) { added.insert(.lockOnFault) }
            if flags.contains(.future) { defaultFlags = added }
            guard flags.contains(.current) else { return }
            let edit = VMAEdit(self)
            defer { edit.finish() }
            let marks = memory.hasLockMarks.load(ordering: .relaxed)
            for vma in index.all where !vma.isRemoved {
                if marks && !vma.flags.contains(.locked) { newlyLocked.append((vma.start, vma.end)) }
                try modifyVMA(
                    vma, vma.start, vma.end, protection: vma.protection,
                    flags: vma.flags.subtracting([.locked, .lockOnFault]).union(added), edit: edit)
            }
        }
        if flags.contains(.current) && !flags.contains(.onFault) {
            try? populateLocked(0, Self.userLimit, ignoreErrors: true)
        }
    }

    /// Unlocks the whole space and forgets `MCL_FUTURE` (`munlockall`). Needs no privilege.
    public func unlockAll() throws(MemoryError) {
        try mmapLock.withWriteLock { () throws(MemoryError) in
            try checkAlive()
            defaultFlags = []
            let edit = VMAEdit(self)
            defer { edit.finish() }
            let marks = memory.hasLockMarks.load(ordering: .relaxed)
            for vma in index.all where !vma.isRemoved {
                if marks && vma.flags.contains(.locked) {
                    forEachMappedFrame(vma.start, vma.end) { memory.adjustLockCount($0, locking: false) }
                }
                try modifyVMA(
                    vma, vma.start, vma.end, protection: vma.protection,
                    flags: vma.flags.subtracting([.locked, .lockOnFault]), edit: edit)
            }
        }
    }

    /// mlock or munlock (`locking`) of the pieces `ranges` for the pages still mlocked there
    /// (``PhysicalMemory/markStillLocked(_:)``): each mapped one's lock count goes up or down.
    /// Takes the mmap read lock; call it with no lock held.
    func adjustLockCounts(_ ranges: [(UInt64, UInt64)], locking: Bool) {
        guard !ranges.isEmpty else { return }
        mmapLock.withReadLock {
            for (start, end) in ranges { forEachMappedFrame(start, end) { memory.adjustLockCount($0, locking: locking) } }
        }
    }

    /// Calls `body` with the frame of every present or PROT_NONE 4 KiB entry of `[start, end)`
    /// (the zero page left out), under each table's split lock. Caller: mmap lock (read or
    /// write), no split lock.
    func forEachMappedFrame(_ start: UInt64, _ end: UInt64, _ body: (UInt64) -> Void) {
        pageTable.forEachLockedLeafRun(
            from: start, to: end, huge: { _, _, _, _, _ in },
            pte: { table, first, last, _ in
                for index in first..<last {
                    let entry = PageTableEntry(rawValue: table[index].pointee.load(ordering: .relaxed))
                    guard entry.isPresent || entry.isProtNone, entry.number != PhysicalMemory.zeroFrame else { continue }
                    body(entry.number)
                }
            },
            flush: { _, _ in })
    }
}
