import Synchronization

extension AddressSpace {
    /// Registers a classic subscriber (`mmu_notifier_register`). Takes the mmap write lock, so no
    /// invalidation is in flight: the subscriber sees every start together with its end.
    ///
    /// - Throws: ``MemoryError/invalidArgument`` if `notifier` is already registered or declares
    ///   the secondary-TLB hook together with start/end; ``MemoryError/addressSpaceDead``.
    public func registerNotifier(_ notifier: any MMUNotifier) throws(MemoryError) {
        try mmapLock.withWriteLock { () throws(MemoryError) in
            try checkAlive()
            writeLockAllVMAs()  // no invalidation in flight under a VMA lock either
            try ensureSubscriptions().list.add(notifier)
        }
    }

    /// Unregisters a subscriber (`mmu_notifier_unregister`): calls its `release` (if it implements
    /// it), unlinks it, and waits for a grace period of the notifier domain. When this returns, no
    /// callback of `notifier` is running or will run. Must not be called from a callback.
    ///
    /// - Returns: whether it was registered.
    @discardableResult
    public func unregisterNotifier(_ notifier: any MMUNotifier) -> Bool {
        guard let subscriptions = subscriptionsPointer?.takeUnretainedValue() else { return false }
        return subscriptions.unregister(notifier)
    }

    /// The registered classic subscribers.
    public var notifiers: [any MMUNotifier] {
        subscriptionsPointer?.takeUnretainedValue().list.subscribers ?? []
    }

    /// Subscribes `handler` to invalidations of `[start, start + length)`
    /// (`mmu_interval_notifier_insert`). The interval need not be mapped. The first insertion
    /// takes the mmap write lock; later ones only the interval lock.
    ///
    /// Upon return the notifier may not be in the interval tree yet (an invalidation epoch was
    /// open): use ``IntervalNotifier/readBegin()`` before establishing translations, as always.
    ///
    /// - Throws: ``MemoryError/invalidArgument`` for a zero or overflowing length;
    ///   ``MemoryError/addressSpaceDead``.
    public func insertIntervalNotifier(
        start: UInt64, length: UInt64, handler: any IntervalNotifierHandler
    ) throws(MemoryError) -> IntervalNotifier {
        guard length != 0, start <= UInt64.max - length else { throw .invalidArgument }
        try checkAlive()
        var subscriptions = subscriptionsPointer?.takeUnretainedValue()
        if subscriptions == nil || !subscriptions!.hasIntervals.load(ordering: .acquiring) {
            subscriptions = try mmapLock.withWriteLock { () throws(MemoryError) -> NotifierSubscriptions in
                try checkAlive()
                writeLockAllVMAs()  // no invalidation in flight under a VMA lock either
                let created = ensureSubscriptions()
                // Releasing; set under the mmap write lock, so no invalidation is in flight.
                created.hasIntervals.store(true, ordering: .releasing)
                return created
            }
        }
        let notifier = IntervalNotifier.make(
            start: start, end: start + length, handler: handler, state: subscriptions!.intervals)
        subscriptions!.intervals.insert(notifier)
        return notifier
    }

    /// Number of interval notifiers in the tree.
    public var intervalNotifierCount: Int {
        subscriptionsPointer?.takeUnretainedValue().intervals.count ?? 0
    }
}
