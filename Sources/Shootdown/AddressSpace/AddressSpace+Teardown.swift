import Synchronization

extension AddressSpace {
    /// Tears the space down (`exit_mmap`): every interval notifier gets one `release` invalidation
    /// over the whole space and every subscriber its `release` callback; then every subscriber is
    /// unregistered and every interval notifier removed (a later ``IntervalNotifier/remove()`` or
    /// ``unregisterNotifier(_:)`` does nothing), so the space holds no reference to any handler or
    /// subscriber any more; every page is zapped and every table and VMA is freed (pinned frames
    /// stay allocated until unpinned). Afterwards every operation throws
    /// ``MemoryError/addressSpaceDead`` and faults are segmentation faults. Idempotent; also runs
    /// when the last reference to the space goes away.
    ///
    /// Context: may sleep (waits for a grace period of the notifier domain when the space has
    /// subscribers). Must not be called from a notifier callback (debug builds trap).
    ///
    /// The notifiers are released before the mmap lock is taken for the zap, as `exit_mmap` calls
    /// `mmu_notifier_release` first: releasing waits for a grace period of the notifier domain, which
    /// a callback sleeping in any space can make long, and the space's mmap lock must not be held
    /// meanwhile. The space is marked dead first, under the lock, so no operation starts after.
    public func teardown() {
        let first = mmapLock.withWriteLock { () -> Bool in
            if dead.load(ordering: .relaxed) { return false }
            dead.store(true, ordering: .relaxed)
            return true
        }
        guard first else { return }
        if let subscriptions = subscriptionsPointer?.takeUnretainedValue(), subscriptions.registered.load(ordering: .relaxed) {
            count(SpaceCounter.invalidations(.release))
            subscriptions.releaseAll(
                range: InvalidationRange(space: id, start: 0, end: Self.userLimit, event: .release, flags: .blockable))
        }
        mmapLock.withWriteLock {
            let edit = VMAEdit(self)
            let vmas = index.all
            for vma in vmas { edit.remove(vma) }
            edit.publish()
            if let first = vmas.first, let last = vmas.last {
                // `unmap`, as `exit_mmap` → `unmap_vmas` sends. It reaches no subscriber: interval
                // notifiers had their one `release` and were removed by `releaseAll`, classic
                // subscribers were unlinked there (no secondary-TLB calls either).
                zapAndEnd(beginInvalidation(first.start, last.end, .unmap), first.start, last.end)
            }
            pageTable.retireAll(into: edit.retire)
            edit.finish()
        }
    }

    /// Whether ``teardown()`` ran.
    public var isTornDown: Bool { dead.load(ordering: .relaxed) }
}
