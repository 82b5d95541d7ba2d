import Synchronization

extension AddressSpace {
    /// Runs one blockable invalidation start/end pair over `[start, end)` with `event`, changing
    /// no entry: the cost of notifier dispatch alone, for benchmarks and tests. Not API (the
    /// leading underscore): the caller must not register or unregister subscribers concurrently.
    @_spi(Benchmarking)
    ///
    /// A pair with nothing subscribed (no subscriber, no interval notifier, no software TLBs) is
    /// what ``beginInvalidation(_:_:_:vma:owner:)`` and ``InvalidationScope/end()`` do then: count
    /// the invalidation and test the subscriptions pointer. It skips building the scope, which
    /// a change that works between the two needs (it spans the change; about a dozen stores).
    @_spi(Benchmarking)
    public func _invalidateWithoutChange(start: UInt64, end: UInt64, event: InvalidationEvent) {
        guard subscriptionsPointer != nil else {
            counters.increment(SpaceCounter.invalidationsIndex(event))
            return
        }
        pairWithSubscriptions(start, end, event)
    }

    /// The pair when the space has subscriptions (out of line: the test above needs no frame).
    @inline(never)
    private func pairWithSubscriptions(_ start: UInt64, _ end: UInt64, _ event: InvalidationEvent) {
        let scope = beginInvalidation(start, end, event)
        scope.end()
    }
}
