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

    /// The whole mirror protocol for `[start, end)` (docs/protocols.md, "Mirrors"): `readBegin`, fault and
    /// snapshot the range, then `commit(pages, sequence)`, which must take the lock the notifier's
    /// handler takes, check `notifier.readRetry(sequence)` under it, program the translations only
    /// if that is `false`, and return whether it committed. Repeats until a commit succeeds.
    ///
    /// - Returns: the number of collisions that forced a retry.
    @discardableResult
    public func mirror(
        _ start: UInt64, _ end: UInt64, write: Bool, notifier: IntervalNotifier,
        commit: ([MirrorPage], UInt64) -> Bool
    ) throws(MemoryError) -> Int {
        var retries = 0
        while true {
            let sequence = notifier.readBegin()
            if let pages = try faultRange(start, end, write: write, notifier: notifier, sequence: sequence),
                commit(pages, sequence)
            {
                return retries
            }
            retries += 1
        }
    }
}
