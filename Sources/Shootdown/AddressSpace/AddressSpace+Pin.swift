import Synchronization

extension AddressSpace {
    /// Pins the pages of `[address, address + length)` for a device (`pin_user_pages` with
    /// `FOLL_LONGTERM`, as an RDMA memory registration does): faults each page in (for writing if
    /// `write`), splits huge mappings in the range into 4 KiB pages, makes every private page
    /// exclusive to this space (a page still shared copy-on-write after a fork, or the zero page,
    /// is copied first, as the kernel's unsharing fault does, even for a read pin), and takes a
    /// pin on each frame under its split lock.
    ///
    /// The rules a pin brings (see ``PinnedRange`` and ``PhysicalMemory/pinCount(_:)``): pinned
    /// frames are never migrated, collapsed, reclaimed or paged out; ``fork()`` copies them for the
    /// child instead of sharing them, and the parent keeps the pinned frame, writable as it was; a
    /// CPU write fault on a pinned page reuses its frame; unmapping still invalidates (mirrors drop
    /// their translations) and removes the mapping, but the frame stays allocated until unpinned.
    ///
    /// Context: takes the mmap lock for reading and may sleep (faults, invalidations): not from a
    /// notifier callback or under a spin lock.
    ///
    /// - Parameters:
    ///   - address: page-aligned start.
    ///   - length: bytes, rounded up to whole pages.
    ///   - write: the device will write (`FOLL_WRITE`): pages are faulted writable.
    /// - Returns: the pinned range; release it with ``unpin(_:)`` (or by dropping it).
    /// - Throws: ``MemoryError/invalidArgument`` for an unaligned, empty or overflowing range (or
    ///   one past ``userLimit``); ``MemoryError/badAddress`` if a page is not mapped with the
    ///   access (the kernel's `-EFAULT`); ``MemoryError/outOfMemory`` if frames run out or a frame
    ///   already carries ``PhysicalMemory/maxPins`` pins; ``MemoryError/addressSpaceDead``. Pages
    ///   faulted in before the failure stay so; no pin is kept.
    public func pin(address: UInt64, length: UInt64, write: Bool) throws(MemoryError) -> PinnedRange {
        let end = try Self.userRangeEnd(address, length, nonEmpty: true)
        let access: Access = write ? .write : .read
        var frames: [UInt64] = []
        // At most a few thousand up front: the range may be enormous and end at a hole (the fuzzer
        // found a 256 GiB reservation for a one-page mapping).
        frames.reserveCapacity(Self.initialPageCapacity(address, end))
        do {
            try mmapLock.withReadLock { () throws(MemoryError) in
                try checkAlive()
                var page = address
                while page < end {
                    // Unretained: VMAs cannot be freed while the mmap read lock is held.
                    guard let found = index.lookup(page) else { throw .badAddress }
                    let failure = found._withUnsafeGuaranteedRef { vma -> MemoryError? in
                        guard Self.accessAllowed(vma.protection, access) else { return .badAddress }
                        let stop = min(vma.end, end)
                        while page < stop {
                            do throws(MemoryError) {
                                if let frame = try pinStep(vma, page, write: write) {
                                    frames.append(frame)
                                    page += Self.pageSize
                                }
                            } catch {
                                return error
                            }
                        }
                        return nil
                    }
                    if let failure { throw failure }
                }
            }
        } catch {
            var chain = FrameChain()
            for frame in frames { memory.releasePin(frame, into: &chain) }
            memory.release(chain)
            throw error
        }
        return PinnedRange(address: address, frames: frames, writable: write, memory: memory)
    }

    /// Releases the pins of `range` (`unpin_user_pages`): see ``PinnedRange/unpin()``. Works after
    /// teardown too (pins outlive the space). Unpinning twice does nothing.
    ///
    /// - Throws: ``MemoryError/invalidArgument`` if `range` was pinned in another
    ///   ``PhysicalMemory``.
    public func unpin(_ range: PinnedRange) throws(MemoryError) {
        guard range.memory === memory else { throw .invalidArgument }
        range.unpin()
    }

    /// One step towards pinning `page` of `vma`: fault it in (writable for `write`), split a huge
    /// mapping, or make a private page exclusive; when nothing is left to do, pin its frame under
    /// the split lock and return it. `nil`: a step changed the page, look again.
    ///
    /// - Precondition: mmap lock held for reading; access to `vma` checked.
    private func pinStep(_ vma: VMA, _ page: UInt64, write: Bool) throws(MemoryError) -> UInt64? {
        let found = RCU.withReadSection { pageTable.lookup(page) }
        guard let leaf = found, leaf.entry.isPresent, !write || leaf.entry.isWritable else {
            do throws(MemoryError) {
                try handleFault(vma, page, write ? .write : .read)
            } catch {
                throw error.reportedByFaultIn
            }
            return nil
        }
        if leaf.isHuge {
            splitHugeMapping(containing: page)
            return nil
        }
        let frame = leaf.entry.number
        if !vma.isShared && !memory.isExclusiveIgnoringPins(frame) {
            // Shared copy-on-write, or the zero page: a later write would copy away from the
            // pinned frame, so the pin must hold a frame only this entry maps.
            try unshare(vma, page, leaf)
            return nil
        }
        let lock = pageTable.pteLock(leaf.table)
        lock.lock()
        defer { lock.unlock() }
        // The PTE table cannot go away under the mmap read lock; the entry may have changed.
        guard leaf.table.load(leaf.index) == leaf.entry else { return nil }
        guard memory.takePin(frame) else { throw .outOfMemory }
        return frame
    }

    /// The unsharing fault (`FAULT_FLAG_UNSHARE`): replaces the page's frame with an exclusive copy,
    /// keeping the entry's permissions (a read-only entry stays read-only), with the notify inside
    /// the split lock as copy-on-write does (docs/protocols.md, "When a notification must happen
    /// under the split lock").
    ///
    /// - Precondition: mmap lock held for reading; `leaf` is the present 4 KiB entry of `page`.
    private func unshare(_ vma: VMA, _ page: UInt64, _ leaf: LeafLookup) throws(MemoryError) {
        let old = leaf.entry.number
        guard let copy = memory.allocate() else { throw .outOfMemory }
        let scope = beginInvalidation(page, page + Self.pageSize, .clear, vma: snapshot(vma))
        var chain = FrameChain()
        let lock = pageTable.pteLock(leaf.table)
        let replaced = withSecondaryTLBHook { hook -> Bool in
            lock.lock()
            defer { lock.unlock() }
            guard leaf.table.load(leaf.index) == leaf.entry else { return false }
            memory.setToken(memory.token(of: old), of: copy)
            leaf.table[leaf.index].pointee.store(0, ordering: .relaxed)
            hook(page, page + Self.pageSize)
            // Releasing: the copy's content is visible to lockless readers of the entry.
            leaf.table[leaf.index].pointee.store(leaf.entry.with(number: copy).rawValue, ordering: .releasing)
            memory.unmapFrame(old, into: &chain)
            return true
        }
        scope.end()
        memory.release(chain)
        if !replaced { memory.freeUnused(copy) }
    }
}

extension AddressSpace {
    /// How many per-page results to reserve for `[address, end)` before its pages are known to be
    /// mapped: the page count, at most 4 096.
    static func initialPageCapacity(_ address: UInt64, _ end: UInt64) -> Int {
        Int(min((end - address) / pageSize, 4096))
    }
}
