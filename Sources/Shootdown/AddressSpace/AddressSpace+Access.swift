import Synchronization

extension AddressSpace {
    /// Reads the content token of the page at `address`, faulting it in if needed (the model of a
    /// load instruction; marks the entry accessed, as the hardware would).
    ///
    /// Context: takes the page's split lock, and the mmap lock for reading when it faults: must
    /// not be called while holding a split lock (from a young or secondary-TLB callback) or from a
    /// callback that runs with this space's mmap lock held. Debug builds trap in both cases.
    public func read(at address: UInt64) throws(MemoryError) -> UInt64 {
        LockContext.mightSleep("AddressSpace.read(at:) (it may fault, and it takes the split lock)")
        while true {
            if let token = accessPresent(address, write: false, token: 0) { return token }
            try fault(at: address, access: .read)
        }
    }

    /// Writes `token` as the content of the page at `address`, faulting it in (and breaking
    /// copy-on-write) if needed (the model of a store instruction; marks the entry dirty).
    ///
    /// Context: as ``read(at:)``.
    public func write(_ token: UInt64, at address: UInt64) throws(MemoryError) {
        LockContext.mightSleep("AddressSpace.write(_:at:) (it may fault, and it takes the split lock)")
        while true {
            if accessPresent(address, write: true, token: token) != nil { return }
            try fault(at: address, access: .write)
        }
    }

    /// Performs the access under the entry's lock if the entry allows it; `nil` if a fault is
    /// needed. Taking the split lock orders the access against fork's write-protection and
    /// copy-on-write replacement, like a TLB flush would.
    private func accessPresent(_ address: UInt64, write: Bool, token: UInt64) -> UInt64? {
        guard address < Self.userLimit else { return nil }
        return RCU.withReadSection { () -> UInt64? in
            // After teardown the tables are retired (see `translate`): fault, which fails.
            guard !dead.load(ordering: .relaxed), let leaf = pageTable.lookup(address) else { return nil }
            let lock = leaf.isHuge ? pageTable.pmdLock(leaf.table) : pageTable.pteLock(leaf.table)
            return lock.withLock { () -> UInt64? in
                if leaf.isHuge {
                    // The slot must still hold a huge entry in this PMD table.
                    guard let slot = pageTable.existingPMDSlot(address), slot.0 == leaf.table else { return nil }
                } else if let (pmd, index) = pageTable.existingPMDSlot(address),
                    pmd.load(index).rawValue != PageTableEntry.table(at: leaf.table.address).rawValue
                {
                    return nil  // the table was detached meanwhile
                }
                let entry = leaf.table.load(leaf.index)
                guard entry.isPresent, entry.isHuge == leaf.isHuge, !write || entry.isWritable else { return nil }
                let frame = entry.number &+ (leaf.isHuge ? (address & (Self.hugePageSize - 1)) >> 12 : 0)
                let wanted = PageTableEntry.accessed | (write ? PageTableEntry.dirty : 0)
                if entry.rawValue & wanted != wanted {
                    leaf.table[leaf.index].pointee.store(entry.rawValue | wanted, ordering: .relaxed)
                }
                if write {
                    memory.setToken(token, of: frame)
                    return token
                }
                return memory.token(of: frame)
            }
        }
    }
}
