import CInterop
import Synchronization

/// What a mirror implements to follow an interval (the kernel's `mmu_interval_notifier_ops`).
///
/// Ownership: the engine holds the handler strongly from ``AddressSpace/insertIntervalNotifier(start:length:handler:)``
/// until ``IntervalNotifier/remove()`` returns or the space is torn down (explicitly, or when its
/// last reference goes away), and never after. A handler must therefore not hold its space
/// strongly (hold it `weak`, as ``SoftwareMirror`` does): the space owns its subscriptions, and a
/// strong reference back would be a cycle that keeps both alive once the user drops them.
public protocol IntervalNotifierHandler: AnyObject, Sendable {
    /// An invalidation intersects `notifier`'s interval. Take the lock that also guards your
    /// commits, call `notifier.setSequence(currentSequence)`, drop (or downgrade) translations in
    /// `range`, unlock, and return `true`. Return `false` only if `range` is not blockable and you
    /// would have to sleep; the caller then leaves the range alone.
    ///
    /// Context: called on the thread that changes the address space, before any CPU page-table
    /// entry in `range` changes (and before the classic subscribers' starts), with no page-table
    /// (split) lock held and outside the notifier domain's read sections, and usually with the
    /// space's mmap lock held: for writing by `map` (over a mapping), `unmap`, `protect`, `remap`,
    /// `fork`, `collapse`, `clearSoftDirty`; for reading by `advise`, faults that break
    /// copy-on-write, `pin` (unsharing), `reclaim`, `migrate`; tried for reading by the OOM
    /// reaper; not at all for the
    /// `release` of ``AddressSpace/teardown()``. The epoch this call belongs to stays open until
    /// it returns.
    ///
    /// - May sleep when `range.isBlockable` (take a sleeping lock, wait for a device); must not
    ///   sleep otherwise (return `false` instead).
    /// - May call ``IntervalNotifier/setSequence(_:)``, ``IntervalNotifier/checkRetry(_:)``,
    ///   ``AddressSpace/translate(_:)``, ``AddressSpace/insertIntervalNotifier(start:length:handler:)``
    ///   (for a space that already has interval notifiers: the insert is deferred to the epoch's
    ///   end), and read ``PhysicalMemory``.
    /// - Must not call anything that takes this space's mmap lock (``AddressSpace/mapping(containing:)``
    ///   may fall back to it: use `range.vma`; faults, `read`, `write`, `map`, `registerNotifier`,
    ///   `teardown`, ...), ``IntervalNotifier/readBegin()``, ``IntervalNotifier/remove()`` (of any
    ///   notifier), ``AddressSpace/unregisterNotifier(_:)``, or ``AddressSpace/mirror(address:length:write:notifier:retryLimit:commit:)``:
    ///   each would wait for this very callback to return, or for an epoch it holds open. Debug
    ///   builds trap with a message on each.
    func invalidate(_ notifier: IntervalNotifier, range: InvalidationRange, currentSequence: UInt64) -> Bool
}

/// A subscription to invalidations of one interval `[start, end)` of an address space, with the
/// collision-retry protocol of the kernel's `mmu_interval_notifier` (docs/protocols.md,
/// "Interval notifiers"):
///
/// ```
/// again:
///   let seq = notifier.readBegin()        // waits if this interval was invalidated in an open epoch
///   let pages = space.faultRange(address:length:write:notifier:sequence: seq)
///                                         // faults and snapshots the CPU side; nil: collision,
///                                         // goto again (notifier.checkRetry(seq) is the lock-free hint)
///   lock(userLock)                        // the same lock the handler takes
///   if notifier.readRetry(seq) { unlock; goto again }
///   program translations from pages
///   unlock(userLock)
/// ```
/// ``AddressSpace/mirror(address:length:write:notifier:retryLimit:commit:)`` runs this loop for
/// you, with the commit step as a closure. The guarantee: a translation is never committed after
/// an invalidation that removed it began.
///
/// Created by ``AddressSpace/insertIntervalNotifier(start:length:handler:)``; removed by
/// ``remove()``, which returns only when no callback of this notifier runs or will run, or by the
/// space's teardown (after the handler's one `release` invalidation). Either way the engine then
/// drops its reference to the handler; a later ``remove()`` does nothing.
public class IntervalNotifier: @unchecked Sendable {
    /// First address of the interval.
    public let start: UInt64
    /// End of the interval (exclusive).
    public let end: UInt64

    /// `invalidate_seq`: always odd.
    @usableFromInline let sequence = Atomic<UInt64>(1)
    let state: IntervalNotifierState
    /// Tree node while in the tree, else -1 (guarded by the state's lock).
    var node: Int32 = -1
    /// On the deferred list (guarded by the state's lock).
    var isDeferred = false
    /// Inserted and not yet removed (guarded by the state's lock).
    var isLive = false

    /// Creates the notifier for `handler` (an instance of the subclass specialised for its type).
    static func make(
        start: UInt64, end: UInt64, handler: some IntervalNotifierHandler, state: IntervalNotifierState
    ) -> IntervalNotifier {
        TypedIntervalNotifier(start: start, end: end, handler: handler, state: state)
    }

    init(start: UInt64, end: UInt64, state: IntervalNotifierState) {
        self.start = start
        self.end = end
        self.state = state
    }

    /// Calls the handler (the dispatch path). Overridden by ``TypedIntervalNotifier``.
    func invalidate(_ range: InvalidationRange, currentSequence: UInt64) -> Bool {
        preconditionFailure("IntervalNotifier is created through IntervalNotifier.make")
    }

    /// Drops the handler once no callback can run any more. Overridden.
    fileprivate func releaseHandler() {}

    /// Begins a read: returns the sequence to validate against, after waiting for an open
    /// invalidation epoch that already invalidated this interval to close. May sleep; never loops.
    ///
    /// Context: any thread that may sleep, except a notifier callback (the epoch it would wait for
    /// is the one the callback holds open; debug builds trap).
    public func readBegin() -> UInt64 {
        LockContext.notInCallback("IntervalNotifier.readBegin() (it waits for the invalidation epoch the callback holds open)")
        LockContext.mightSleep("IntervalNotifier.readBegin()")
        let (seq, invalidated) = state.lock.withLock {
            let seq = sequence.load(ordering: .relaxed)
            return (seq, seq == state.sequence.load(ordering: .relaxed))
        }
        if invalidated {
            state.counters?.increment(SpaceCounter.intervalReadWaits.rawValue)
            state.waitQueue.wait { state.sequence.load(ordering: .acquiring) != seq }
        }
        return seq
    }

    /// Whether an invalidation hit the interval since ``readBegin()`` returned `sequence`.
    /// Reliable only under the lock the handler takes (which orders it).
    public func readRetry(_ sequence: UInt64) -> Bool {
        let retry = self.sequence.load(ordering: .relaxed) != sequence
        if retry { state.counters?.increment(SpaceCounter.intervalCollisions.rawValue) }
        return retry
    }

    /// Lock-free hint: `true` is reliable (a collision happened), `false` is not.
    public func checkRetry(_ sequence: UInt64) -> Bool {
        self.sequence.load(ordering: .acquiring) != sequence
    }

    /// Records the current invalidation's sequence. Call from the handler, under its lock.
    public func setSequence(_ currentSequence: UInt64) {
        sequence.store(currentSequence, ordering: .relaxed)
    }

    /// Removes the notifier (`mmu_interval_notifier_remove`) and drops the engine's reference to
    /// the handler; waits until no callback of it runs or will run (for an invalidation epoch that
    /// may still call it to close). Removing twice, or after the space's teardown (which removed
    /// it), does nothing.
    ///
    /// Context: may sleep. Must not be called from a notifier callback (of any notifier: the epoch
    /// it waits for cannot close while a callback of this thread holds an epoch open, and the
    /// guarantee above cannot hold for the callback that is running): debug builds trap with a
    /// message. A handler that wants to go away hands the removal to another thread.
    public func remove() {
        LockContext.notInCallback("IntervalNotifier.remove() (it waits until no callback runs, including the caller)")
        LockContext.mightSleep("IntervalNotifier.remove()")
        state.remove(self)
    }

    /// Whether ``remove()`` ran, or the space's teardown removed the notifier.
    public var isRemoved: Bool { !isInserted }

    /// Inserted and not removed (takes the interval lock).
    var isInserted: Bool { state.lock.withLock { isLive } }
}

/// The per-space interval-notifier state (the itree part of the kernel's
/// `mmu_notifier_subscriptions`): a lock, the collision-retry sequence (even when idle, odd while an
/// invalidation that hit an interval is in flight), the number of in-flight invalidations, the
/// interval tree, the deferred list, and a wait queue.
@usableFromInline
final class IntervalNotifierState: @unchecked Sendable {
    let lock = SpinLock()
    /// `invalidate_seq`: changed under `lock`, read without it by sleepers.
    @usableFromInline let sequence = Atomic<UInt64>(2)
    @exclusivity(unchecked) private var active = 0
    @usableFromInline let tree = IntervalTree()
    @exclusivity(unchecked) private var deferred: [IntervalNotifier] = []
    /// Set by ``close()`` (teardown): no insertion succeeds afterwards (guarded by `lock`).
    @exclusivity(unchecked) private var closed = false
    let waitQueue = WaitQueue()
    /// The owning space's counters (weakly tied: set once at creation).
    @usableFromInline let counters: SlotCounters?

    init(counters: SlotCounters?) { self.counters = counters }

    /// Number of intervals in the tree.
    var count: Int { lock.withLock { tree.count } }

    // MARK: Writer side

    /// W1: begins an invalidation of `range`. Returns `false` if a handler refused a non-blockable
    /// range; the epoch has then already been ended and the caller must not call
    /// ``invalidateEnd()``.
    func invalidateStart(_ range: InvalidationRange) -> Bool {
        let last = range.end &- 1
        // One descent under the lock decides whether the epoch turns odd and collects up to
        // `inline` hits; the handlers run after the lock is dropped (they may sleep). The tree is
        // frozen while the epoch is odd, so the collected notifiers stay valid; with more hits than
        // fit, the frozen tree is walked again without the lock.
        let inline = 8
        return withUnsafeTemporaryAllocation(of: UnsafeMutableRawPointer.self, capacity: inline) { hits in
            var found = 0
            let current: UInt64? = lock.withLock {
                active &+= 1
                tree.forEachIntersecting(range.start, last) { _, value in
                    // The handler call after the lock is dropped reads the notifier: start now.
                    cinterop_prefetch(value)
                    if found < inline { hits[found] = value }
                    found &+= 1
                    return found <= inline
                }
                guard found > 0 else { return nil }
                let odd = sequence.load(ordering: .relaxed) | 1
                sequence.store(odd, ordering: .relaxed)
                return odd
            }
            guard let current else { return true }  // hit nothing: partially excluded
            LockContext.callbackEntered()
            defer { LockContext.callbackExited() }
            var refused = false
            func call(_ value: UnsafeMutableRawPointer) -> Bool {
                let accepted = Unmanaged<IntervalNotifier>.fromOpaque(value)._withUnsafeGuaranteedRef {
                    $0.invalidate(range, currentSequence: current)
                }
                counters?.increment(SpaceCounter.intervalInvalidations.rawValue)
                if accepted { return true }
                if range.isBlockable {
                    counters?.increment(SpaceCounter.notifierContractViolations.rawValue)
                    return true
                }
                refused = true
                return false
            }
            if found <= inline {
                for index in 0..<found where !refused { _ = call(hits[index]) }
            } else {
                tree.forEachIntersecting(range.start, last) { _, value in call(value) }
            }
            if refused {
                invalidateEnd()
                return false
            }
            return true
        }
    }

    /// W2: ends an invalidation. The last one to end closes the epoch, applies deferred inserts
    /// and removals, and wakes readers.
    func invalidateEnd() {
        var released: [IntervalNotifier]? = nil
        let closed: Bool = lock.withLock {
            active &-= 1
            let seq = sequence.load(ordering: .relaxed)
            if active != 0 || seq & 1 == 0 { return false }
            // Releasing: pairs with readers' acquiring load in readBegin's wait.
            sequence.store(seq &+ 1, ordering: .releasing)
            if !deferred.isEmpty { released = applyDeferred() }
            return true
        }
        if closed { waitQueue.wakeAll() }
        if let released {
            for notifier in released { Unmanaged.passUnretained(notifier).release() }
        }
    }

    /// Applies deferred inserts and removals. Under `lock`, epoch closed.
    private func applyDeferred() -> [IntervalNotifier] {
        var released: [IntervalNotifier] = []
        for notifier in deferred {
            notifier.isDeferred = false
            if notifier.node < 0 {
                notifier.node = tree.insert(
                    start: notifier.start, last: notifier.end - 1,
                    value: Unmanaged.passUnretained(notifier).toOpaque())
            } else {
                tree.remove(notifier.node)
                notifier.node = -1
                released.append(notifier)
            }
        }
        deferred.removeAll()
        return released
    }

    // MARK: Insert and remove

    /// INS: adds `notifier` (its retain is owned by the tree or the deferred list). Returns `false`
    /// (and inserts nothing) once ``close()`` ran.
    func insert(_ notifier: IntervalNotifier) -> Bool {
        lock.withLock {
            if closed { return false }
            _ = Unmanaged.passRetained(notifier)
            notifier.isLive = true
            let seq = sequence.load(ordering: .relaxed)
            if active > 0 {
                if seq & 1 == 1 {
                    notifier.isDeferred = true
                    deferred.append(notifier)
                } else {
                    // An invalidation that hit nothing is in flight and may cover the new interval.
                    sequence.store(seq | 1, ordering: .relaxed)
                    notifier.node = tree.insert(
                        start: notifier.start, last: notifier.end - 1,
                        value: Unmanaged.passUnretained(notifier).toOpaque())
                }
                notifier.sequence.store(sequence.load(ordering: .relaxed), ordering: .relaxed)
            } else {
                notifier.sequence.store(seq &- 1, ordering: .relaxed)
                notifier.node = tree.insert(
                    start: notifier.start, last: notifier.end - 1,
                    value: Unmanaged.passUnretained(notifier).toOpaque())
            }
            return true
        }
    }

    /// Teardown: refuses every later insertion and removes every notifier still inserted, as
    /// ``IntervalNotifier/remove()`` would (waiting for an open epoch, then dropping the handler
    /// and the tree's reference), so nothing the space owns keeps a handler alive. Call after the
    /// handlers got their `release` invalidation.
    func close() {
        let live: [IntervalNotifier] = lock.withLock {
            closed = true
            var result: [IntervalNotifier] = []
            tree.forEachIntersecting(0, .max) { _, value in
                let notifier = Unmanaged<IntervalNotifier>.fromOpaque(value).takeUnretainedValue()
                if notifier.isLive { result.append(notifier) }
                return true
            }
            return result + deferred.filter { $0.isLive && $0.node < 0 }
        }
        for notifier in live { remove(notifier) }
    }

    /// REM: removes `notifier`, waiting for an open epoch in which it may still be called.
    func remove(_ notifier: IntervalNotifier) {
        var waitFor: UInt64 = 0
        var drop = false
        var removing = false
        lock.withLock {
            guard notifier.isLive else { return }
            notifier.isLive = false
            removing = true
            let seq = sequence.load(ordering: .relaxed)
            if seq & 1 == 1 {
                if notifier.isDeferred && notifier.node < 0 {
                    // Insert still pending: cancel it.
                    deferred.removeAll { $0 === notifier }
                    notifier.isDeferred = false
                    drop = true
                } else {
                    notifier.isDeferred = true
                    deferred.append(notifier)
                    waitFor = seq
                }
            } else {
                tree.remove(notifier.node)
                notifier.node = -1
                drop = true
            }
        }
        if waitFor != 0 {
            waitQueue.wait { sequence.load(ordering: .acquiring) != waitFor }
        }
        // No callback runs or will run: let the handler go (only the remover that unlinked it).
        if removing { notifier.releaseHandler() }
        if drop { Unmanaged.passUnretained(notifier).release() }
    }

    /// Every live notifier (diagnostics and teardown).
    var notifiers: [IntervalNotifier] {
        lock.withLock {
            var result: [IntervalNotifier] = []
            tree.forEachIntersecting(0, .max) { _, value in
                result.append(Unmanaged<IntervalNotifier>.fromOpaque(value).takeUnretainedValue())
                return true
            }
            return result + deferred.filter { $0.node < 0 }
        }
    }
}

/// An interval notifier specialised for its handler's type: the handler is held as a plain
/// `Unmanaged` reference inside the notifier object itself, so an invalidation that hits the
/// interval touches one object (no separate box, no existential, no retain or release). The
/// reference is released once ``IntervalNotifier/remove()`` has made sure no callback will run
/// again (a handler usually holds its notifier: keeping it longer would be a cycle).
final class TypedIntervalNotifier<Handler: IntervalNotifierHandler>: IntervalNotifier, @unchecked Sendable {
    private let handler: Unmanaged<Handler>
    private var holdsHandler = true

    init(start: UInt64, end: UInt64, handler: Handler, state: IntervalNotifierState) {
        self.handler = Unmanaged.passRetained(handler)
        super.init(start: start, end: end, state: state)
    }

    deinit { releaseHandler() }

    override func invalidate(_ range: InvalidationRange, currentSequence: UInt64) -> Bool {
        handler._withUnsafeGuaranteedRef { $0.invalidate(self, range: range, currentSequence: currentSequence) }
    }

    override fileprivate func releaseHandler() {
        if holdsHandler {
            holdsHandler = false
            handler.release()
        }
    }
}
