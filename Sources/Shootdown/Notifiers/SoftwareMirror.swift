import Synchronization

/// A reference secondary MMU: a table from page address to frame behind its own lock, kept
/// coherent with one address-space interval through an ``IntervalNotifier`` (and subscribed as a
/// classic notifier for aging and release). What a device page table, an RDMA registration cache
/// or a code cache does, reduced to its protocol; tests, benchmarks and users can start from it.
///
/// Guarantee: the mirror never commits a translation that an invalidation has already removed,
/// and after an invalidation's start returns it holds no translation to a frame that the
/// invalidation removes (it drops them, or makes them read-only for write-protect events).
public final class SoftwareMirror: IntervalNotifierHandler, MMUNotifier, @unchecked Sendable {
    /// A translation held by the mirror.
    public struct Translation: Hashable, Sendable {
        public var frame: UInt64
        public var writable: Bool
    }

    public let space: AddressSpace
    public let start: UInt64
    public let end: UInt64
    /// Tag passed to migrations this mirror asks for, so it can recognise them.
    public let owner: InvalidationOwner

    private struct State {
        var table: [UInt64: Translation] = [:]
        var invalidations = 0
        var ownMigrations = 0
        /// The space released it (teardown): commits abort.
        var released = false
        /// ``detach()`` ran: every call throws ``MemoryError/detached``.
        var detached = false
    }

    /// The table and its bookkeeping: taken by commits and by the interval handler (which may
    /// sleep), never under a split lock.
    private let state = FutexLock(State())
    /// Pages accessed through the mirror since their last aging. A separate spin lock, because the
    /// young callbacks run under the engine's split lock and must not sleep.
    private let youngLock = SpinLock()
    private var young: Set<UInt64> = []
    private var notifier: IntervalNotifier!
    private static let nextOwner = Atomic<UInt64>(1 << 63)

    /// Mirrors `[start, start + length)` of `space`.
    ///
    /// - Throws: ``MemoryError/invalidArgument`` for an unaligned or empty interval;
    ///   ``MemoryError/addressSpaceDead``.
    public init(space: AddressSpace, start: UInt64, length: UInt64) throws(MemoryError) {
        guard AddressSpace.isPageAligned(start), AddressSpace.isPageAligned(length), length != 0,
            start <= AddressSpace.userLimit, length <= AddressSpace.userLimit - start
        else { throw .invalidArgument }
        self.space = space
        self.start = start
        self.end = start + length
        owner = InvalidationOwner(rawValue: Self.nextOwner.wrappingAdd(1, ordering: .relaxed).oldValue)
        notifier = try space.insertIntervalNotifier(start: start, length: length, handler: self)
        do {
            try space.registerNotifier(self)
        } catch {
            notifier.remove()
            throw error
        }
    }

    /// Stops mirroring: drops every translation and refuses every later commit (under the mirror's
    /// lock, so no commit can land after this step), then unsubscribes, waiting for running
    /// callbacks. Afterwards every call throws ``MemoryError/detached``. Idempotent. Must not be
    /// called from one of the mirror's own callbacks.
    public func detach() {
        let first = state.withLock { state -> Bool in
            defer {
                state.detached = true
                state.table.removeAll()
            }
            return !state.detached
        }
        guard first else { return }
        notifier.remove()
        space.unregisterNotifier(self)
        youngLock.withLock { young.removeAll() }
    }

    /// Throws ``MemoryError/detached`` after ``detach()``.
    private func checkAttached() throws(MemoryError) {
        if state.withLock({ $0.detached }) { throw .detached }
    }

    // MARK: - Device side

    /// Makes `address` accessible through the mirror (a device page fault), faulting the CPU side
    /// in as needed, with the collision-retry loop. Returns the mirror's translation right after
    /// the commit, or `nil` if an invalidation already took it away again.
    @discardableResult
    public func fault(at address: UInt64, write: Bool) throws(MemoryError) -> Translation? {
        let page = address & ~(AddressSpace.pageSize - 1)
        guard page >= start && page < end else { throw .invalidArgument }
        try populate(page, page + AddressSpace.pageSize, write: write)
        return state.withLock { $0.table[page] }
    }

    /// Mirrors every page of `[from, to)` (within the interval).
    ///
    /// - Throws: ``MemoryError/detached`` after ``detach()`` (also when it happens meanwhile),
    ///   ``MemoryError/addressSpaceDead`` after the space's teardown, or what
    ///   ``AddressSpace/faultRange(_:_:write:notifier:sequence:)`` throws.
    public func populate(_ from: UInt64, _ to: UInt64, write: Bool) throws(MemoryError) {
        guard from >= start, to <= end, from < to else { throw .invalidArgument }
        try checkAttached()
        let outcome = try space.mirror(from, to, write: write, notifier: notifier) { pages, sequence in
            state.withLock { state -> MirrorCommit in
                // Under the same lock as invalidate() and detach(): no invalidation can slip between
                // the check and the commit, and nothing is committed once detached.
                if state.detached || state.released { return .abort }
                if notifier.readRetry(sequence) { return .retry }
                for page in pages {
                    state.table[page.address] = Translation(frame: page.frame, writable: page.writable)
                }
                return .committed
            }
        }
        if case .aborted = outcome {
            throw state.withLock { $0.detached } ? .detached : .addressSpaceDead
        }
    }

    /// The mirror's translation for `address`, if it holds one.
    public func translation(for address: UInt64) -> Translation? {
        state.withLock { $0.table[address & ~(AddressSpace.pageSize - 1)] }
    }

    /// Reads the page content through the mirror (a device load), faulting as needed.
    public func read(at address: UInt64) throws(MemoryError) -> UInt64 {
        let page = address & ~(AddressSpace.pageSize - 1)
        while true {
            let token = try state.withLock { state throws(MemoryError) -> UInt64? in
                if state.detached { throw .detached }
                guard let translation = state.table[page] else { return nil }
                youngLock.withLock { _ = young.insert(page) }
                return space.memory.token(of: translation.frame)
            }
            if let token { return token }
            try fault(at: page, write: false)
        }
    }

    /// Number of translations held.
    public var count: Int { state.withLock { $0.table.count } }

    /// Every translation held (for audits).
    public var translations: [UInt64: Translation] { state.withLock { $0.table } }

    /// Invalidations received, and how many were migrations this mirror asked for.
    public var invalidationCount: Int { state.withLock { $0.invalidations } }
    public var ownMigrationCount: Int { state.withLock { $0.ownMigrations } }

    /// Migrates the mirrored pages of `[from, to)` tagged with this mirror's ``owner`` and mirrors
    /// the new frames again.
    public func migrate(_ from: UInt64, _ to: UInt64) throws(MemoryError) -> Int {
        try checkAttached()
        let moved = try space.migrate(address: from, length: to - from, owner: owner)
        try populate(from, to, write: false)
        return moved
    }

    // MARK: - IntervalNotifierHandler

    public func invalidate(_ notifier: IntervalNotifier, range: InvalidationRange, currentSequence: UInt64) -> Bool {
        if range.isBlockable {
            state.withLock { apply(range, currentSequence, notifier, to: &$0) }
            return true
        }
        // Non-blockable: refuse rather than wait for the lock.
        return state.withLockIfAvailable { apply(range, currentSequence, notifier, to: &$0) } != nil
    }

    /// Drops (or downgrades) the translations `range` covers. Under the mirror's lock.
    private func apply(
        _ range: InvalidationRange, _ currentSequence: UInt64, _ notifier: IntervalNotifier, to state: inout State
    ) {
        notifier.setSequence(currentSequence)
        state.invalidations += 1
        if range.event == .migrate && range.owner == owner { state.ownMigrations += 1 }
        let downgrade = range.onlyDowngradesToReadOnly
        let low = max(range.start, start)
        let high = min(range.end, end)
        if high <= low { return }
        // Walk whichever is smaller: the range's pages or the table.
        if (high - low) / AddressSpace.pageSize <= UInt64(state.table.count) {
            var page = low
            while page < high {
                if downgrade {
                    state.table[page]?.writable = false
                } else {
                    state.table.removeValue(forKey: page)
                }
                page += AddressSpace.pageSize
            }
        } else {
            for page in state.table.keys where page >= low && page < high {
                if downgrade { state.table[page]!.writable = false } else { state.table.removeValue(forKey: page) }
            }
        }
    }

    // MARK: - MMUNotifier (aging and release)

    public var callbacks: NotifierCallbacks { [.clearFlushYoung, .clearYoung, .testYoung, .release] }

    public func clearFlushYoung(space: UInt64, start: UInt64, end: UInt64) -> Bool {
        clearYoung(space: space, start: start, end: end)
    }

    public func clearYoung(space: UInt64, start: UInt64, end: UInt64) -> Bool {
        // Called under the split lock: only the young set's spin lock is taken.
        youngLock.withLock {
            var wasYoung = false
            var page = max(start, self.start) & ~(AddressSpace.pageSize - 1)
            while page < min(end, self.end) {
                if young.remove(page) != nil { wasYoung = true }
                page += AddressSpace.pageSize
            }
            return wasYoung
        }
    }

    public func testYoung(space: UInt64, address: UInt64) -> Bool {
        youngLock.withLock { young.contains(address & ~(AddressSpace.pageSize - 1)) }
    }

    public func release(space: UInt64) {
        state.withLock { state in
            state.table.removeAll()
            state.released = true
        }
        youngLock.withLock { young.removeAll() }
    }
}
