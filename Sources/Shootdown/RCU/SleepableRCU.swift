import Synchronization

/// A sleepable RCU domain in the shape of the kernel's SRCU: read sections may block, and a grace
/// period of this domain waits only for readers of this domain.
///
/// liburcu has no per-domain API (docs/rcu.md), so this is built from standard atomics, with
/// the kernel's classic two-index scheme: each thread slot keeps `lock[2]` and `unlock[2]` counts on
/// its own cache line; a reader increments `lock[ctr & 1]`, a grace period waits for the inactive
/// index to drain, flips `ctr`, then waits for the previously active index to drain. Readers never
/// write a shared line, so the read side scales with cores; unlock may run on another thread.
///
/// Why not liburcu-bp as the second domain: bp polls in 10 ms steps once a reader blocks
/// (docs/rcu.md), and it needs per-thread registration; this domain needs neither.
///
/// Memory ordering (docs/rcu.md, "The notifier domain"): the reader's
/// `lock` increment, its load of the phase counter and its loads of protected pointers are
/// sequentially consistent, as are the updater's publication store and its scans; the `unlock`
/// increment releases. A reader that loaded a pointer before an updater published its
/// replacement therefore precedes the publication in the single total order, so the updater's
/// later scan sees its `lock` increment and waits for the matching `unlock`.
@usableFromInline
final class SleepableRCU: @unchecked Sendable {
    /// Words per slot: lock[0], lock[1], unlock[0], unlock[1], padded to a cache line.
    @usableFromInline static let slotStride = cacheLineSize / MemoryLayout<UInt64>.stride

    /// Per-slot counters, `ThreadSlot.count * slotStride` words.
    @usableFromInline let counts: UnsafeMutablePointer<Atomic<UInt64>>
    /// The phase counter; `ctr & 1` is the index new readers use. Alone on its line.
    @usableFromInline let phase: UnsafeMutablePointer<Atomic<UInt64>>
    /// Serialises grace periods of this domain.
    private let updaters = FutexMutex()
    /// Grace periods completed (statistics).
    private let completed = Atomic<UInt64>(0)
    /// Callbacks waiting for a grace period (see `call(afterGracePeriod:)`).
    let deferred = FutexLock(DeferredQueue())
    /// Wakes ``barrier()`` callers when a batch of callbacks has run.
    let deferredDone = WaitQueue()

    /// The domain used for every address space's MMU-notifier list, like the kernel's single
    /// global notifier SRCU (docs/protocols.md, "Notifier lists").
    static let notifiers = SleepableRCU()

    init() {
        counts = RawMemory.allocateAtomics(UInt64.self, count: ThreadSlot.count * Self.slotStride, initial: 0)
        phase = RawMemory.allocateAtomics(UInt64.self, count: Self.slotStride, initial: 0)
    }

    deinit {
        RawMemory.deallocateAtomics(counts, count: ThreadSlot.count * Self.slotStride)
        RawMemory.deallocateAtomics(phase, count: Self.slotStride)
    }

    /// Proof that the holder is inside a read section; pass it to ``readUnlock(_:)``.
    @frozen @usableFromInline
    struct ReadToken: Sendable {
        @usableFromInline let index: Int
        @inlinable init(index: Int) { self.index = index }
    }

    /// Enters a read section. The section may sleep.
    @inlinable
    func readLock() -> ReadToken {
        // Sequentially consistent: see the type's ordering note. On x86 the load is a plain mov.
        let index = Int(phase.pointee.load(ordering: .sequentiallyConsistent) & 1)
        counts[ThreadSlot.current &* Self.slotStride &+ index]
            .wrappingAdd(1, ordering: .sequentiallyConsistent)
        return ReadToken(index: index)
    }

    /// Leaves a read section. May run on a different thread than the matching ``readLock()``.
    @inlinable
    func readUnlock(_ token: ReadToken) {
        // Releasing: the reader's loads of protected data happen before the updater's scan
        // observes this increment.
        counts[ThreadSlot.current &* Self.slotStride &+ 2 &+ token.index]
            .wrappingAdd(1, ordering: .releasing)
    }

    /// Runs `body` inside a read section.
    @inlinable
    func withReadSection<R: ~Copyable, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        let token = readLock()
        defer { readUnlock(token) }
        return try body()
    }

    /// Waits until every read section of this domain that began before the call has ended.
    /// Sleeps (with bounded back-off) while a reader is blocked.
    ///
    /// - Precondition: not inside a read section of this domain (it would wait for itself).
    @usableFromInline
    func synchronize() {
        LockContext.mightSleep("waiting for a notifier-domain grace period")
        LockContext.notInNotifierReadSection("waiting for a notifier-domain grace period (unregistering, tearing a space with subscribers down)")
        updaters.withLock {
            let active = Int(phase.pointee.load(ordering: .sequentiallyConsistent) & 1)
            // Stragglers that loaded the phase before the previous flip.
            waitForReaders(index: active ^ 1)
            phase.pointee.wrappingAdd(1, ordering: .sequentiallyConsistent)
            waitForReaders(index: active)
        }
        completed.wrappingAdd(1, ordering: .relaxed)
    }

    /// Number of grace periods this domain has completed.
    var gracePeriodsCompleted: UInt64 { completed.load(ordering: .relaxed) }

    /// Whether any reader of `index` is still inside its section. Unlocks are summed before locks,
    /// so a reader whose unlock was counted is counted in the lock sum too: equal sums mean every
    /// counted reader has left.
    private func readersActive(index: Int) -> Bool {
        var unlocks: UInt64 = 0
        var locks: UInt64 = 0
        for slot in 0..<ThreadSlot.count {
            unlocks &+= counts[slot * Self.slotStride + 2 + index].load(ordering: .sequentiallyConsistent)
        }
        for slot in 0..<ThreadSlot.count {
            locks &+= counts[slot * Self.slotStride + index].load(ordering: .sequentiallyConsistent)
        }
        return locks != unlocks
    }

    private func waitForReaders(index: Int) {
        var backoff = Backoff()
        while readersActive(index: index) {
            backoff.wait()
        }
    }
}
