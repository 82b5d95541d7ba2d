import Synchronization

extension AddressSpace {
    /// Runs one blockable invalidation start/end pair over `[start, end)` with `event`, changing
    /// no entry: the cost of notifier dispatch alone, for benchmarks and tests. Not API (the
    /// leading underscore): the caller must not register or unregister subscribers concurrently.
    @_spi(Benchmarking)
    public func _invalidateWithoutChange(start: UInt64, end: UInt64, event: InvalidationEvent) {
        let scope = beginInvalidation(start, end, event)
        scope.end()
    }
}
