import Synchronization

extension AddressSpace {
    /// The classic fault path (`lock_mm_and_find_vma` + `handle_mm_fault`): under the mmap read
    /// lock, find the VMA, check access, then handle the PMD or PTE under its lock.
    /// Always inlined (into ``fault(at:access:)`` and the access path's write fault): one frame
    /// for the whole fault.
    @usableFromInline @inline(__always)
    func classicFault(_ address: UInt64, _ access: Access) throws(MemoryError) {
        mmapLock.readLock()
        defer { mmapLock.readUnlock() }
        // Unretained: no VMA can be freed while the mmap read lock is held (removal needs the
        // write lock), so the fault path does no reference counting.
        var lookedUp: Unmanaged<VMA>? = nil
        if address < Self.userLimit && !dead.load(ordering: .relaxed) {
            lookedUp = index.lookup(address)
            if lookedUp == nil { lookedUp = lookupAfterGrowingStack(address) }
        }
        guard let found = lookedUp else {
            count(.segmentationFaults)
            throw .segmentationFault
        }
        // The three fields the common case needs, read through the unretained reference (a tiny
        // closure the optimiser inlines; the general path's larger one stays out of line).
        let (protection, anonymous, hasAnonVMA) = found._withUnsafeGuaranteedRef { vma in
            (vma.protection, vma.sharedObject == nil, vma.anonVMA != 0)
        }
        let failure: MemoryError?
        if !Self.accessAllowed(protection, access) {
            failure = .segmentationFault
        } else {
            // Private anonymous memory (no backing object, as `handlePTEFault` decides it); a write
            // needs the `anon_vma`, which only the general path prepares. Two inlined copies, each
            // with `write` a constant.
            let outcome: FastFaultOutcome =
                if !anonymous { .general }
                else if access == .write { hasAnonVMA ? anonymousFastFault(address, write: true) : .general }
                else { anonymousFastFault(address, write: false) }
            switch outcome {
            case .installed: failure = nil
            case .outOfMemory: failure = .outOfMemory
            case .general:
                // `_withUnsafeGuaranteedRef` is untyped-rethrows: carry the typed error out as a value.
                failure = found._withUnsafeGuaranteedRef { vma in handleFaultReportingError(vma, address, access) }
            }
        }
        if let failure {
            count(failure == .outOfMemory ? .outOfMemoryFaults : .segmentationFaults)
            throw failure
        }
        count(.classicFaults)
    }

    /// How ``anonymousFastFault(_:write:)`` ended.
    enum FastFaultOutcome {
        /// The entry was installed (a zero-page read counted as such; the caller counts the fault).
        case installed
        /// No frame was left: the fault fails as the general path's would.
        case outOfMemory
        /// Not the common case, or the entry changed under us: the general path handles it.
        case general
    }

    /// The common fault, straight-line: a missing 4 KiB entry of private anonymous memory whose PTE
    /// table exists (a fresh frame for a write, the zero page for a read). Exactly what
    /// ``handleFault(_:_:_:)`` does in that case, minus its set-up (the upper-table walk with
    /// allocation, the huge-page checks, the retry loop and the backing-object branches); anything
    /// else — a missing PTE table, a huge or empty PMD entry, a non-empty entry — goes to the
    /// general path untouched. The caller has checked the VMA: access allowed, no backing object,
    /// and for a write an `anon_vma` (the first anonymous write takes the general path, which
    /// prepares it).
    ///
    /// Concurrency: as the general path. Under the mmap read lock no table is detached, so the PTE
    /// table found here stays linked; its entries change only under its split lock, so the entry is
    /// re-checked under that lock before the install, and a racing install (another classic fault,
    /// a speculative one) makes this one drop its unmapped frame and leave the retry to the general
    /// path, which starts over from the PMD. The install is a releasing store: the frame's counts
    /// and zeroed token are visible to lockless readers that load the entry.
    ///
    /// - Precondition: the mmap read lock; the VMA at `address` checked as above.
    @inline(__always)
    func anonymousFastFault(_ address: UInt64, write: Bool) -> FastFaultOutcome {
        guard let pmd = pageTable.existingPMDTable(for: address) else { return .general }
        let pmdEntry = pmd.load(PageTable.index(address, level: 1))
        // A PTE table (present, not huge; one test for both). Anything else goes to the general
        // path: empty (it allocates the PTE table or maps a huge page), huge (its handler).
        guard pmdEntry.rawValue & (PageTableEntry.present | PageTableEntry.huge) == PageTableEntry.present
        else { return .general }
        let pte = TableBlock(entry: pmdEntry)
        let slot = PageTable.index(address, level: 0)
        guard pte.load(slot).isNone else { return .general }
        // The split lock's address, before the allocation (fewer values live across it).
        let lock = pageTable.pteLock(pte)
        // Read: the zero page, read-only (`do_anonymous_page`); write: a fresh frame.
        var frame = PhysicalMemory.zeroFrame
        if write {
            guard let fresh = memory.allocate() else { return .outOfMemory }
            frame = fresh
        }
        let installed = PageTableEntry.leaf(frame: frame, writable: write, dirty: write, softDirty: write)
        testHook(.classicFastFaultBeforeLock)
        lock.lock()
        guard pte.load(slot).isNone else {
            lock.unlock()
            if write { dropUnmappedFrame(frame) }
            return .general
        }
        // Releasing: the frame's state is visible to lockless readers of the entry.
        pte[slot].pointee.store(installed.rawValue, ordering: .releasing)
        lock.unlock()
        if !write { count(.zeroPageFaults) }
        return .installed
    }

    /// ``handleFault(_:_:_:)`` with its typed error as a value (for the closure of
    /// ``classicFault(_:_:)``, which cannot throw it). Out of line: the fast path is the common case.
    @inline(never)
    func handleFaultReportingError(_ vma: VMA, _ address: UInt64, _ access: Access) -> MemoryError? {
        do throws(MemoryError) {
            try handleFault(vma, address, access)
            return nil
        } catch {
            return error
        }
    }

    /// Drops the mapping reference of `frame`, allocated for an install that lost its race and
    /// never mapped (no invalidation owed). Cold.
    @inline(never)
    func dropUnmappedFrame(_ frame: UInt64) {
        var chain = FrameChain()
        memory.unmapFrame(frame, into: &chain)
        memory.release(chain)
    }

    /// No VMA at `address`: if the next VMA above grows down, grow it (``expandStack(to:)``, which
    /// takes the mmap write lock: the read lock is dropped and retaken) and look again. Cold.
    ///
    /// - Precondition: the mmap read lock (held again on return).
    @inline(never)
    func lookupAfterGrowingStack(_ address: UInt64) -> Unmanaged<VMA>? {
        guard let above = index.findFirst(endingAfter: address), above.flags.contains(.growsDown) else { return nil }
        mmapLock.readUnlock()
        let grew = expandStack(to: address)
        mmapLock.readLock()
        return grew && !dead.load(ordering: .relaxed) ? index.lookup(address) : nil
    }

    /// Handles a fault at `address` in `vma` (mmap read lock held, access already checked).
    func handleFault(_ vma: VMA, _ address: UInt64, _ access: Access) throws(MemoryError) {
        let write = access == .write
        if write && vma.anonVMA == 0 && !vma.isShared { prepareAnonVMA(vma) }
        guard let pmd = pageTable.pmdTable(for: address) else { throw .outOfMemory }
        let pmdIndex = PageTable.index(address, level: 1)
        let hugeStart = address & ~(Self.hugePageSize - 1)
        while true {
            var pmdEntry = pmd.load(pmdIndex)
            if pmdEntry.isNone && vma.allowsHuge(at: hugeStart) {
                // The huge fault prepares the anon_vma first, for a read too (`vmf_anon_prepare`
                // before the huge zero page; measured: a read-only mprotect then keeps `ac`).
                if vma.anonVMA == 0 { prepareAnonVMA(vma) }
                if try installHuge(vma, pmd: pmd, index: pmdIndex, write: write) { return }
                pmdEntry = pmd.load(pmdIndex)  // no whole block free, or the slot was filled meanwhile
            }
            if pmdEntry.isHuge {
                if try handleHugeFault(vma, pmd: pmd, index: pmdIndex, address: address, write: write) { return }
                continue
            }
            // nil: a huge mapping raced in.
            guard let pte = pageTable.pteTable(in: pmd, at: pmdIndex, entry: pmdEntry) else { continue }
            if try handlePTEFault(vma, pte: pte, address: address, write: write) { return }
        }
    }

    /// A huge fault (`do_huge_pmd_anonymous_page`): one 2 MiB compound frame in one PMD entry.
    /// Returns `false` when it could not (no whole free block, or the slot got filled meanwhile).
    /// Out of line: inlined, its set-up was hoisted into every ``handleFault(_:_:_:)``.
    @inline(never)
    private func installHuge(_ vma: VMA, pmd: TableBlock, index: Int, write: Bool) throws(MemoryError) -> Bool {
        guard let head = memory.allocateHuge() else { return false }
        let lock = pageTable.pmdLock(pmd)
        lock.lock()
        guard pmd.load(index).isNone else {
            lock.unlock()
            memory.freeUnusedHuge(head)
            return false
        }
        let entry = PageTableEntry.leaf(frame: head, writable: write, dirty: write, softDirty: true, huge: true)
        // A CAS even under pmd_lock: another classic fault (mmap read lock too) may CAS a PTE table
        // into this slot without that lock. Releasing: the zeroed compound is visible to lockless
        // readers of the entry.
        let installed = pmd[index].pointee.compareExchange(
            expected: 0, desired: entry.rawValue, ordering: .acquiringAndReleasing
        ).exchanged
        lock.unlock()
        if !installed {
            memory.freeUnusedHuge(head)
            return false
        }
        count(.hugeFaults)
        return true
    }

    /// A fault on a present huge mapping: spurious, or a write to a read-only one (exclusive by
    /// construction: fork splits huge mappings, so the compound is reused in place). Out of line,
    /// as ``installHuge(_:pmd:index:write:)``.
    @inline(never)
    private func handleHugeFault(
        _ vma: VMA, pmd: TableBlock, index: Int, address: UInt64, write: Bool
    ) throws(MemoryError) -> Bool {
        let lock = pageTable.pmdLock(pmd)
        lock.lock()
        defer { lock.unlock() }
        let entry = pmd.load(index)
        guard entry.isHuge else { return false }
        var bits = PageTableEntry.accessed
        if write {
            bits |= PageTableEntry.writable | PageTableEntry.dirty | PageTableEntry.softDirty
        }
        if entry.rawValue & bits != bits {
            pmd[index].pointee.store(entry.rawValue | bits, ordering: .relaxed)
        } else {
            count(.spuriousFaults)
        }
        return true
    }

    /// A fault on a 4 KiB entry. Returns `false` to retry (the entry changed under us).
    private func handlePTEFault(_ vma: VMA, pte: TableBlock, address: UInt64, write: Bool) throws(MemoryError) -> Bool {
        let slot = PageTable.index(address, level: 0)
        let lock = pageTable.pteLock(pte)
        let entry = pte.load(slot)

        if entry.isNone {
            if let object = vma.sharedObject {
                let offset = vma.pageOffset + (address - vma.start) / Self.pageSize
                // Past the object's end (a shared mapping grown by mremap): `VM_FAULT_SIGBUS`. A
                // read faults around first, as Linux tries fault-around before the page itself:
                // the cached pages of the window are mapped even though this fault fails.
                guard offset < object.pageLimit else {
                    if !write {
                        let writable = vma.isShared && vma.protection.contains(.write)
                        faultAround(vma, object, pte: pte, address: address, writable: writable)
                    }
                    throw .busError
                }
                if write && !vma.isShared {
                    // A private file mapping's first write (`do_cow_fault`): a copy of the
                    // file's page, anonymous memory of this VMA.
                    guard let frame = memory.allocate() else { throw .outOfMemory }
                    memory.setToken(object.token(at: offset), of: frame)
                    let installed = PageTableEntry.leaf(frame: frame, writable: true, dirty: true, softDirty: true)
                    return installIfUnchanged(pte, slot, lock, expected: entry, installed, orRelease: frame)
                }
                // Shared memory (`do_shared_fault`): the object's page, writable if the VMA is;
                // a private file mapping's read (`do_read_fault`): the file's page, read-only.
                // Acquiring: pairs with a hole punch's releasing bump (see `punches`).
                let punches = object.punches.load(ordering: .acquiring)
                guard let frame = object.mapPage(at: offset) else { throw .outOfMemory }
                let writable = vma.isShared && vma.protection.contains(.write)
                let installed = PageTableEntry.leaf(frame: frame, writable: writable, dirty: write, softDirty: true)
                let done = installIfUnchanged(
                    pte, slot, lock, expected: entry, installed, orRelease: frame, unlessPunched: object, since: punches)
                if done && write { memory.markDirty(frame) }
                if done && !write { faultAround(vma, object, pte: pte, address: address, writable: writable) }
                return done
            }
            if !write {
                // Read of private anonymous memory: the zero page, read-only (`do_anonymous_page`).
                let installed = PageTableEntry.leaf(
                    frame: PhysicalMemory.zeroFrame, writable: false, dirty: false, softDirty: false)
                let done = installIfUnchanged(pte, slot, lock, expected: entry, installed, orRelease: nil)
                if done { count(.zeroPageFaults) }
                return done
            }
            guard let frame = memory.allocate() else { throw .outOfMemory }
            let installed = PageTableEntry.leaf(frame: frame, writable: true, dirty: true, softDirty: true)
            return installIfUnchanged(pte, slot, lock, expected: entry, installed, orRelease: frame)
        }

        if entry.isGuard { throw .segmentationFault }
        if entry.isSwap { return try swapIn(vma, pte: pte, slot: slot, entry: entry, write: write) }

        if entry.isProtNone {
            // Accessible VMA over a PROT_NONE entry: restore a read-only present entry and retry.
            lock.lock()
            if pte.load(slot) == entry {
                pte[slot].pointee.store(
                    entry.without(PageTableEntry.protNone | PageTableEntry.writable).with(PageTableEntry.present)
                        .rawValue, ordering: .releasing)
            }
            lock.unlock()
            return false
        }

        // Present.
        if !write || entry.isWritable {
            let wanted = PageTableEntry.accessed | (write ? PageTableEntry.dirty : 0)
            lock.lock()
            defer { lock.unlock() }
            let current = pte.load(slot)
            guard current == entry else { return false }
            if current.rawValue & wanted != wanted {
                pte[slot].pointee.store(current.rawValue | wanted, ordering: .relaxed)
                if write { memory.markDirty(current.number) }
            } else {
                count(.spuriousFaults)
            }
            return true
        }

        // Write to a read-only entry of a writable VMA (`do_wp_page`).
        let frame = entry.number
        if vma.isShared || memory.isExclusiveIgnoringPins(frame) {  // false for the zero page
            // Reuse: shared memory, or a private frame nobody else maps (soft-dirty re-arm, or the
            // other side of a fork already copied or exited), pinned or not: a pinned frame must
            // stay the one the device uses.
            lock.lock()
            defer { lock.unlock() }
            guard pte.load(slot) == entry, vma.isShared || memory.isExclusiveIgnoringPins(frame) else { return false }
            let bits = PageTableEntry.writable | PageTableEntry.dirty | PageTableEntry.softDirty
                | PageTableEntry.accessed
            pte[slot].pointee.store(entry.rawValue | bits, ordering: .relaxed)
            memory.markDirty(frame)
            return true
        }
        return try copyOnWrite(vma, pte: pte, slot: slot, entry: entry, address: address)
    }

    /// Pages a read fault of a page-cache page also maps around it (Linux's default
    /// `fault_around_bytes`, 64 KiB).
    static let faultAroundPages: UInt64 = 16

    /// Fault-around (`do_fault_around` and `filemap_map_pages`): after a read fault installed a
    /// page of `object`, maps the other pages of the aligned 16-page window around `address`
    /// that the object already caches and whose entries are empty, clean (a later store dirties
    /// them without a fault). The window starts at the aligned start or the VMA's start, spans 16
    /// entries from there, and stops at the VMA's end and the PTE table's. Observable in Linux
    /// through the mapcount: a page another mapping faulted around is shared, so `MADV_PAGEOUT`
    /// leaves it alone (measured). Takes the object's cache lock, then `pte`'s split lock; skips
    /// everything if a hole punch happened meanwhile. Allocates nothing on the heap.
    ///
    /// - Precondition: as ``handleFault(_:_:_:)``: the mmap read lock or the VMA's read lock.
    private func faultAround(_ vma: VMA, _ object: SharedMemoryObject, pte: TableBlock, address: UInt64, writable: Bool) {
        let window = Self.faultAroundPages
        let pteOffset = UInt64(PageTable.index(address, level: 0))
        let vmaOffset = (address - vma.start) / Self.pageSize
        let from = max(pteOffset & ~(window - 1), pteOffset - min(pteOffset, vmaOffset))
        let to = min(from + window, UInt64(TableBlock.entries), pteOffset + (vma.end - vma.start) / Self.pageSize - vmaOffset)
        guard to > from + 1 else { return }
        let count = Int(to - from)
        let firstPage = vma.pageOffset + vmaOffset - (pteOffset - from)
        // Acquiring: pairs with a hole punch's releasing bump (see `SharedMemoryObject.punches`).
        let punches = object.punches.load(ordering: .acquiring)
        withUnsafeTemporaryAllocation(of: UInt64.self, capacity: Int(window)) { frames in
            object.mapCachedPages(from: firstPage, count: count, skipping: Int(pteOffset - from), into: frames)
            var chain = FrameChain()
            var mapped = 0
            let lock = pageTable.pteLock(pte)
            lock.lock()
            let unpunched = object.punches.load(ordering: .relaxed) == punches
            for index in 0..<count where frames[index] != 0 {
                let slot = Int(from) + index
                if unpunched && pte.load(slot).isNone {
                    mapped += 1
                    let entry = PageTableEntry.leaf(frame: frames[index], writable: writable, dirty: false, softDirty: true)
                    // Releasing: as every install, for lockless readers of the entry.
                    pte[slot].pointee.store(entry.rawValue, ordering: .releasing)
                } else {
                    memory.unmapFrame(frames[index], into: &chain)  // never mapped: nothing to invalidate
                }
            }
            lock.unlock()
            memory.release(chain)
            if mapped > 0 { self.count(.faultAroundPages, mapped) }
        }
    }

    /// Installs `installed` if slot still holds `expected`; otherwise drops the mapping reference
    /// of `frame` (if any) and asks for a retry.
    /// With `object`, the frame came from its cache after its punch count read `punches`, and is
    /// installed only if no hole punch happened since (checked under the split lock; relaxed: a
    /// punch whose zap already passed this table released the split lock after its bump). Else
    /// the page may be gone from the object and the zap past this table: the fault retries.
    private func installIfUnchanged(
        _ pte: TableBlock, _ slot: Int, _ lock: SpinLockHandle, expected: PageTableEntry,
        _ installed: PageTableEntry, orRelease frame: UInt64?,
        unlessPunched object: SharedMemoryObject? = nil, since punches: UInt64 = 0
    ) -> Bool {
        lock.lock()
        if pte.load(slot) == expected, (object?.punches.load(ordering: .relaxed) ?? punches) == punches {
            // Releasing: the frame's state is visible to lockless readers of the entry.
            pte[slot].pointee.store(installed.rawValue, ordering: .releasing)
            lock.unlock()
            return true
        }
        lock.unlock()
        if let frame { dropUnmappedFrame(frame) }  // not mapped anywhere yet: no invalidation owed
        return false
    }

    /// Copy-on-write (`wp_page_copy`): copy the frame, then replace the entry with the notify
    /// *inside* the split lock, because the entry changes to point to a new frame (docs/protocols.md,
    /// "When a notification must happen under the split lock"): clear, flush secondary TLBs, set.
    /// With software TLBs they are shot down under the lock before the copy (`ptep_clear_flush`):
    /// no TLB may still reach the old frame once the new entry can be used, and a store through a
    /// stale writable entry (fork's write-protection not yet flushed) must land before the copy.
    private func copyOnWrite(
        _ vma: VMA, pte: TableBlock, slot: Int, entry: PageTableEntry, address: UInt64
    ) throws(MemoryError) -> Bool {
        let old = entry.number
        guard let copy = memory.allocate() else { throw .outOfMemory }
        let page = address & ~(Self.pageSize - 1)
        let scope = beginInvalidation(page, page + Self.pageSize, .clear, vma: snapshot(vma))
        var chain = FrameChain()
        let lock = pageTable.pteLock(pte)
        // The hook is looked up before the split lock is taken (the lookup enters the notifier
        // list's read side); under the lock only the hook itself runs, and it must not sleep.
        let replaced = withSecondaryTLBHook { hook -> Bool in
            lock.lock()
            defer { lock.unlock() }
            guard pte.load(slot) == entry else { return false }
            shootDownTLBsLocked(page, page + Self.pageSize)
            // Copy under the lock, once the entry is known unchanged: nothing can write the old
            // frame now (every mapping of it is read-only, and TLBs were flushed), so the copy is
            // its final content.
            memory.setToken(memory.token(of: old), of: copy)
            pte[slot].pointee.store(0, ordering: .relaxed)
            hook(page, page + Self.pageSize)
            let installed = PageTableEntry.leaf(frame: copy, writable: true, dirty: true, softDirty: true)
            pte[slot].pointee.store(installed.rawValue, ordering: .releasing)
            memory.unmapFrame(old, into: &chain)
            return true
        }
        // Shot down above, or nothing changed.
        scope.endWithoutTLBShootdown()
        // Usually empty: the old frame stays mapped by the other side of the fork, so the call
        // (and the chain passed through memory) is skipped then.
        if chain.count | chain.hugeCount != 0 { memory.release(chain) }
        if !replaced {
            memory.freeUnused(copy)
            return false
        }
        count(.copyOnWriteFaults)
        return true
    }

    /// Swap-in (`do_swap_page`): a new frame with the slot's token.
    ///
    /// The token is read under the PTE lock, after the entry is known unchanged: swap slots are
    /// reused, so a slot read before that check may hold another page-out's content by the time an
    /// identical entry passes it (an ABA that lost writes).
    private func swapIn(
        _ vma: VMA, pte: TableBlock, slot: Int, entry: PageTableEntry, write: Bool
    ) throws(MemoryError) -> Bool {
        let swapSlot = UInt32(truncatingIfNeeded: entry.number)
        guard let frame = memory.allocate() else { throw .outOfMemory }
        let installed = PageTableEntry.leaf(
            frame: frame, writable: write, dirty: write, softDirty: entry.isSoftDirty || write)
        let lock = pageTable.pteLock(pte)
        testHook(.swapInBeforeLock)
        lock.lock()
        guard pte.load(slot) == entry else {
            lock.unlock()
            memory.freeUnused(frame)
            return false
        }
        // The entry still names the slot, and the slot is released only by whoever clears that
        // entry (under this lock): its token is this page's content.
        memory.setToken(memory.swap.token(of: swapSlot), of: frame)
        pte[slot].pointee.store(installed.rawValue, ordering: .releasing)
        lock.unlock()
        memory.swap.release(swapSlot)
        count(.swapInFaults)
        return true
    }
}

extension AddressSpace {
    /// Gives `vma` an `anon_vma` before its first anonymous page (`anon_vma_prepare`): an
    /// adjacent neighbour's when compatible (``AnonVMA``), else a new one. Caller: the mmap lock
    /// (read suffices: the space's anon lock serialises first assignments).
    /// `other`'s `anon_vma` identity if `vma` may take it: `other` is an adjacent anonymous VMA
    /// whose identity was not inherited from a fork, with the same flags but for the access bits
    /// (which `flags` never carry) and contiguous page offsets; else 0.
    static func reusableIdentity(of other: VMA, for vma: VMA) -> UInt64 {
        let identity = other.anonVMA
        // The same backing: none, or the same file (`anon_vma_compatible` compares `vm_file`).
        guard identity != 0, !AnonVMA.isInherited(identity), other.sharedObject === vma.sharedObject,
            !other.isShared
        else { return 0 }
        let (lower, upper) = other.start < vma.start ? (other, vma) : (vma, other)
        let ignored = VMFlags.ignoredByMerge
        guard lower.end == upper.start, lower.flags.subtracting(ignored) == upper.flags.subtracting(ignored),
            lower.pageOffset + (lower.end - lower.start) / pageSize == upper.pageOffset
        else { return 0 }
        return identity
    }

    func prepareAnonVMA(_ vma: VMA) {
        anonVMALock.withLock {
            if vma.anonVMA != 0 { return }
            // The next VMA's identity, else the previous one's (`find_mergeable_anon_vma`).
            var chosen: UInt64 = 0
            if let next = vma.next { chosen = Self.reusableIdentity(of: next, for: vma) }
            if chosen == 0, let previous = vma.previous { chosen = Self.reusableIdentity(of: previous, for: vma) }
            // Relaxed: readers without the lock only test it for zero (the speculative path).
            vma.anonVMAWord.store(chosen != 0 ? chosen : AnonVMA.make(), ordering: .relaxed)
        }
    }
}
