import Synchronization

extension AddressSpace {
    /// The per-VMA-lock fault path (``FaultPath/perVMALock``, the kernel's `lock_vma_under_rcu` +
    /// `handle_mm_fault(FAULT_FLAG_VMA_LOCK)`): find the VMA without the mmap lock, take its read
    /// lock, and handle the whole fault under it and the split lock, exactly as the classic path
    /// does under the mmap read lock (anonymous, zero page, copy-on-write, swap-in, shared memory,
    /// huge pages).
    ///
    /// Returns `false` when the classic path must run instead (`VMA_LOCK_ABORT`: no VMA, VMA
    /// write-locked, address outside it once locked), and when a private VMA's first write needs
    /// an `anon_vma` while the mmap read lock is not free (`VMA_LOCK_RETRY`,
    /// ``prepareAnonVMAUnderVMALock(_:)``). Nothing else needs the mmap lock once the VMA is
    /// locked here: the kernel's other reasons to retry — waiting for I/O, userfaultfd — do not
    /// exist in this engine, and the one thing a fault does that the mmap lock used to exclude,
    /// an invalidation racing notifier registration, is excluded by registration write-locking
    /// every VMA (``writeLockAllVMAs()``). An access violation found under the VMA lock is
    /// reported here, without falling back, as the kernel does.
    ///
    /// Shared memory written: one RMW of the VMA's reference count to lock and one to unlock, plus
    /// what the fault itself writes (split lock, entry, counters). No heap allocation, no
    /// retain/release.
    ///
    /// - Throws: ``MemoryError/segmentationFault`` against the VMA's protection,
    ///   ``MemoryError/outOfMemory`` when no frame is left.
    @usableFromInline
    func vmaLockFault(_ address: UInt64, _ access: Access) throws(MemoryError) -> Bool {
        guard let locked = lockVMAUnderRCU(address) else { return false }
        var retry = false
        // Unretained: a read-locked VMA cannot be removed, so it cannot be freed.
        let failure = locked._withUnsafeGuaranteedRef { vma -> MemoryError? in
            guard Self.accessAllowed(vma.protection, access) else { return .segmentationFault }
            if access == .write && !prepareAnonVMAUnderVMALock(vma) {
                retry = true
                return nil
            }
            do throws(MemoryError) {
                try handleFault(vma, address, access)
                return nil
            } catch {
                return error
            }
        }
        locked._withUnsafeGuaranteedRef { $0.endRead(mmapLock) }
        if retry {
            counters.increment(SpaceCounter.vmaLockRetry.rawValue)
            return false
        }
        counters.increment(SpaceCounter.vmaLockSuccess.rawValue)
        if let failure {
            count(failure == .outOfMemory ? .outOfMemoryFaults : .segmentationFaults)
            throw failure
        }
        return true
    }

    /// `vmf_anon_prepare` under a VMA lock: a private VMA's first write fault gives it an
    /// `anon_vma`, picked by reading its neighbours (``prepareAnonVMA(_:)``), which writers change
    /// under the mmap write lock without write-locking this VMA. So it needs the mmap read lock:
    /// taken without waiting, or `false` (the caller drops the VMA lock and the classic path runs,
    /// `VMA_LOCK_RETRY`). `true` when nothing is needed or the `anon_vma` is set. Cold after the
    /// first write to each VMA.
    ///
    /// - Precondition: `vma` read-locked.
    @inline(__always)
    func prepareAnonVMAUnderVMALock(_ vma: VMA) -> Bool {
        if vma.anonVMA != 0 || vma.sharedObject != nil { return true }
        return prepareAnonVMAWithTryLock(vma)
    }

    @inline(never)
    func prepareAnonVMAWithTryLock(_ vma: VMA) -> Bool {
        guard mmapLock.tryReadLock() else { return false }
        prepareAnonVMA(vma)
        mmapLock.readUnlock()
        return true
    }

    /// `lock_vma_under_rcu`: the VMA containing `address`, read-locked, or `nil` (counted as
    /// `VMA_LOCK_ABORT`). The RCU read section covers the lookup and the locking only: once
    /// locked, the VMA outlives it (removal waits for readers), and the fault may then run
    /// notifier callbacks, which must not run inside this domain.
    @inlinable
    func lockVMAUnderRCU(_ address: UInt64) -> Unmanaged<VMA>? {
        RCU.readLock()
        defer { RCU.readUnlock() }
        return lockVMA(containing: address, found: index.lookup(address))
    }

    /// The body of ``lockVMAUnderRCU(_:)``, starting from `found`, the result of a lookup of
    /// `address` (tests pass a stale one to exercise the retry).
    ///
    /// - Precondition: inside an RCU read section that began before `found` was looked up.
    @inlinable
    func lockVMA(containing address: UInt64, found: Unmanaged<VMA>?) -> Unmanaged<VMA>? {
        var candidate = found
        while let vma = candidate {
            let result = vma._withUnsafeGuaranteedRef { $0.startRead(mmapLock) }
            if result == .detached {
                // Removed after the lookup found it: the index no longer holds it, look again.
                counters.increment(SpaceCounter.vmaLockMiss.rawValue)
                candidate = index.lookup(address)
                continue
            }
            if result == .locked {
                // Bounds are stable now; the VMA may have shrunk between the lookup and the lock.
                if vma._withUnsafeGuaranteedRef({ address >= $0.start && address < $0.end }) { return vma }
                vma._withUnsafeGuaranteedRef { $0.endRead(mmapLock) }
            }
            break  // write-locked, or no longer covering the address
        }
        counters.increment(SpaceCounter.vmaLockAbort.rawValue)
        return nil
    }

    // MARK: - Writers

    /// `vma_start_write` on `vma` when this space's faults use VMA locks (a no-op otherwise, so
    /// the other fault paths' writers pay nothing for them). Waits for the VMA's readers.
    ///
    /// - Precondition: the mmap write lock.
    func writeLockVMA(_ vma: VMA) {
        if vmaLocksEnabled { vma.startWrite(mmapLock) }
    }

    /// Write-locks every VMA of the space (the VMA part of `mm_take_all_locks`), so no fault runs
    /// under a VMA lock until the mmap write lock is released. Notifier registration needs this: a
    /// fault under a VMA lock may be inside an invalidation (copy-on-write), and a subscriber or
    /// interval tree appearing between its start and its end would see one without the other.
    ///
    /// - Precondition: the mmap write lock.
    func writeLockAllVMAs() {
        guard vmaLocksEnabled else { return }
        var cursor = index.first
        while let vma = cursor {
            vma.startWrite(mmapLock)
            cursor = vma.next
        }
    }
}
