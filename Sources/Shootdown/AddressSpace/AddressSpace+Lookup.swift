import Synchronization

extension AddressSpace {
    /// The mapping containing `address`, found without the mmap lock (`find_vma` under RCU): an
    /// RCU read section, a lock-free index search, and the VMA's fields validated by its sequence
    /// count. If a writer keeps the VMA busy, falls back to the mmap read lock.
    ///
    /// The first attempt is inline and handles the common case (an anonymous mapping, no writer)
    /// with no retain, release or call; a file mapping (its path is a reference) and a failed
    /// validation continue in `mappingRetrying(containing:attempts:)`.
    ///
    /// Why an answer is one state of the space (linearizable):
    /// - The index search gives the VMA whose start is the greatest ≤ `address` in the index
    ///   version `root` (or the first VMA). The VMA stays allocated until the read section ends
    ///   (it is retired and freed after a grace period), so it is read unretained.
    /// - An edit keeps every VMA it changes in its write section (odd count) from its first change
    ///   until after it published the new index version; a removed VMA stays odd. An even count
    ///   that did not change across the reads is a snapshot no edit was changing.
    /// - "It contains `address`" is then true at the moment of the snapshot.
    /// - "Nothing contains `address`" needs more: an edit that split the VMA and published the
    ///   piece holding `address` may have finished after the search, leaving the VMA shortened and
    ///   even. So a "no" also needs the index version unchanged after the snapshot's first read
    ///   (acquiring: if the snapshot saw such an edit's end, the re-read sees its new root). Then
    ///   some moment of the snapshot saw the searched version published and the VMA untouched by
    ///   any edit in progress: the VMAs outside edits match the published keys, and the gap after
    ///   the VMA held nothing. Otherwise the attempt is repeated.
    @inlinable
    public func mapping(containing address: UInt64) -> Mapping? {
        guard address < Self.userLimit else { return nil }
        RCU.readLock()
        let root = index.publishedRootBits
        if root == 0 {
            RCU.readUnlock()
            return nil
        }
        // (`address < userLimit`, so it is not `UInt64.max`.)
        let found = IndexNode(root: root).candidate(belowMaximum: address)
        // Read unconditionally (relaxed atomics of a live VMA), tested once.
        let (sequence, start, end, attributes, changed) = found._withUnsafeGuaranteedRef { vma in
            let sequence = vma.sequence.readBegin()
            let start = vma.start
            let end = vma.end
            let attributes = vma.attributeWord.load(ordering: .relaxed)
            return (sequence, start, end, attributes, vma.sequence.hasChanged(since: sequence))
        }
        // `start <= address < end` as one unsigned comparison.
        let contains = address &- start < end &- start
        // A "no" needs the index version searched still published; otherwise it counts as a
        // change.
        let stale = changed || (!contains && index.publishedRootBits != root)
        RCU.readUnlock()
        // An odd count: a writer was inside; a changed one: a writer ran during the reads.
        if sequence & 1 == 0 && !stale {
            if !contains { return nil }
            if attributes & Mapping.fileBackedAttribute == 0 {
                return Mapping(start: start, end: end, attributes: attributes)
            }
            // A file mapping gets its path in a full attempt.
            return mappingRetrying(containing: address, attempts: 4)
        }
        // A busy VMA (or a changed index) gets three more attempts.
        return mappingRetrying(containing: address, attempts: 3)
    }

    /// ``mapping(containing:)`` after its inline attempt: up to `attempts` more validated copies
    /// (with the path of a file mapping), then the mmap read lock.
    @usableFromInline
    func mappingRetrying(containing address: UInt64, attempts: Int) -> Mapping? {
        for _ in 0..<attempts {
            let attempt: Mapping?? = RCU.withReadSection {
                let root = index.publishedRootBits
                if root == 0 { return .some(nil) }
                return IndexNode(root: root).candidate(belowMaximum: address)._withUnsafeGuaranteedRef { vma -> Mapping?? in
                    let sequence = vma.sequence.readBegin()
                    if sequence & 1 != 0 { return nil }
                    let mapping = vma.mapping
                    if vma.sequence.hasChanged(since: sequence) { return nil }
                    if address >= mapping.start && address < mapping.end { return .some(mapping) }
                    // A "no" only from the index version searched (see `mapping(containing:)`).
                    return index.publishedRootBits == root ? .some(nil) : nil
                }
            }
            if let attempt { return attempt }
        }
        return lockedMapping(containing: address)
    }

    @usableFromInline
    func lockedMapping(containing address: UInt64) -> Mapping? {
        mmapLock.withReadLock {
            index.find(containing: address)?.mapping
        }
    }
}
