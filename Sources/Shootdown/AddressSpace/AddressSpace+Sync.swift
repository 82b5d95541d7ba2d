import Synchronization

extension AddressSpace {
    /// `msync` flags, raw Linux bits (unknown bits are kept so `EINVAL` is testable).
    public struct SyncFlags: OptionSet, Hashable, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }

        /// `MS_ASYNC`.
        public static let async = SyncFlags(rawValue: 1)
        /// `MS_INVALIDATE`.
        public static let invalidate = SyncFlags(rawValue: 2)
        /// `MS_SYNC`.
        public static let sync = SyncFlags(rawValue: 4)
    }

    /// `msync` over anonymous memory: nothing to write back, so only the checks remain.
    ///
    /// Linux rules, in Linux's order (measured on 6.18): unknown flag bits are `EINVAL`; an
    /// unaligned address is `EINVAL`; ``SyncFlags/async`` with ``SyncFlags/sync`` is `EINVAL`;
    /// the length is rounded up to pages (an overflow that wraps to zero succeeds; one that wraps
    /// below the address is `ENOMEM`); zero length succeeds. Then the VMAs are visited:
    /// ``SyncFlags/invalidate`` on a locked VMA is `EBUSY` at once; holes (or no VMA at all) make
    /// it `ENOMEM` at the end. Sends no invalidation.
    public func sync(address: UInt64, length: UInt64, flags: SyncFlags) throws(MemoryError) {
        let known: SyncFlags = [.async, .invalidate, .sync]
        guard flags.isSubset(of: known), Self.isPageAligned(address) else { throw .invalidArgument }
        if flags.contains(.async) && flags.contains(.sync) { throw .invalidArgument }
        let rounded = (length &+ (Self.pageSize - 1)) & ~(Self.pageSize - 1)
        let end = address &+ rounded
        if end < address { throw .noMemory }
        if end == address { return }
        try mmapLock.withReadLock { () throws(MemoryError) in
            try checkAlive()
            try walkVMAs(address, end, stopAtHole: false) { vma, _, _ throws(MemoryError) in
                if flags.contains(.invalidate) && vma.isLocked { throw .busy }
            }
        }
    }
}
