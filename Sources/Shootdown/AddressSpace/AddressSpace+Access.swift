import Synchronization

extension AddressSpace {
    /// Reads the content token of the page at `address`, faulting it in if needed (the model of a
    /// load instruction; marks the entry accessed, as the hardware would). With software TLBs
    /// (``Configuration/tlb``) a hit costs no walk and no lock (docs/tlb.md).
    ///
    /// Context: a walk takes the page's split lock, and the mmap lock for reading when it faults:
    /// must not be called while holding a split lock (from a young or secondary-TLB callback) or
    /// from a callback that runs with this space's mmap lock held. Debug builds trap in both cases.
    @inlinable
    public func read(at address: UInt64) throws(MemoryError) -> UInt64 {
        if let tlb {
            if let token = tlb.access(address, write: false, token: 0) { return token }
            return try readWalking(address, filling: tlb)
        }
        return try readWalking(address)
    }

    /// Writes `token` as the content of the page at `address`, faulting it in (and breaking
    /// copy-on-write) if needed (the model of a store instruction; marks the entry dirty). With
    /// software TLBs a hit on a writable, dirty entry costs no walk and no lock.
    ///
    /// Context: as ``read(at:)``.
    @inlinable
    public func write(_ token: UInt64, at address: UInt64) throws(MemoryError) {
        if let tlb {
            if tlb.access(address, write: true, token: token) != nil { return }
            return try writeWalking(token, address, filling: tlb)
        }
        try writeWalking(token, address)
    }

    /// ``read(at:)`` by walking the page table (a space without TLBs: exactly what it always was).
    @usableFromInline
    func readWalking(_ address: UInt64) throws(MemoryError) -> UInt64 {
        LockContext.mightSleep("AddressSpace.read(at:) (it may fault, and it takes the split lock)")
        while true {
            var writeProtected = false
            if let token = accessPresent(address, write: false, token: 0, filling: nil, writeProtected: &writeProtected) {
                return token
            }
            try fault(at: address, access: .read)
        }
    }

    /// ``read(at:)`` after a TLB miss: the walk, loading the translation into the calling thread's
    /// TLB.
    @usableFromInline
    func readWalking(_ address: UInt64, filling tlb: SoftwareTLB) throws(MemoryError) -> UInt64 {
        LockContext.mightSleep("AddressSpace.read(at:) (it may fault, and it takes the split lock)")
        while true {
            var writeProtected = false
            if let token = accessPresent(address, write: false, token: 0, filling: tlb, writeProtected: &writeProtected) {
                return token
            }
            try fault(at: address, access: .read)
        }
    }

    /// ``write(_:at:)`` by walking the page table (a space without TLBs).
    @usableFromInline
    func writeWalking(_ token: UInt64, _ address: UInt64) throws(MemoryError) {
        LockContext.mightSleep("AddressSpace.write(_:at:) (it may fault, and it takes the split lock)")
        var writeProtected = false
        while true {
            writeProtected = false
            if accessPresent(address, write: true, token: token, filling: nil, writeProtected: &writeProtected) != nil {
                return
            }
            try writeFault(address, writeProtected: writeProtected)
        }
    }

    /// ``write(_:at:)`` after a TLB miss, loading the translation into the calling thread's TLB.
    @usableFromInline
    func writeWalking(_ token: UInt64, _ address: UInt64, filling tlb: SoftwareTLB) throws(MemoryError) {
        LockContext.mightSleep("AddressSpace.write(_:at:) (it may fault, and it takes the split lock)")
        var writeProtected = false
        while true {
            writeProtected = false
            if accessPresent(address, write: true, token: token, filling: tlb, writeProtected: &writeProtected) != nil {
                return
            }
            try writeFault(address, writeProtected: writeProtected)
        }
    }

    /// The write fault of a store that found no usable entry. When the walk found the entry
    /// present but read-only (`writeProtected`: copy-on-write, a soft-dirty or write-notify
    /// re-arm), the speculative path would only abort after its lookup (it never replaces or
    /// upgrades a present entry), so a space on that path goes straight to the classic one.
    @inline(__always)
    private func writeFault(_ address: UInt64, writeProtected: Bool) throws(MemoryError) {
        if writeProtected && speculativeEnabled {
            try classicFault(address, .write)
        } else {
            try fault(at: address, access: .write)
        }
    }

    /// Performs the access under the entry's lock if the entry allows it; `nil` if a fault is
    /// needed. Taking the split lock orders the access against fork's write-protection and
    /// copy-on-write replacement, like a TLB flush would. With `tlb` the translation is also
    /// loaded into the calling thread's TLB, under the same lock (docs/tlb.md, "Filling"); inlined
    /// into each caller, so a space without TLBs runs no code for it. Sets `writeProtected` when
    /// a store found the entry present but read-only (see ``writeFault(_:writeProtected:)``).
    @inline(__always)
    private func accessPresent(
        _ address: UInt64, write: Bool, token: UInt64, filling tlb: SoftwareTLB?, writeProtected: inout Bool
    ) -> UInt64? {
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
                guard entry.isPresent, entry.isHuge == leaf.isHuge else { return nil }
                if write && !entry.isWritable {
                    writeProtected = true
                    return nil
                }
                let frame = entry.number &+ (leaf.isHuge ? (address & (Self.hugePageSize - 1)) >> 12 : 0)
                let wanted = PageTableEntry.accessed | (write ? PageTableEntry.dirty : 0)
                if entry.rawValue & wanted != wanted {
                    leaf.table[leaf.index].pointee.store(entry.rawValue | wanted, ordering: .relaxed)
                    if write { memory.markDirty(frame) }
                }
                if let tlb {
                    tlb.fill(
                        address, token: memory.tokens + Int(truncatingIfNeeded: frame),
                        writeThrough: entry.isWritable && (write || entry.isDirty))
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
