import Synchronization
/// One structural change to a space's VMAs, made under the mmap write lock (or, for zaps, the mmap
/// read lock plus each VMA's shared zap section, ``VMA/enterZapSection()``: zaps of one VMA run in
/// parallel, as Linux's MADV_DONTNEED does; an attribute change under the read lock takes the VMA
/// exclusively with ``touchExclusively(_:)``).
///
/// Every VMA the edit touches enters its write section (odd `vm_sequence`) on first touch and
/// stays there until ``finish()``, so a speculative fault that found it aborts; removed VMAs stay
/// odd forever. In a space whose faults use per-VMA locks, the first touch under the mmap write
/// lock also write-locks the VMA (`vma_start_write`: waits for its readers) until the mmap write
/// lock is released; so every change to a VMA's bounds, protection or flags, and every removal,
/// goes through ``touch(_:)`` first. Index changes become visible to lockless readers in one step
/// at ``publish()``, after which removed VMAs are detached. Everything unlinked goes to ``retire``
/// and is freed after a grace period.
final class VMAEdit {
    unowned(unsafe) let space: AddressSpace
    let retire = RetireList()
    private var touched: [VMA] = []
    private var touchedSet: Set<ObjectIdentifier> = []
    /// VMAs this edit split off (``split(_:at:)``), for ``mergeNeighbours(_:backward:chain:)``.
    private var splitOff: Set<ObjectIdentifier> = []
    private let holdsWriterLocks: Bool
    /// The space's mmap lock when its faults use per-VMA locks and this edit holds the mmap write
    /// lock (touched VMAs are then write-locked); `nil` otherwise.
    private let vmaLocks: Unmanaged<MmapLock>?  // unretained: the space owns it and outlives the edit

    /// - Parameter writerLocks: `true` when the caller holds only the mmap read lock: ``touch(_:)``
    ///   then enters each VMA's shared zap section. Such edits (zaps of madvise, reclaim,
    ///   migration) change entries, never a VMA, and take no VMA write lock: like the classic
    ///   faults they run beside, faults under a VMA read lock are ordered against them by the split
    ///   locks (the kernel's choice too). Two of them over one VMA run in parallel.
    @inline(__always)  // so callers can keep the edit on the stack and destroy it in place
    init(_ space: AddressSpace, writerLocks: Bool = false) {
        self.space = space
        holdsWriterLocks = writerLocks
        vmaLocks = space.vmaLocksEnabled && !writerLocks ? Unmanaged.passUnretained(space.mmapLock) : nil
    }

    /// Enters `vma`'s write section (once per edit); with per-VMA locks, write-locks it first
    /// (`vma_start_write`: waits for its readers). In a `writerLocks` edit (mmap read lock), the
    /// shared zap section, which other zaps of the VMA share: such an edit changes entries only,
    /// and touches VMAs in increasing address order (a hole punch, which also zaps the object's
    /// other mappings, touches them all up front: ``AddressSpace/holePunchVMAs(_:_:)``).
    func touch(_ vma: VMA) {
        if !touchedSet.insert(ObjectIdentifier(vma)).inserted { return }
        if holdsWriterLocks {
            // In address order: zap sections yield to waiting writers, so an edit that entered a
            // higher VMA first could wait, holding it, for a writer waiting on its own zaps.
            checkInvariant(touched.last.map { $0.start < vma.start } ?? true, "zap sections entered out of address order")
            vma.enterZapSection()
        } else {
            if let vmaLocks { vmaLocks._withUnsafeGuaranteedRef { vma.startWrite($0) } }
            vma.beginWrite()
        }
        touched.append(vma)
    }

    /// In a `writerLocks` edit, enters `vma`'s write section alone (waiting for its zaps, excluding
    /// them until ``finish()``), so its fields may change under the mmap read lock. Not after a
    /// ``touch(_:)`` of the same VMA in this edit.
    func touchExclusively(_ vma: VMA) {
        checkInvariant(holdsWriterLocks, "touchExclusively outside a writerLocks edit")
        if !touchedSet.insert(ObjectIdentifier(vma)).inserted {
            checkInvariant(vma.heldExclusively, "touchExclusively after touch")
            return
        }
        vma.lockExclusively()
        vma.beginWrite()
        touched.append(vma)
    }

    /// Adds a new VMA to the index (visible at ``publish()``).
    func insert(_ vma: VMA) {
        space.index.insert(vma)
        vma.sharedObject?.addMapper(space)
        // A VMA right below the free-area cache fills the top of the gap there: lower the cache
        // (only here, once the VMA exists: a placement whose mmap fails later, as a `MAP_LOCKED`
        // one over the locked-memory limit does, must leave it where it was).
        if vma.end == space.freeAreaCache && vma.start < vma.end { space.freeAreaCache = vma.start }
    }

    /// Removes `vma` from the index; its sequence count stays odd for good.
    func remove(_ vma: VMA) {
        touch(vma)
        vma.markRemoved()
        space.index.remove(vma, retire: retire)
    }

    /// Changes `vma`'s bounds, re-keying the index.
    func setBounds(_ vma: VMA, start: UInt64, end: UInt64) {
        touch(vma)
        let oldStart = vma.start
        do {
            if start >= oldStart {
                vma.pageOffset += (start - oldStart) / PageTable.pageSize
            } else {
                vma.pageOffset -= (oldStart - start) / PageTable.pageSize
            }
        }
        vma.setBounds(start: start, end: end)
        space.index.rekey(vma, from: oldStart)
    }

    /// Splits `vma` at `address` (strictly inside it): `vma` keeps `[start, address)`, the new VMA
    /// returned gets `[address, end)`. The caller has split any huge mapping across `address`.
    @discardableResult
    func split(_ vma: VMA, at address: UInt64) -> VMA {
        checkInvariant(vma.start < address && address < vma.end, "split outside the VMA")
        touch(vma)
        let upper = VMA(
            start: address, end: vma.end, protection: vma.protection, flags: vma.flags,
            sharedObject: vma.sharedObject,
            pageOffset: vma.pageOffset + (address - vma.start) / PageTable.pageSize, anonVMA: vma.anonVMA)
        vma.setBounds(start: vma.start, end: address)
        space.index.insert(upper)
        splitOff.insert(ObjectIdentifier(upper))
        return upper
    }

    /// Merges `vma` with its neighbours where they are compatible (`vma_merge`). Returns the VMA
    /// that now covers `vma`'s range. `backward: false` merges only with what follows: a VMA that
    /// grew at its end (`vma_merge_extend`) is the merge's lower side and never looks back, so two
    /// compatible VMAs that a fork copied apart stay apart. `chain: false` is a new VMA's merge
    /// (`vma_merge_new_range`: mmap, mremap's moves and growth): with the VMA before and the one
    /// after, never further, even over pieces this edit split off (oracle: a page moved between
    /// two VMAs a fork kept apart merges with both, not with the third after them).
    @discardableResult
    func mergeNeighbours(_ vma: VMA, backward: Bool = true, chain: Bool = true) -> VMA {
        var survivor = vma
        if backward, let previous = survivor.previous, previous.canMerge(with: survivor) {
            let end = survivor.end
            let flags = previous.flags.union(survivor.flags.intersection(VMFlags.ignoredByMerge))
            let anon = survivor.anonVMA
            remove(survivor)
            touch(previous)
            previous.setAttributes(protection: previous.protection, flags: flags)
            if previous.anonVMA == 0 && anon != 0 { previous.anonVMAWord.store(anon, ordering: .relaxed) }
            previous.setBounds(start: previous.start, end: end)
            survivor = previous
        }
        // A loop: when `vma` was split off a VMA that already had its new attributes (mprotect or
        // madvise over a range ending inside such a VMA), merging forward makes the split-off tail
        // a compatible neighbour in turn. Beyond the first next VMA only pieces this edit touched
        // or split off: like Linux, a merge never reaches past the VMA after the one that changed
        // (two compatible VMAs a failed munmap split apart stay apart; measured).
        var mergedForward = false
        while let next = survivor.next, !mergedForward || (chain && isPartOfEdit(next)), survivor.canMerge(with: next) {
            mergedForward = true
            let end = next.end
            let flags = survivor.flags.union(next.flags.intersection(VMFlags.ignoredByMerge))
            let anon = next.anonVMA
            remove(next)
            touch(survivor)
            survivor.setAttributes(protection: survivor.protection, flags: flags)
            if survivor.anonVMA == 0 && anon != 0 { survivor.anonVMAWord.store(anon, ordering: .relaxed) }
            survivor.setBounds(start: survivor.start, end: end)
        }
        return survivor
    }

    /// Whether this edit touched `vma` or split it off.
    private func isPartOfEdit(_ vma: VMA) -> Bool {
        touchedSet.contains(ObjectIdentifier(vma)) || splitOff.contains(ObjectIdentifier(vma))
    }

    /// Makes the index changes visible to lockless readers.
    ///
    /// An edit made under the mmap read lock (zaps: madvise, reclaim, migration) never changes the
    /// index, and must not commit it: `commit` writes writer-owned index state, and several such
    /// edits run concurrently.
    func publish() {
        if holdsWriterLocks { return }
        space.index.commit(retire: retire)
        if let vmaLocks {
            vmaLocks._withUnsafeGuaranteedRef { lock in
                for vma in touched where vma.isRemoved { vma.markDetached(lock) }
            }
        }
    }

    /// Publishes (again, if needed), leaves every write section and queues reclamation.
    func finish() {
        publish()
        if holdsWriterLocks {
            for vma in touched {
                // Touched with `touchExclusively` (which this edit alone can have set), or in
                // the shared zap section.
                if vma.heldExclusively {
                    vma.endWrite()
                    vma.unlockExclusively()
                } else {
                    vma.leaveZapSection()
                }
            }
        } else {
            for vma in touched where !vma.isRemoved {
                vma.endWrite()
            }
        }
        touched.removeAll()
        touchedSet.removeAll()
        splitOff.removeAll()
        retire.submit()
    }
}

/// The engine's model of `anon_vma` identity, which decides merges and `VM_ACCOUNT` on this
/// kernel: a private VMA has none until its first anonymous page (a write fault, copy-on-write,
/// `MADV_GUARD_INSTALL`; a read fault maps the zero page and creates none). The first one reuses
/// an adjacent neighbour's when that neighbour differs at most in protection and soft-dirty, has
/// contiguous offsets and did not inherit its own from a fork (`find_mergeable_anon_vma`); else
/// it is new. Values: `id << 1 | inherited`, 0 for none.
enum AnonVMA {
    static let nextID = Atomic<UInt64>(1)

    /// A fresh identity.
    static func make(inherited: Bool = false) -> UInt64 {
        nextID.wrappingAdd(1, ordering: .relaxed).oldValue << 1 | (inherited ? 1 : 0)
    }

    static func isInherited(_ value: UInt64) -> Bool { value & 1 != 0 }

    /// Whether two VMAs with these identities may merge: equal, or one has none and the other did
    /// not inherit its identity from a fork.
    static func compatible(_ a: UInt64, _ b: UInt64) -> Bool {
        if a == b { return true }
        if a == 0 { return !isInherited(b) }
        if b == 0 { return !isInherited(a) }
        return false
    }
}
