import Synchronization

/// One page of a range snapshot taken for a mirror.
public struct MirrorPage: Hashable, Sendable {
    /// Page address.
    public var address: UInt64
    /// The frame the CPU page table maps there.
    public var frame: UInt64
    /// Whether the CPU entry allows writes.
    public var writable: Bool

    public init(address: UInt64, frame: UInt64, writable: Bool) {
        self.address = address
        self.frame = frame
        self.writable = writable
    }
}

extension AddressSpace {
    /// Faults in `[start, end)` and snapshots its translations (`hmm_range_fault`), under the mmap
    /// read lock. Gives up early, returning `nil` (the kernel's `-EBUSY`), as soon as
    /// `notifier.checkRetry(sequence)` reports a collision.
    ///
    /// - Throws: ``MemoryError/badAddress`` if a page is not mapped with the needed access (the
    ///   kernel's `-EFAULT`), ``MemoryError/outOfMemory``, ``MemoryError/invalidArgument`` for an
    ///   unaligned or empty range.
    public func faultRange(
        _ start: UInt64, _ end: UInt64, write: Bool, notifier: IntervalNotifier, sequence: UInt64
    ) throws(MemoryError) -> [MirrorPage]? {
        guard Self.isPageAligned(start), Self.isPageAligned(end), start < end, end <= Self.userLimit else {
            throw .invalidArgument
        }
        let access: Access = write ? .write : .read
        return try mmapLock.withReadLock { () throws(MemoryError) -> [MirrorPage]? in
            try checkAlive()
            var pages: [MirrorPage] = []
            pages.reserveCapacity(Int((end - start) / Self.pageSize))
            var page = start
            while page < end {
                // Unretained: VMAs cannot be freed while the mmap read lock is held.
                guard let found = index.lookup(page) else { throw .badAddress }
                let outcome = found._withUnsafeGuaranteedRef { vma -> MemoryError?? in
                    guard Self.accessAllowed(vma.protection, access) else { return .some(.badAddress) }
                    let stop = min(vma.end, end)
                    while page < stop {
                        if notifier.checkRetry(sequence) { return .none }
                        if let entry = translate(page), entry.isPresent, !write || entry.isWritable {
                            pages.append(MirrorPage(address: page, frame: entry.number, writable: entry.isWritable))
                            page += Self.pageSize
                            continue
                        }
                        // Fault it in, then read the entry again (without advancing).
                        do throws(MemoryError) {
                            try handleFault(vma, page, access)
                        } catch {
                            return .some(error)
                        }
                    }
                    return .some(nil)
                }
                switch outcome {
                case .none: return nil  // collision: the caller retries
                case .some(.some(let error)): throw error
                case .some(.none): continue
                }
            }
            return pages
        }
    }

    /// The whole mirror protocol for `[start, end)` (docs/protocols.md, "Mirrors"): `readBegin`,
    /// fault and snapshot the range, then `commit(pages, sequence)`, which must take the lock the
    /// notifier's handler takes, check `notifier.readRetry(sequence)` under it, and program the
    /// translations only if that is `false`. It answers ``MirrorCommit/committed``,
    /// ``MirrorCommit/retry`` (a collision: snapshot again) or ``MirrorCommit/abort`` (the mirror
    /// is going away: stop). Repeats until a commit or an abort, or until `retryLimit` retries
    /// (unlimited when `nil`).
    ///
    /// - Returns: how it ended and after how many collisions.
    @discardableResult
    public func mirror(
        _ start: UInt64, _ end: UInt64, write: Bool, notifier: IntervalNotifier, retryLimit: Int? = nil,
        commit: ([MirrorPage], UInt64) -> MirrorCommit
    ) throws(MemoryError) -> MirrorOutcome {
        if let retryLimit, retryLimit < 0 { throw .invalidArgument }
        var retries = 0
        while true {
            let sequence = notifier.readBegin()
            if let pages = try faultRange(start, end, write: write, notifier: notifier, sequence: sequence) {
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
}

/// What a mirror's commit step decided (see ``AddressSpace/mirror(_:_:write:notifier:retryLimit:commit:)``).
public enum MirrorCommit: Sendable, Hashable {
    /// The translations are programmed.
    case committed
    /// `readRetry` reported a collision: snapshot the range again.
    case retry
    /// Stop without programming anything (the mirror was detached or released).
    case abort
}

/// How ``AddressSpace/mirror(_:_:write:notifier:retryLimit:commit:)`` ended.
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
