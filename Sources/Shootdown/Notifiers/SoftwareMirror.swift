import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A reference secondary MMU: a table from page address to frame behind its own lock, kept
/// coherent with one address-space interval through an ``IntervalNotifier`` (and subscribed as a
/// classic notifier for aging and release). What a device page table, an RDMA registration cache
/// (on-demand paging) or a code cache does, reduced to its protocol. It uses only the library's
/// public API and the standard library, so it can be copied into another module as it is and
/// grown from there (add `import Shootdown` to the copy; nothing else changes).
///
/// Guarantee: the mirror never commits a translation that an invalidation has already removed,
/// and after an invalidation's start returns it holds no translation to a frame that the
/// invalidation removes (it drops them, or makes them read-only for write-protect events).
///
/// Ownership: the space holds the mirror (as interval handler and as subscriber) until
/// ``detach()`` or the space's teardown; the mirror holds the space only weakly, so dropping every
/// reference to the space tears it down even while the mirror lives (later calls throw
/// ``MemoryError/addressSpaceDead``), and forgetting ``detach()`` leaks nothing once the space
/// goes away.
///
/// Locks: `state` (a sleeping lock, a `pthread_mutex_t`) guards the table; the interval handler
/// takes it (it may sleep there: the engine calls it outside every page-table lock), and so does
/// every commit and device access. The young set has its own non-sleeping lock because the young callbacks run
/// under the engine's split page-table lock. Order: `state`, then the engine's split lock (inside
/// ``AddressSpace/deviceWrite(_:at:frame:)``), then the young lock.
public final class SoftwareMirror: IntervalNotifierHandler, MMUNotifier, @unchecked Sendable {
    // @unchecked: `notifier` is written once, in `init`, before the object is shared; every other
    // stored property is immutable or a lock.

    /// A translation held by the mirror.
    public struct Translation: Hashable, Sendable {
        /// The frame the page maps to.
        public var frame: UInt64
        /// Whether the device may write through it.
        public var writable: Bool

        /// A translation of a page to `frame`.
        public init(frame: UInt64, writable: Bool) {
            self.frame = frame
            self.writable = writable
        }
    }

    /// The space mirrored, while it lives (held weakly: see the type's ownership note).
    public weak let space: AddressSpace?
    /// First address of the mirrored interval.
    public let start: UInt64
    /// End of the mirrored interval (exclusive).
    public let end: UInt64
    /// Tag passed to migrations this mirror asks for, so it can recognise them.
    public let owner: InvalidationOwner

    /// A page address as a key of the table, with a cheap hash: the keys are page addresses the
    /// mirror itself chose (no hash flooding to defend against), so a multiply-xorshift of the page
    /// number mixed with the dictionary's per-instance seed replaces SipHash (about 90
    /// instructions per insert or lookup). `_rawHashValue(seed:)` is the hook `Dictionary` hashes
    /// with; `hash(into:)` stays consistent with it for every other use.
    struct PageKey: Hashable {
        let address: UInt64

        init(_ address: UInt64) { self.address = address }

        func hash(into hasher: inout Hasher) { hasher.combine(address) }

        func _rawHashValue(seed: Int) -> Int {
            let mixed = (address >> 12 ^ UInt64(bitPattern: Int64(seed))) &* 0x9E37_79B9_7F4A_7C15
            return Int(bitPattern: UInt(truncatingIfNeeded: mixed ^ mixed >> 29))
        }
    }

    private struct State {
        var table: [PageKey: Translation] = [:]
        var invalidations = 0
        var ownMigrations = 0
        /// The space released it (teardown): commits abort.
        var released = false
        /// ``detach()`` ran: every call throws ``MemoryError/detached``.
        var detached = false
    }

    /// The table and its bookkeeping: taken by commits, device accesses and the interval handler
    /// (which may sleep), never under a split lock.
    private let state = SleepingLocked(State())
    /// Pages accessed through the mirror since their last aging. A separate non-sleeping lock,
    /// because the young callbacks run under the engine's split lock.
    private let young = SpinLocked<Set<UInt64>>([])
    private var notifier: IntervalNotifier!
    private static let nextOwner = Atomic<UInt64>(1 << 63)

    /// Mirrors `[start, start + length)` of `space`.
    ///
    /// - Throws: ``MemoryError/invalidArgument`` for an unaligned or empty interval, or one that
    ///   leaves the user address space; ``MemoryError/addressSpaceDead``.
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
    /// callbacks. Afterwards every call throws ``MemoryError/detached`` and the space holds no
    /// reference to the mirror. Idempotent.
    ///
    /// Context: may sleep. Must not be called from one of the mirror's own callbacks, or any other
    /// notifier callback (debug builds trap).
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
        // Gone already if the space was torn down (which unregistered everything).
        space?.unregisterNotifier(self)
        young.withLock { $0.removeAll() }
    }

    /// The space, or the error a call after ``detach()`` or teardown throws.
    private func attachedSpace() throws(MemoryError) -> AddressSpace {
        if state.withLock({ $0.detached }) { throw .detached }
        guard let space else { throw .addressSpaceDead }
        return space
    }

    /// The page of `address`, which must lie in the mirrored interval.
    private func page(_ address: UInt64) throws(MemoryError) -> UInt64 {
        guard address >= start && address < end else { throw .invalidArgument }
        return AddressSpace.pageAlignDown(address)
    }

    // MARK: - Device side

    /// Makes `address` accessible through the mirror (a device page fault), faulting the CPU side
    /// in as needed, with the collision-retry loop. Returns the mirror's translation right after
    /// the commit, or `nil` if an invalidation already took it away again.
    ///
    /// - Throws: ``MemoryError/invalidArgument`` outside the interval, or what
    ///   ``populate(address:length:write:)`` throws.
    @discardableResult
    public func fault(at address: UInt64, write: Bool) throws(MemoryError) -> Translation? {
        let page = try page(address)
        try populate(address: page, length: AddressSpace.pageSize, write: write)
        return state.withLock { $0.table[PageKey(page)] }
    }

    /// Mirrors every page of `[address, address + length)` (inside the interval) with
    /// ``AddressSpace/mirror(address:length:write:notifier:retryLimit:commit:)``.
    ///
    /// - Throws: ``MemoryError/invalidArgument`` for an unaligned or empty range or one outside the
    ///   interval; ``MemoryError/detached`` after ``detach()`` (also when it happens meanwhile);
    ///   ``MemoryError/addressSpaceDead`` after the space's teardown or once it is gone; or what
    ///   ``AddressSpace/faultRange(address:length:write:notifier:sequence:)`` throws.
    public func populate(address: UInt64, length: UInt64, write: Bool) throws(MemoryError) {
        guard AddressSpace.isPageAligned(address), length != 0, address >= start, address < end,
            length <= end - address
        else { throw .invalidArgument }
        let space = try attachedSpace()
        let notifier = self.notifier!
        let outcome = try space.mirror(address: address, length: length, write: write, notifier: notifier) {
            pages, sequence in
            state.withLock { state -> MirrorCommit in
                // Under the same lock as invalidate() and detach(): no invalidation can slip between
                // the check and the commit, and nothing is committed once detached.
                if state.detached || state.released { return .abort }
                if notifier.readRetry(sequence) { return .retry }
                // One growth at most (rehashing every translation held), not one per doubling.
                state.table.reserveCapacity(state.table.count + pages.count)
                for page in pages {
                    state.table[PageKey(page.address)] = Translation(frame: page.frame, writable: page.writable)
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
        state.withLock { $0.table[PageKey(AddressSpace.pageAlignDown(address))] }
    }

    /// Reads the page content through the mirror (a device load), faulting as needed.
    ///
    /// - Throws: as ``fault(at:write:)``.
    public func read(at address: UInt64) throws(MemoryError) -> UInt64 {
        let page = try page(address)
        while true {
            let space = try attachedSpace()
            let token = try state.withLock { state throws(MemoryError) -> UInt64? in
                if state.detached { throw .detached }
                guard let translation = state.table[PageKey(page)] else { return nil }
                young.withLock { _ = $0.insert(page) }
                return try Self.checked(space.deviceRead(at: page, frame: translation.frame), page, translation)
            }
            if let token { return token }
            try fault(at: page, write: false)
        }
    }

    /// Writes `token` as the page's content through the mirror (a device store): through the
    /// mirror's writable translation if it holds one, after a device write fault otherwise (which
    /// breaks copy-on-write on the CPU side, like a CPU store). The CPU sees the new content at
    /// once (it is the same frame).
    ///
    /// - Throws: as ``fault(at:write:)``; ``MemoryError/badAddress`` if the page is not mapped
    ///   writable.
    public func write(_ token: UInt64, at address: UInt64) throws(MemoryError) {
        let page = try page(address)
        while true {
            let space = try attachedSpace()
            let stored = try state.withLock { state throws(MemoryError) -> Bool in
                if state.detached { throw .detached }
                guard let translation = state.table[PageKey(page)], translation.writable else { return false }
                // Under the mirror's lock: the translation cannot be invalidated meanwhile, so the
                // engine's check that the CPU maps this frame writable passes.
                try Self.checked(space.deviceWrite(token, at: page, frame: translation.frame), page, translation)
                young.withLock { _ = $0.insert(page) }
                return true
            }
            if stored { return }
            try fault(at: page, write: true)
        }
    }

    /// The result of a device access the engine validated against the CPU page table. Under the
    /// mirror's lock the engine cannot find the translation stale (``MemoryError/badAddress``)
    /// unless the mirror broke its guarantee: that traps. Other errors (teardown) pass through.
    private static func checked<R>(
        _ access: @autoclosure () throws(MemoryError) -> R, _ page: UInt64, _ translation: Translation
    ) throws(MemoryError) -> R {
        do throws(MemoryError) {
            return try access()
        } catch .badAddress {
            preconditionFailure("SoftwareMirror: translation 0x\(String(page, radix: 16)) -> frame \(translation.frame) is stale: the mirror missed an invalidation")
        }
    }

    /// Number of translations held.
    public var count: Int { state.withLock { $0.table.count } }

    /// Every translation held (for audits).
    public var translations: [UInt64: Translation] {
        state.withLock { state in
            Dictionary(uniqueKeysWithValues: state.table.lazy.map { ($0.key.address, $0.value) })
        }
    }

    /// Invalidations received.
    public var invalidationCount: Int { state.withLock { $0.invalidations } }
    /// Invalidations received that were migrations this mirror asked for (tagged with ``owner``).
    public var ownMigrationCount: Int { state.withLock { $0.ownMigrations } }

    /// Migrates the pages of `[address, address + length)` (inside the interval) with a migration
    /// tagged with this mirror's ``owner``, and mirrors the new frames again.
    ///
    /// - Returns: pages migrated.
    /// - Throws: ``MemoryError/invalidArgument`` for an unaligned or empty range or one outside the
    ///   interval, or what ``AddressSpace/migrate(address:length:owner:)`` and
    ///   ``populate(address:length:write:)`` throw.
    public func migrate(address: UInt64, length: UInt64) throws(MemoryError) -> Int {
        guard AddressSpace.isPageAligned(address), length != 0, address >= start, address < end,
            length <= end - address
        else { throw .invalidArgument }
        let space = try attachedSpace()
        let moved = try space.migrate(address: address, length: length, owner: owner)
        try populate(address: address, length: length, write: false)
        return moved
    }

    // MARK: - IntervalNotifierHandler

    /// Drops (or downgrades) the translations `range` covers. Context: see
    /// ``IntervalNotifierHandler``; takes the mirror's lock, and refuses a non-blockable range
    /// rather than wait for it.
    public func invalidate(_ notifier: IntervalNotifier, range: InvalidationRange, currentSequence: UInt64) -> Bool {
        if range.isBlockable {
            state.withLock { apply(range, currentSequence, notifier, to: &$0) }
            return true
        }
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
                    state.table[PageKey(page)]?.writable = false
                } else {
                    state.table.removeValue(forKey: PageKey(page))
                }
                page += AddressSpace.pageSize
            }
        } else {
            for key in state.table.keys where key.address >= low && key.address < high {
                if downgrade { state.table[key]!.writable = false } else { state.table.removeValue(forKey: key) }
            }
        }
    }

    // MARK: - MMUNotifier (aging and release)

    /// Aging and release only: invalidations arrive through the interval notifier.
    public var callbacks: NotifierCallbacks { [.clearFlushYoung, .clearYoung, .testYoung, .release] }

    /// As ``clearYoung(space:start:end:)`` (the mirror has no TLB to flush). Runs under the
    /// engine's split lock: takes only the young set's spin lock.
    public func clearFlushYoung(space: UInt64, start: UInt64, end: UInt64) -> Bool {
        clearYoung(space: space, start: start, end: end)
    }

    /// Whether a page of `[start, end)` was accessed through the mirror since the last call, and
    /// forgets it. Runs under the engine's split lock: takes only the young set's spin lock.
    public func clearYoung(space: UInt64, start: UInt64, end: UInt64) -> Bool {
        young.withLock { young in
            var wasYoung = false
            var page = AddressSpace.pageAlignDown(max(start, self.start))
            while page < min(end, self.end) {
                if young.remove(page) != nil { wasYoung = true }
                page += AddressSpace.pageSize
            }
            return wasYoung
        }
    }

    /// Whether `address` was accessed through the mirror since its last aging. Takes only the
    /// young set's spin lock.
    public func testYoung(space: UInt64, address: UInt64) -> Bool {
        young.withLock { $0.contains(AddressSpace.pageAlignDown(address)) }
    }

    /// The space is being torn down (or the mirror unregistered): drop everything and refuse
    /// later commits. Runs without engine locks; takes the mirror's lock.
    public func release(space: UInt64) {
        state.withLock { state in
            state.table.removeAll()
            state.released = true
        }
        young.withLock { $0.removeAll() }
    }
}

/// A value behind a `pthread_mutex_t`: a sleeping lock, for state that may be held while waiting
/// (the interval handler of a blockable range may sleep).
///
/// Why not `Synchronization.Mutex`: on Linux its contended path hands the lock over inside the
/// kernel (a priority-inheritance futex), where ThreadSanitizer cannot see the happens-before
/// edge, so TSan reports races on the data it guards (it did, on this table, in the mirror stress
/// suite). TSan intercepts pthread mutexes.
private final class SleepingLocked<Value>: @unchecked Sendable {
    // @unchecked: `value` is only touched with `mutex` held.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    init(_ value: Value) {
        self.value = value
        // On the heap: a pthread mutex must not move.
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        let status = pthread_mutex_init(mutex, nil)
        precondition(status == 0, "pthread_mutex_init failed (\(status))")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with the value, under the lock (waiting for it, possibly sleeping).
    func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }

    /// Runs `body` under the lock if it is free right now; `nil` otherwise (never waits).
    func withLockIfAvailable<R>(_ body: (inout Value) -> R) -> R? {
        guard pthread_mutex_trylock(mutex) == 0 else { return nil }
        defer { pthread_mutex_unlock(mutex) }
        return body(&value)
    }
}

/// A value behind a test-and-test-and-set spin lock built on `Atomic`: for state that callbacks
/// running under the engine's split page-table lock touch, where nothing may sleep (a mutex may). Hold it for a few instructions only; never take a sleeping lock,
/// or call into the engine, while holding it.
private final class SpinLocked<Value>: @unchecked Sendable {
    // @unchecked: `value` is only touched between a successful acquiring exchange of `locked` and
    // the releasing store that ends `withLock`.
    private let locked = Atomic<Bool>(false)
    private var value: Value

    init(_ value: Value) { self.value = value }

    /// Runs `body` with the value, under the lock.
    func withLock<R>(_ body: (inout Value) -> R) -> R {
        var spins = 0
        // Acquiring: the previous holder's writes to `value` are visible.
        while locked.exchange(true, ordering: .acquiring) {
            // Wait on a plain load, not on a bouncing write; give the holder the CPU now and then
            // (it may have been preempted).
            while locked.load(ordering: .relaxed) {
                spins += 1
                if spins % 128 == 0 { sched_yield() }
            }
        }
        // Releasing: this section's writes are visible to the next holder.
        defer { locked.store(false, ordering: .releasing) }
        return body(&value)
    }
}
