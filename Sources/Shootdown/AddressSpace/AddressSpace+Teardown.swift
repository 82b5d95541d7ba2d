import Synchronization

extension AddressSpace {
    /// Tears the space down (`exit_mmap`): every interval notifier gets one `release` invalidation
    /// over the whole space and every subscriber its `release` callback (then they are unlinked),
    /// every page is zapped and every table and VMA is freed. Afterwards every operation throws
    /// ``MemoryError/addressSpaceDead`` and faults are segmentation faults. Idempotent; also runs
    /// when the last reference to the space goes away.
    public func teardown() {
        mmapLock.withWriteLock {
            if dead.load(ordering: .relaxed) { return }
            dead.store(true, ordering: .relaxed)
            let range = InvalidationRange(
                space: id, start: 0, end: Self.userLimit, event: .release, flags: .blockable)
            if let subscriptions = subscriptionsPointer?.takeUnretainedValue() {
                count(SpaceCounter.invalidations(.release))
                subscriptions.releaseAll(range: range)
            }
            let edit = VMAEdit(self)
            let vmas = index.all
            for vma in vmas { edit.remove(vma) }
            edit.publish()
            if let first = vmas.first, let last = vmas.last {
                // `unmap`, as `exit_mmap` → `unmap_vmas` sends: interval notifiers (still in the
                // tree) already had their one `release` above and must not see a second one.
                // Subscribers were unlinked by `releaseAll`: no secondary-TLB calls either.
                zapAndEnd(beginInvalidation(first.start, last.end, .unmap), first.start, last.end)
            }
            pageTable.retireAll(into: edit.retire)
            edit.finish()
        }
    }

    /// Whether ``teardown()`` ran.
    public var isTornDown: Bool { dead.load(ordering: .relaxed) }
}
