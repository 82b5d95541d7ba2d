import Synchronization
import CInterop

/// How a speculative fault ended. Aborts are counted by reason, then the classic path runs.
@usableFromInline
enum SpeculativeOutcome: UInt8 {
    case handled
    case segmentationFault
    case abortNoVMA
    case abortSequenceOdd
    case abortVMAChanged
    case abortEntryChanged
    case abortLockContention
    case abortNotSupported
    case abortNoMemory
    case abortNoTable

    /// The counter of an abort.
    @inlinable
    var counter: Int {
        SpaceCounter.speculativeAbortNoVMA.rawValue &+ Int(rawValue &- SpeculativeOutcome.abortNoVMA.rawValue)
    }
}

extension AddressSpace {
    /// Handles a page fault (`handle_mm_fault`): first speculatively (when the space was created
    /// with ``FaultPath/speculative``) or under the VMA's lock (``FaultPath/perVMALock``), then,
    /// if that aborts, on the classic path under the mmap read lock.
    ///
    /// - Throws: ``MemoryError/segmentationFault`` outside any VMA or against its protection,
    ///   ``MemoryError/outOfMemory`` when no frame is left.
    ///
    /// Only the dispatch on the space's fault path is inlined into the caller; each path is one
    /// out-of-line function holding the whole path, so that none pays for another's registers.
    @inlinable @inline(__always)
    public func fault(at address: UInt64, access: Access) throws(MemoryError) {
        if speculativeEnabled {
            try speculativeFaultThenClassic(address, access)
        } else if vmaLocksEnabled {
            try vmaLockFaultThenClassic(address, access)
        } else {
            try classicFaultOutOfLine(address, access)
        }
    }

    /// ``speculativeFault(_:_:)``, then the classic path if it aborted.
    @usableFromInline @inline(never)
    func speculativeFaultThenClassic(_ address: UInt64, _ access: Access) throws(MemoryError) {
        let outcome = speculativeFault(address, access)
        if outcome == .handled { return }
        if outcome == .segmentationFault {
            count(.segmentationFaults)
            throw .segmentationFault
        }
        counters.increment(outcome.counter)
        try classicFaultOutOfLine(address, access)
    }

    /// The per-VMA-lock fault, then the classic path if it could not handle the fault.
    @usableFromInline @inline(never)
    func vmaLockFaultThenClassic(_ address: UInt64, _ access: Access) throws(MemoryError) {
        if try vmaLockFault(address, access) { return }
        try classicFaultOutOfLine(address, access)
    }

    /// The classic path, in a function of its own (``classicFault(_:_:)`` inlined into it).
    @usableFromInline @inline(never)
    func classicFaultOutOfLine(_ address: UInt64, _ access: Access) throws(MemoryError) {
        try classicFault(address, access)
    }

    /// Whether `protection` allows `access` (x86: any access right allows reads).
    @inlinable @inline(__always)
    static func accessAllowed(_ protection: Protection, _ access: Access) -> Bool {
        access == .write ? protection.contains(.write) : !protection.isEmpty
    }

    /// The speculative fault path (docs/protocols.md, "Speculative faults"): no mmap lock, an RCU read section,
    /// the VMA validated by its sequence count under the PTE table's split lock.
    ///
    /// Handles the common cases (a missing entry of a private anonymous VMA whose PTE table exists:
    /// a fresh frame for a write, the zero page for a read; and spurious faults on present entries)
    /// and aborts on everything else: a missing page table (it never allocates one), copy-on-write,
    /// swap-in, shared, file-backed or huge-page memory, conflicts.
    /// No heap allocation, no retain/release.
    @inlinable @inline(__always)
    func speculativeFault(_ address: UInt64, _ access: Access) -> SpeculativeOutcome {
        RCU.readLock()
        defer { RCU.readUnlock() }
        guard let found = index.lookup(address) else { return .abortNoVMA }
        return found._withUnsafeGuaranteedRef { speculativeFault(in: $0, address, access) }
    }

    /// The body of ``speculativeFault(_:_:)`` once the VMA is found: one function with the caller
    /// (no call, no spills across one).
    ///
    /// - Precondition: inside the RCU read section `vma` was looked up in.
    @inlinable @inline(__always)
    func speculativeFault(in vma: VMA, _ address: UInt64, _ access: Access) -> SpeculativeOutcome {
        // The thread's per-slot block, read once for the frame's shard and every count below
        // (the RCU read section attached the thread, so it is final).
        let slotOffset = ThreadSlot.blockOffset
        let sequence = vma.sequence.readBegin()
        if sequence & 1 != 0 { return .abortSequenceOdd }
        let attributes = vma.attributeWord.load(ordering: .relaxed)
        let protection = Protection(rawValue: UInt32(truncatingIfNeeded: attributes & 0xFF))
        let flags = VMFlags(rawValue: attributes >> 8)
        if address < vma.start || address >= vma.end { return .abortVMAChanged }
        if !Self.accessAllowed(protection, access) {
            // A real violation only if the snapshot was consistent.
            return vma.sequence.hasChanged(since: sequence) ? .abortVMAChanged : .segmentationFault
        }
        if !flags.isDisjoint(with: .objectBacked) { return .abortNotSupported }
        let write = access == .write
        testHook(.speculativeAfterLookup)

        // Only existing tables: a table installed here could land in a hole that an munmap,
        // racing with this fault since the lookup, has just freed; validation would abort, but
        // the table would stay. The first fault in each 2 MiB takes the classic path instead.
        guard let pmd = pageTable.existingPMDTable(for: address) else { return .abortNoTable }
        let pmdIndex = PageTable.index(address, level: 1)
        let pmdEntry = pmd.load(pmdIndex)
        if pmdEntry.isHuge { return .abortNotSupported }
        if pmdEntry.isNone {
            // The classic path allocates the PTE table, or may install a huge mapping.
            return vma.allowsHuge(at: address & ~(PageTable.hugePageSize &- 1)) ? .abortNotSupported : .abortNoTable
        }
        let pte = TableBlock(entry: pmdEntry)
        let slot = PageTable.index(address, level: 0)
        let entry = pte.load(slot)
        if write && entry.isNone {
            // The common case, straight-line: the first write to an anonymous page.
            // The first anonymous page needs the VMA's anon_vma identity, which only the classic
            // path assigns (as the kernel retries a per-VMA-lock fault without an anon_vma under
            // the mmap lock). Relaxed: a stale zero only sends the fault to the classic path, and
            // a non-zero identity is never cleared while the VMA's sequence stays unchanged.
            if vma.anonVMAWord.load(ordering: .relaxed) == 0 { return .abortNotSupported }
            return speculativeFirstWrite(
                vma, sequence, pmd: pmd, pmdIndex: pmdIndex, pte: pte, slot: slot, slotOffset: slotOffset)
        }
        return speculativeFaultOnEntry(
            vma, sequence, pmd: pmd, pmdIndex: pmdIndex, pte: pte, slot: slot, entry: entry, write: write,
            slotOffset: slotOffset)
    }

    /// The speculative fault's common case: a write to an empty entry of a private anonymous VMA
    /// with an `anon_vma`, whose PTE table `pte` the walk found under `pmd`'s slot `pmdIndex`; the
    /// VMA's count read `sequence`. A fresh frame, then the split lock and the revalidation.
    ///
    /// - Precondition: inside the RCU read section the VMA was looked up in.
    @inlinable @inline(__always)
    func speculativeFirstWrite(
        _ vma: VMA, _ sequence: UInt32, pmd: TableBlock, pmdIndex: Int, pte: TableBlock, slot: Int, slotOffset: Int
    ) -> SpeculativeOutcome {
        guard let frame = memory.allocate(blockOffset: slotOffset) else { return .abortNoMemory }
        testHook(.speculativeFirstWriteBeforeLock)
        let lock = pageTable.pteLock(pte)
        guard lock.tryLock() || lockWithBoundedSpin(lock) else {
            memory.freeUnused(frame)
            return .abortLockContention
        }
        let outcome: SpeculativeOutcome
        if let abort = Self.revalidate(vma, sequence, pmd: pmd, pmdIndex: pmdIndex, pte: pte, slot: slot, entry: .none) {
            outcome = abort
        } else {
            let installed = PageTableEntry.leaf(frame: frame, writable: true, dirty: true, softDirty: true)
            // Releasing: the frame's counts and zeroed token are visible to lockless readers
            // that load this entry.
            pte[slot].pointee.store(installed.rawValue, ordering: .releasing)
            lock.unlock()
            counters.increment(SpaceCounter.speculativeFaults.rawValue, blockOffset: slotOffset)
            return .handled
        }
        lock.unlock()
        memory.freeUnused(frame)
        return outcome
    }

    /// The rest of the speculative fault, out of line: a present entry (spurious, or setting the
    /// accessed and dirty bits), a read of an empty entry (the zero page), anything else aborts.
    /// Arguments as ``speculativeFirstWrite(_:_:pmd:pmdIndex:pte:slot:slotOffset:)``, plus the
    /// entry the walk read and the access.
    @usableFromInline @inline(never)
    func speculativeFaultOnEntry(
        _ vma: VMA, _ sequence: UInt32, pmd: TableBlock, pmdIndex: Int, pte: TableBlock, slot: Int,
        entry: PageTableEntry, write: Bool, slotOffset: Int
    ) -> SpeculativeOutcome {
        let wanted = PageTableEntry.accessed | (write ? PageTableEntry.dirty : 0)
        if entry.isPresent {
            // Spurious unless it needs write access it lacks (copy-on-write, soft-dirty).
            if write && !entry.isWritable { return .abortNotSupported }
            if entry.rawValue & wanted == wanted {
                counters.increment(SpaceCounter.spuriousFaults.rawValue, blockOffset: slotOffset)
                counters.increment(SpaceCounter.speculativeFaults.rawValue, blockOffset: slotOffset)
                return .handled
            }
        } else if !entry.isNone {
            return .abortNotSupported  // swap or PROT_NONE entry
        }
        // Here: a present entry that needs its accessed (and dirty) bits, or a read of an empty
        // one (a write to an empty entry is speculativeFirstWrite's).
        checkInvariant(!write || entry.isPresent, "a first write reached the general speculative path")
        let lock = pageTable.pteLock(pte)
        guard lock.tryLock() || lockWithBoundedSpin(lock) else { return .abortLockContention }
        let outcome: SpeculativeOutcome
        if let abort = Self.revalidate(vma, sequence, pmd: pmd, pmdIndex: pmdIndex, pte: pte, slot: slot, entry: entry) {
            outcome = abort
        } else {
            if entry.isPresent {
                // Setting accessed/dirty is not a spurious fault (as on the classic path).
                pte[slot].pointee.store(entry.rawValue | wanted, ordering: .relaxed)
                if write { memory.markDirty(entry.number) }
            } else {
                // A read of private anonymous memory: the zero page, read-only.
                let installed = PageTableEntry.leaf(
                    frame: PhysicalMemory.zeroFrame, writable: false, dirty: false, softDirty: false)
                pte[slot].pointee.store(installed.rawValue, ordering: .releasing)
                counters.increment(SpaceCounter.zeroPageFaults.rawValue, blockOffset: slotOffset)
            }
            outcome = .handled
        }
        lock.unlock()
        if outcome == .handled { counters.increment(SpaceCounter.speculativeFaults.rawValue, blockOffset: slotOffset) }
        return outcome
    }

    /// The speculative fault's validation under `pte`'s split lock: `nil` if the table is still
    /// linked at `pmd`'s slot `pmdIndex`, the VMA unchanged since its count read `sequence` (the
    /// count orders every zap of its pages and every change to it) and slot `slot` still holds
    /// `entry`; else the abort.
    ///
    /// - Precondition: `pte`'s split lock held, inside the RCU read section of the walk.
    @inlinable @inline(__always)
    static func revalidate(
        _ vma: VMA, _ sequence: UInt32, pmd: TableBlock, pmdIndex: Int, pte: TableBlock, slot: Int,
        entry: PageTableEntry
    ) -> SpeculativeOutcome? {
        if pmd.load(pmdIndex).rawValue != PageTableEntry.table(at: pte.address).rawValue
            || vma.sequence.hasChanged(since: sequence)
        {
            return .abortVMAChanged
        }
        return pte.load(slot) != entry ? .abortEntryChanged : nil
    }

    /// Spins a bounded number of times for a contended split lock (the speculative path never
    /// sleeps on a lock; like SPF's `spin_trylock`, it gives up and lets the classic path wait).
    @usableFromInline
    func lockWithBoundedSpin(_ lock: SpinLockHandle) -> Bool {
        for _ in 0..<256 {
            if lock.tryLock() { return true }
            cinterop_cpu_relax()
        }
        return false
    }
}
