import Synchronization

extension AddressSpace {
    /// The mapping containing `address`, found without the mmap lock (`find_vma` under RCU): an
    /// RCU read section, a lock-free index search, and the VMA's fields validated by its sequence
    /// count. If a writer keeps the VMA busy, falls back to the mmap read lock.
    @inlinable
    public func mapping(containing address: UInt64) -> Mapping? {
        guard address < Self.userLimit else { return nil }
        for _ in 0..<4 {
            let attempt: Mapping?? = RCU.withReadSection {
                guard let found = index.lookup(address) else { return .some(nil) }
                return found._withUnsafeGuaranteedRef { vma -> Mapping?? in
                    let sequence = vma.sequence.readBegin()
                    if sequence & 1 != 0 { return nil }
                    let mapping = vma.mapping
                    if vma.sequence.hasChanged(since: sequence) { return nil }
                    return .some(address >= mapping.start && address < mapping.end ? mapping : nil)
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
