import Synchronization

/// A space's subscriptions (the kernel's `mmu_notifier_subscriptions`), allocated when the first
/// subscriber or interval notifier arrives; until then the space's pointer to it is nil and every
/// notifier call site costs one pointer test.
///
/// Dispatch order follows the kernel: interval notifiers first, then classic subscribers, in both
/// start and end.
@usableFromInline
final class NotifierSubscriptions: @unchecked Sendable {
    @usableFromInline let space: UInt64
    @usableFromInline let list: NotifierList
    @usableFromInline let intervals: IntervalNotifierState
    /// `has_itree`: set (under the mmap write lock) by the first interval insertion, never cleared.
    @usableFromInline let hasIntervals = Atomic<Bool>(false)
    @usableFromInline let counters: SlotCounters
    /// The space's software TLBs, shot down at the end of every invalidation (docs/tlb.md). A
    /// space with TLBs creates its subscriptions at once for this, so the end of every change is
    /// the one choke point; without TLBs nothing here changes.
    let tlb: SoftwareTLB?
    /// Whether a subscriber or interval notifier was ever registered (set under the mmap write
    /// lock). Teardown releases subscribers only then: subscriptions that exist only for the TLBs
    /// have nothing to release and must not wait for a notifier-domain grace period.
    let registered = Atomic<Bool>(false)

    init(
        space: UInt64, protection: NotifierListProtection, domain: SleepableRCU, counters: SlotCounters,
        tlb: SoftwareTLB? = nil
    ) {
        self.space = space
        list = NotifierList(protection: protection, domain: domain)
        intervals = IntervalNotifierState(counters: counters)
        self.counters = counters
        self.tlb = tlb
    }

    // MARK: Invalidation

    /// Starts an invalidation (`__mmu_notifier_invalidate_range_start`). Returns `false` when a
    /// subscriber refused a non-blockable range; every end owed has then been called already (for
    /// interval notifiers too, unlike the kernel, whose itree epoch would stay open when a classic
    /// subscriber refuses) and the caller must leave the range alone.
    func invalidateRangeStart(_ range: InvalidationRange) -> Bool {
        let itree = hasIntervals.load(ordering: .acquiring)
        if itree && !intervals.invalidateStart(range) { return false }
        if !list.populated.load(ordering: .relaxed) { return true }
        let accepted = list.withSnapshot { snapshot -> Bool in
            guard snapshot.union.contains(.invalidateRangeStart) else { return true }
            LockContext.callbackEntered(classic: true)
            defer { LockContext.callbackExited(classic: true) }
            var refused = false
            for index in 0..<snapshot.count {
                let entry = snapshot.entries[index]
                guard entry.callbacks.contains(.invalidateRangeStart) else { continue }
                if entry.with({ $0.invalidateRangeStart(range) }) { continue }
                if range.isBlockable {
                    counters.increment(SpaceCounter.notifierContractViolations.rawValue)
                } else {
                    if entry.callbacks.contains(.invalidateRangeEnd) {
                        counters.increment(SpaceCounter.notifierContractViolations.rawValue)
                    }
                    refused = true  // keep calling the others: they may expect an end
                }
            }
            if refused {
                for index in 0..<snapshot.count where snapshot.entries[index].callbacks.contains(.invalidateRangeEnd) {
                    snapshot.entries[index].with { $0.invalidateRangeEnd(range) }
                }
            }
            return !refused
        }
        if !accepted && itree { intervals.invalidateEnd() }
        return accepted
    }

    /// Shoots the space's software TLBs down over `range`, if it has any (``InvalidationScope/end()``
    /// calls this before ``invalidateRangeEnd(_:)``: the page-table change is complete, and the
    /// caller frees frames only after both).
    @inline(__always)
    func shootDownTLBs(_ range: InvalidationRange) {
        if let tlb { tlb.shootDown(range.start, range.end, counters: counters) }
    }

    /// Ends an invalidation (`__mmu_notifier_invalidate_range_end`).
    func invalidateRangeEnd(_ range: InvalidationRange) {
        if hasIntervals.load(ordering: .acquiring) { intervals.invalidateEnd() }
        if !list.populated.load(ordering: .relaxed) { return }
        list.withSnapshot { snapshot in
            guard snapshot.union.contains(.invalidateRangeEnd) else { return }
            LockContext.callbackEntered(classic: true)
            defer { LockContext.callbackExited(classic: true) }
            for index in 0..<snapshot.count where snapshot.entries[index].callbacks.contains(.invalidateRangeEnd) {
                snapshot.entries[index].with { $0.invalidateRangeEnd(range) }
            }
        }
    }

    /// Whether any subscriber wants the secondary-TLB hook (stable while the mmap lock is held:
    /// registration takes it for writing).
    var wantsSecondaryTLBs: Bool {
        // Like dispatch: no read section at all while the list is empty (see `populated`).
        guard list.populated.load(ordering: .relaxed) else { return false }
        return list.withSnapshot { $0.union.contains(.invalidateSecondaryTLBs) }
    }

    /// Calls every secondary-TLB hook for `[start, end)`. Runs under a split lock; hooks must not
    /// sleep.
    func invalidateSecondaryTLBs(start: UInt64, end: UInt64) {
        list.withSnapshot { snapshot in
            LockContext.callbackEntered(classic: true)
            defer { LockContext.callbackExited(classic: true) }
            for index in 0..<snapshot.count
            where snapshot.entries[index].callbacks.contains(.invalidateSecondaryTLBs) {
                snapshot.entries[index].with { $0.invalidateSecondaryTLBs(space: space, start: start, end: end) }
            }
        }
    }

    // MARK: Aging

    /// OR of every subscriber's `clearFlushYoung` (or `clearYoung` when `flush` is false).
    func clearYoung(start: UInt64, end: UInt64, flush: Bool) -> Bool {
        let callback: NotifierCallbacks = flush ? .clearFlushYoung : .clearYoung
        return list.withSnapshot { snapshot in
            guard snapshot.union.contains(callback) else { return false }
            LockContext.callbackEntered(classic: true)
            defer { LockContext.callbackExited(classic: true) }
            var young = false
            for index in 0..<snapshot.count where snapshot.entries[index].callbacks.contains(callback) {
                let notifier = snapshot.entries[index].notifier
                young = (flush
                    ? notifier.clearFlushYoung(space: space, start: start, end: end)
                    : notifier.clearYoung(space: space, start: start, end: end)) || young
            }
            return young
        }
    }

    /// Whether any subscriber saw `address` accessed; stops at the first that did.
    func testYoung(address: UInt64) -> Bool {
        list.withSnapshot { snapshot in
            guard snapshot.union.contains(.testYoung) else { return false }
            LockContext.callbackEntered(classic: true)
            defer { LockContext.callbackExited(classic: true) }
            for index in 0..<snapshot.count where snapshot.entries[index].callbacks.contains(.testYoung) {
                if snapshot.entries[index].notifier.testYoung(space: space, address: address) { return true }
            }
            return false
        }
    }

    /// Whether any subscriber implements an aging callback.
    var wantsYoung: Bool {
        guard list.populated.load(ordering: .relaxed) else { return false }
        return list.withSnapshot { !$0.union.isDisjoint(with: .young) }
    }

    // MARK: Registration

    /// Calls `notifier.release` (if it implements it) and removes it; waits for readers.
    func unregister(_ notifier: any MMUNotifier) -> Bool {
        let registered = list.withSnapshot { snapshot -> Bool in
            for index in 0..<snapshot.count where snapshot.entries[index].notifier === notifier {
                if snapshot.entries[index].callbacks.contains(.release) {
                    LockContext.callbackEntered(classic: true)
                    defer { LockContext.callbackExited(classic: true) }
                    notifier.release(space: space)
                }
                return true
            }
            return false
        }
        guard registered else { return false }
        let removed = list.remove(notifier)
        counters.increment(SpaceCounter.notifierGracePeriods.rawValue)
        return removed
    }

    /// Teardown (`__mmu_notifier_release`): one blockable `release` invalidation over the whole
    /// space to every interval notifier, then every classic subscriber's `release`, then unlinking
    /// them all and waiting for readers, then removing every interval notifier (refusing later
    /// inserts). Afterwards the space holds no reference to any subscriber or handler, so a
    /// subscriber that references the space no longer makes a cycle with it.
    func releaseAll(range: InvalidationRange) {
        if hasIntervals.load(ordering: .acquiring) {
            _ = intervals.invalidateStart(range)
            intervals.invalidateEnd()
        }
        list.withSnapshot { snapshot in
            LockContext.callbackEntered(classic: true)
            defer { LockContext.callbackExited(classic: true) }
            for index in 0..<snapshot.count where snapshot.entries[index].callbacks.contains(.release) {
                snapshot.entries[index].notifier.release(space: space)
            }
        }
        list.removeAll()
        counters.increment(SpaceCounter.notifierGracePeriods.rawValue)
        // Whether or not an interval was ever inserted: a concurrent first insert that passed its
        // liveness check must find the state closed.
        intervals.close()
    }
}

/// A begun invalidation that must be ended exactly once, with the bounds it began with (the kernel
/// keeps start and end bounds in one range value for the same reason; here the type system enforces it): non-copyable, consumed by
/// ``end()``, and trapping if dropped without it.
@usableFromInline
struct InvalidationScope: ~Copyable {
    @usableFromInline let range: InvalidationRange
    @usableFromInline let subscriptions: Unmanaged<NotifierSubscriptions>?

    init(range: InvalidationRange, subscriptions: Unmanaged<NotifierSubscriptions>?) {
        self.range = range
        self.subscriptions = subscriptions
    }

    /// Calls every end owed and consumes the scope. In a space with software TLBs this is where
    /// they are shot down (docs/tlb.md), before the caller frees the frames it unmapped.
    @inline(__always)
    consuming func end() {
        if subscriptions == nil {
            discard self
            return
        }
        finish(shootingDownTLBs: true)
    }

    /// ``end()`` without the TLB shootdown, for a change whose caller shot the TLBs down itself
    /// under the split lock, before copying content out of the old frames (copy-on-write,
    /// page-out, migration, collapse), or that changed no entry.
    @inline(__always)
    consuming func endWithoutTLBShootdown() {
        if subscriptions == nil {
            discard self
            return
        }
        finish(shootingDownTLBs: false)
    }

    /// Both ends, out of line: one call site of the end dispatch (two cost every end a
    /// reabstraction thunk).
    @inline(never)
    consuming func finish(shootingDownTLBs: Bool) {
        if let subscriptions {
            let range = self.range
            subscriptions._withUnsafeGuaranteedRef {
                if shootingDownTLBs { $0.shootDownTLBs(range) }
                $0.invalidateRangeEnd(range)
            }
        }
        discard self
    }

    deinit {
        // Reached only by a scope dropped without `end()`: a missing end would leave interval
        // notifiers' readers waiting for good.
        Self.leaked(range)
    }

    @inline(never)
    private static func leaked(_ range: InvalidationRange) {
        preconditionFailure("invalidation \(range) was begun and never ended")
    }
}
