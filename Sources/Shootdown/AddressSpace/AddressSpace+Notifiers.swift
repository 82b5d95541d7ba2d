import Synchronization

extension AddressSpace {
    /// Registers a classic subscriber (`mmu_notifier_register`). Takes the mmap write lock, so no
    /// invalidation is in flight: the subscriber sees every start together with its end. Never
    /// waits for a grace period of the notifier domain (the replaced subscriber list is freed after
    /// one, from the domain's worker), so a callback sleeping in any space cannot delay it.
    ///
    /// Ownership: the space holds `notifier` strongly until ``unregisterNotifier(_:)`` or its
    /// teardown (explicit, or when its last reference goes away), never after. A subscriber must
    /// not hold the space strongly (hold it `weak`): that would be a cycle keeping both alive.
    ///
    /// Context: takes the mmap lock for writing; must not be called from a callback that runs with
    /// this space's mmap lock held (debug builds trap).
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
    /// callback of `notifier` is running or will run, and the space holds no reference to it.
    /// Unregistering twice, or after teardown (which unregistered everything), returns `false`.
    ///
    /// Context: may sleep (a grace period lasts as long as the slowest callback running in any
    /// space). Must not be called from a notifier callback (the grace period would wait for the
    /// callback itself): debug builds trap with a message.
    ///
    /// - Returns: whether it was registered.
    @discardableResult
    public func unregisterNotifier(_ notifier: any MMUNotifier) -> Bool {
        LockContext.notInCallback("AddressSpace.unregisterNotifier(_:) (it waits until no callback runs, including the caller)")
        LockContext.mightSleep("AddressSpace.unregisterNotifier(_:)")
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
    /// Ownership: the space holds the notifier and `handler` strongly until
    /// ``IntervalNotifier/remove()`` or the space's teardown (explicit, or when its last reference
    /// goes away), never after; the handler must not hold the space strongly (see
    /// ``IntervalNotifierHandler``).
    ///
    /// Context: any thread that may sleep. From a notifier callback only if the space already has
    /// interval notifiers (the first insertion takes the mmap lock for writing; debug builds trap
    /// when the callback's thread holds it).
    ///
    /// - Throws: ``MemoryError/invalidArgument`` for an unaligned start or length, a zero length,
    ///   or an interval that leaves the user address space (``userLimit``);
    ///   ``MemoryError/addressSpaceDead`` after (or during) teardown.
    public func insertIntervalNotifier(
        start: UInt64, length: UInt64, handler: any IntervalNotifierHandler
    ) throws(MemoryError) -> IntervalNotifier {
        guard Self.isPageAligned(start), Self.isPageAligned(length), length != 0, start <= Self.userLimit,
            length <= Self.userLimit - start
        else { throw .invalidArgument }
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
        // Refused once teardown closed the tree (it may have begun after the check above).
        guard subscriptions!.intervals.insert(notifier) else { throw .addressSpaceDead }
        return notifier
    }

    /// Number of interval notifiers in the tree.
    public var intervalNotifierCount: Int {
        subscriptionsPointer?.takeUnretainedValue().intervals.count ?? 0
    }
}
