import Synchronization

/// What an OOM reap achieved.
public struct ReapResult: Sendable, Equatable {
    /// 4 KiB pages whose frames were freed.
    public var pagesReaped = 0
    /// Ranges a subscriber refused on every attempt (retry later).
    public var skipped: [ClosedRange<UInt64>] = []
    /// Attempts made.
    public var attempts = 0
}

extension AddressSpace {
    /// Reaps the private memory of a space whose owner is being killed (`__oom_reap_task_mm`),
    /// without ever blocking: the mmap lock is only try-locked (``MemoryError/wouldBlock`` if that
    /// fails), each VMA is invalidated non-blockably (event `unmap`), and a VMA a subscriber refuses
    /// is left untouched and retried, up to `attempts` times. VMAs stay; their pages are gone.
    /// Locked VMAs and shared memory are skipped, as in Linux.
    public func reap(attempts: Int = 3) throws(MemoryError) -> ReapResult {
        guard attempts > 0 else { throw .invalidArgument }
        guard mmapLock.tryReadLock() else { throw .wouldBlock }
        defer { mmapLock.readUnlock() }
        try checkAlive()
        var pending = index.all.filter { $0.isAnonymousPrivate && !$0.flags.contains(.locked) }
        var result = ReapResult()
        while !pending.isEmpty && result.attempts < attempts {
            result.attempts += 1
            var refused: [VMA] = []
            for vma in pending {
                guard vma.tryLockExclusively() else {
                    refused.append(vma)
                    continue
                }
                vma.beginWrite()
                if let scope = tryBeginInvalidation(vma.start, vma.end, .unmap, vma: snapshot(vma)) {
                    result.pagesReaped += zapAndEnd(scope, vma.start, vma.end)
                } else {
                    refused.append(vma)
                }
                vma.endWrite()
                vma.unlockExclusively()
            }
            pending = refused
        }
        result.skipped = pending.map { $0.start...($0.end - 1) }
        return result
    }
}
