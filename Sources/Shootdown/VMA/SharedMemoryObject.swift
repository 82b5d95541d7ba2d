import Synchronization

/// The backing object of a shared anonymous mapping (`MAP_SHARED | MAP_ANONYMOUS`, shmem in
/// Linux) or of a file mapping (a ``FileObject``'s pages): a page cache from page offset to frame.
/// The object holds one reference on each cached frame; every page-table entry mapping it holds
/// another. Forks share the object, so parent and child see the same frames; private file
/// mappings copy a page on their first write to it.
///
/// Lifetime: referenced by the VMAs that map it (and by its ``FileObject``); when the last
/// reference goes (VMAs after a grace period) the object drops its frame references.
@usableFromInline
final class SharedMemoryObject: @unchecked Sendable {
    let memory: PhysicalMemory
    let pages = FutexLock<[UInt64: UInt64]>([:])
    /// The file's path for a file object; `nil` for shmem.
    @usableFromInline let path: String?

    init(memory: PhysicalMemory, path: String? = nil) {
        self.memory = memory
        self.path = path
    }

    deinit {
        var chain = FrameChain()
        pages.withLock { pages in
            for frame in pages.values { memory.unpin(frame, into: &chain) }
            pages.removeAll()
        }
        memory.release(chain)
    }

    /// The frame caching page `offset`, allocated (zero-filled) if absent. The returned frame
    /// carries one extra mapping reference for the caller's new entry. Returns `nil` when out of
    /// frames.
    func mapPage(at offset: UInt64) -> UInt64? {
        pages.withLock { pages -> UInt64? in
            if let frame = pages[offset] {
                memory.mapAgain(frame)
                return frame
            }
            // One reference for the cache, one reference plus one mapping for the caller.
            guard let frame = memory.allocate(initialCounts: 2 | PhysicalMemory.mapOne) else { return nil }
            pages[offset] = frame
            return frame
        }
    }
}

extension SharedMemoryObject {
    /// The content token of page `offset` (0, a zero page, when it is not cached), without
    /// caching it: what a private mapping's first write copies.
    func token(at offset: UInt64) -> UInt64 {
        pages.withLock { pages in pages[offset].map { memory.token(of: $0) } ?? 0 }
    }

    /// Drops the cached pages `[from, to)` (`MADV_REMOVE`'s hole punch); the caller zapped every
    /// mapping of them first.
    func removePages(from: UInt64, to: UInt64) {
        var chain = FrameChain()
        pages.withLock { pages in
            for offset in from..<to {
                if let frame = pages.removeValue(forKey: offset) { memory.unpin(frame, into: &chain) }
            }
        }
        memory.release(chain)
    }
}
