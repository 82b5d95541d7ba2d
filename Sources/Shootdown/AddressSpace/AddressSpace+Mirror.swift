import Synchronization

/// One page of a range snapshot taken for a mirror.
public struct MirrorPage: Hashable, Sendable {
    /// Page address.
    public var address: UInt64
    /// The frame the CPU page table maps there. It may be ``PhysicalMemory/zeroFrame`` (`0`): a
    /// read of private memory never written maps the shared zero page, so do not use 0 as "none".
    public var frame: UInt64
    /// Whether the CPU entry allows writes.
    public var writable: Bool

    /// A page as a snapshot reports it (for tests and for mirrors that build their own).
    public init(address: UInt64, frame: UInt64, writable: Bool) {
        self.address = address
        self.frame = frame
        self.writable = writable
    }
}

extension AddressSpace {
    /// Faults in `[address, address + length)` and snapshots its translations (`hmm_range_fault`),
    /// under the mmap read lock, in one pass: every page that lacks the needed access is faulted in
    /// as the pass reaches it, and the collision check comes once, after the pass. Returns `nil`
    /// (the kernel's `-EBUSY`) if `notifier.checkRetry(sequence)` then reports a collision.
    ///
    /// A pass's own faults may invalidate the range it snapshots (breaking copy-on-write replaces
    /// the frame, under a `clear` invalidation of that page), so a registration whose pages need
    /// such faults sees one collision; the next pass finds every page in place and succeeds.
    /// Checking after every page instead would restart the registration once per faulted page
    /// (quadratic).
    ///
    /// Context: may sleep (faults, the mmap lock); must not be called from a notifier callback or
    /// while holding a spin lock.
    ///
    /// - Parameters:
    ///   - address: page-aligned start.
    ///   - length: bytes, rounded up to whole pages; the range must lie inside `notifier`'s
    ///     interval (invalidations outside it would go unnoticed).
    ///   - write: fault for writing (breaking copy-on-write) and require writable entries.
    ///   - notifier: an interval notifier of this space, not removed.
    ///   - sequence: what `notifier.readBegin()` returned.
    /// - Throws: ``MemoryError/invalidArgument`` for an unaligned, empty or overflowing range, a
    ///   range outside `notifier`'s interval, or a notifier of another space;
    ///   ``MemoryError/detached`` if `notifier` was removed; ``MemoryError/badAddress`` if a page is
    ///   not mapped with the needed access (the kernel's `-EFAULT`; pages before it may have been
    ///   faulted in); ``MemoryError/outOfMemory``; ``MemoryError/addressSpaceDead``.
    public func faultRange(
        address: UInt64, length: UInt64, write: Bool, notifier: IntervalNotifier, sequence: UInt64
    ) throws(MemoryError) -> [MirrorPage]? {
        let end = try mirrorRangeEnd(address, length, notifier)
        let access: Access = write ? .write : .read
        return try mmapLock.withReadLock { () throws(MemoryError) -> [MirrorPage]? in
            try checkAlive()
            try checkNotifier(notifier)
            var pages: [MirrorPage] = []
            // At most a few thousand up front: the range may be enormous and end at a hole (the fuzzer
            // found a 256 GiB reservation for a one-page mapping).
            pages.reserveCapacity(Self.initialPageCapacity(address, end))
            var page = address
            while page < end {
                // Unretained: VMAs cannot be freed while the mmap read lock is held.
                guard let found = index.lookup(page) else { throw .badAddress }
                let failure = found._withUnsafeGuaranteedRef { vma -> MemoryError? in
                    guard Self.accessAllowed(vma.protection, access) else { return .badAddress }
                    let stop = min(vma.end, end)
                    while page < stop {
                        if let entry = translate(page), entry.isPresent, !write || entry.isWritable {
                            pages.append(MirrorPage(address: page, frame: entry.number, writable: entry.isWritable))
                            page += Self.pageSize
                            continue
                        }
                        // Fault it in, then read the entry again (without advancing). No collision
                        // check here: this fault may be what invalidates the range.
                        do throws(MemoryError) {
                            try handleFault(vma, page, access)
                        } catch {
                            return error.reportedByFaultIn
                        }
                    }
                    return nil
                }
                if let failure { throw failure }
            }
            // Pages recorded early stay valid only if nothing invalidated the interval since
            // `readBegin`; the commit's `readRetry` under the handler's lock decides for good.
            return notifier.checkRetry(sequence) ? nil : pages
        }
    }

    /// The whole mirror protocol for `[address, address + length)` (docs/protocols.md, "Mirrors"):
    /// `readBegin`, fault and snapshot the range (``faultRange(address:length:write:notifier:sequence:)``),
    /// then `commit(pages, sequence)`, which must take the lock the notifier's handler takes, check
    /// `notifier.readRetry(sequence)` under it, and program the translations only if that is
    /// `false`. It answers ``MirrorCommit/committed``, ``MirrorCommit/retry`` (a collision: snapshot
    /// again) or ``MirrorCommit/abort`` (the mirror is going away: stop). Repeats until a commit or
    /// an abort, or until `retryLimit` retries (unlimited when `nil`).
    ///
    /// Cost: linear in the range. Collisions the registration causes itself (copy-on-write breaks)
    /// cost one retry; each further retry needs an invalidation of the interval from elsewhere.
    ///
    /// Context: may sleep; must not be called from a notifier callback (``IntervalNotifier/readBegin()``
    /// would wait for the epoch the callback holds open; debug builds trap). `commit` runs on the
    /// calling thread with no engine lock held.
    ///
    /// - Returns: how it ended and after how many collisions.
    /// - Throws: what ``faultRange(address:length:write:notifier:sequence:)`` throws, before
    ///   `readBegin` for bad arguments; ``MemoryError/invalidArgument`` for a negative `retryLimit`.
    @discardableResult
    public func mirror(
        address: UInt64, length: UInt64, write: Bool, notifier: IntervalNotifier, retryLimit: Int? = nil,
        commit: ([MirrorPage], UInt64) -> MirrorCommit
    ) throws(MemoryError) -> MirrorOutcome {
        if let retryLimit, retryLimit < 0 { throw .invalidArgument }
        _ = try mirrorRangeEnd(address, length, notifier)
        var retries = 0
        while true {
            let sequence = notifier.readBegin()
            if let pages = try faultRange(
                address: address, length: length, write: write, notifier: notifier, sequence: sequence)
            {
                switch commit(pages, sequence) {
                case .committed: return .committed(retries: retries)
                case .abort: return .aborted(retries: retries)
                case .retry: break
                }
            }
            if let retryLimit, retries >= retryLimit { return .retryLimitReached(retries: retries) }
            retries += 1
        }
    }

    /// Validates a mirror range and returns its end: page-aligned start, length rounded up to
    /// pages, non-empty, inside the user address space and inside `notifier`'s interval.
    private func mirrorRangeEnd(_ address: UInt64, _ length: UInt64, _ notifier: IntervalNotifier)
        throws(MemoryError) -> UInt64
    {
        let end = try Self.userRangeEnd(address, length, nonEmpty: true)
        guard address >= notifier.start, end <= notifier.end else { throw .invalidArgument }
        return end
    }

    /// Throws unless `notifier` is a live interval notifier of this space.
    private func checkNotifier(_ notifier: IntervalNotifier) throws(MemoryError) {
        guard let subscriptions = subscriptionsPointer, notifier.state === subscriptions.takeUnretainedValue().intervals
        else { throw .invalidArgument }
        if !notifier.isInserted { throw .detached }
    }
}

/// What a mirror's commit step decided (see ``AddressSpace/mirror(address:length:write:notifier:retryLimit:commit:)``).
public enum MirrorCommit: Sendable, Hashable {
    /// The translations are programmed.
    case committed
    /// `readRetry` reported a collision: snapshot the range again.
    case retry
    /// Stop without programming anything (the mirror was detached or released).
    case abort
}

/// How ``AddressSpace/mirror(address:length:write:notifier:retryLimit:commit:)`` ended.
public enum MirrorOutcome: Sendable, Hashable {
    /// A commit succeeded after `retries` collisions.
    case committed(retries: Int)
    /// The commit step aborted.
    case aborted(retries: Int)
    /// `retryLimit` collisions in a row; nothing was committed.
    case retryLimitReached(retries: Int)

    /// Collisions that forced a new snapshot.
    public var retries: Int {
        switch self {
        case .committed(let retries), .aborted(let retries), .retryLimitReached(let retries): retries
        }
    }
}
