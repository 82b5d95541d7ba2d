import Synchronization

extension AddressSpace {
    /// A device store through a secondary translation (a mirror's device writing a page it
    /// mirrors): sets the content of `frame` to `token`, after checking, under the page's split
    /// lock, that the CPU page table maps `frame` writable at `address`. A store therefore reaches
    /// a frame only through a translation that is valid at that moment, never a frame that was
    /// unmapped, replaced by copy-on-write, migrated, swapped out or freed. Marks the CPU entry
    /// dirty (its content changed) but not accessed (secondary accesses are reported through the
    /// young callbacks).
    ///
    /// A mirror that follows the interval-notifier protocol calls this under the lock its handler
    /// takes, for a writable translation it holds: any change of the CPU entry is preceded by an
    /// invalidation whose handler waits for that lock, so the check passes. It fails only for a
    /// stale translation, which is a bug in the mirror.
    ///
    /// Context: lock-free (an RCU read section and the page's split lock); never sleeps. Must not
    /// be called while holding a split lock (from a young or secondary-TLB callback).
    ///
    /// - Parameters:
    ///   - token: the page's new content.
    ///   - address: any address in the page.
    ///   - frame: the frame the caller's translation names for that page.
    /// - Throws: ``MemoryError/invalidArgument`` for an address outside the user address space;
    ///   ``MemoryError/badAddress`` if the CPU page table does not map `frame` writable at
    ///   `address`; ``MemoryError/addressSpaceDead`` after teardown.
    public func deviceWrite(_ token: UInt64, at address: UInt64, frame: UInt64) throws(MemoryError) {
        guard address < Self.userLimit else { throw .invalidArgument }
        try checkAlive()
        testHook(.deviceAccessAfterAliveCheck)
        if accessThroughTranslation(address, frame: frame, write: true, token: token) == nil { try failedAccess() }
    }

    /// A device load through a secondary translation: the content of `frame`, after checking under
    /// the page's split lock that the CPU page table maps `frame` at `address`.
    ///
    /// Context: as ``deviceWrite(_:at:frame:)``.
    ///
    /// - Throws: ``MemoryError/invalidArgument`` for an address outside the user address space;
    ///   ``MemoryError/badAddress`` if the CPU page table does not map `frame` at `address`;
    ///   ``MemoryError/addressSpaceDead`` after teardown.
    public func deviceRead(at address: UInt64, frame: UInt64) throws(MemoryError) -> UInt64 {
        guard address < Self.userLimit else { throw .invalidArgument }
        try checkAlive()
        testHook(.deviceAccessAfterAliveCheck)
        guard let token = accessThroughTranslation(address, frame: frame, write: false, token: 0) else {
            try failedAccess()
        }
        return token
    }

    /// The error of a device access that found no valid translation: the space died after the
    /// caller's liveness check (teardown marks it dead before it releases the subscribers, so a
    /// mirror still holds its translations meanwhile), or the translation is stale.
    private func failedAccess() throws(MemoryError) -> Never {
        // A later load of `dead` on this thread sees at least the value the access saw.
        try checkAlive()
        throw .badAddress
    }

    /// Loads or stores the content of `frame` if the present entry for `address` maps it (and
    /// allows writes, for a store); `nil` otherwise. Under the entry's split lock, so the access is
    /// ordered against every change of the entry.
    private func accessThroughTranslation(_ address: UInt64, frame: UInt64, write: Bool, token: UInt64) -> UInt64? {
        RCU.withReadSection { () -> UInt64? in
            // After teardown the tables are retired (see `translate`).
            guard !dead.load(ordering: .relaxed), let leaf = pageTable.lookup(address) else { return nil }
            let lock = leaf.isHuge ? pageTable.pmdLock(leaf.table) : pageTable.pteLock(leaf.table)
            return lock.withLock { () -> UInt64? in
                if leaf.isHuge {
                    guard let slot = pageTable.existingPMDSlot(address), slot.0 == leaf.table else { return nil }
                } else if let (pmd, index) = pageTable.existingPMDSlot(address),
                    pmd.load(index).rawValue != PageTableEntry.table(at: leaf.table.address).rawValue
                {
                    return nil  // the table was detached meanwhile
                }
                let entry = leaf.table.load(leaf.index)
                guard entry.isPresent, entry.isHuge == leaf.isHuge, !write || entry.isWritable else { return nil }
                let mapped = entry.number &+ (leaf.isHuge ? (address & (Self.hugePageSize - 1)) >> 12 : 0)
                guard mapped == frame, frame != PhysicalMemory.zeroFrame || !write else { return nil }
                if write {
                    if !entry.isDirty {
                        leaf.table[leaf.index].pointee.store(entry.rawValue | PageTableEntry.dirty, ordering: .relaxed)
                        memory.markDirty(frame)
                    }
                    memory.setToken(token, of: frame)
                    return token
                }
                return memory.token(of: frame)
            }
        }
    }
}
