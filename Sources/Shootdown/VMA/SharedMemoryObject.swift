import Synchronization

/// The backing object of a shared anonymous mapping (`MAP_SHARED | MAP_ANONYMOUS`, shmem in
/// Linux) or of a file mapping (a ``FileObject``'s pages): a page cache from page offset to frame.
/// The object holds one reference on each cached frame; every page-table entry mapping it holds
/// another. Forks share the object, so parent and child see the same frames; private file
/// mappings copy a page on their first write to it.
///
/// Lifetime: referenced by the VMAs that map it (and by its ``FileObject``); when the last
/// reference goes (VMAs after a grace period) the object drops its frame references.
///
/// Reverse map: the object lists (weakly) every address space that has had a VMA over it, the
/// role of the kernel's `i_mmap` tree at the granularity of spaces, so a hole punch reaches the
/// mappings of every process (``AddressSpace/zapObjectPages(_:from:to:)``). A space stays listed
/// after its last VMA over the object goes: a zap there finds nothing to do.
@usableFromInline
final class SharedMemoryObject: @unchecked Sendable {
    let memory: PhysicalMemory
    let pages = FutexLock<[UInt64: UInt64]>([:])
    let mappers = FutexLock<MapperList>(MapperList())
    /// Hole punches so far, bumped (releasing) after each punch dropped its pages and before it
    /// zaps any mapping of them. A fault reads it (acquiring) before it takes a page from the
    /// cache and installs the page only if it is unchanged under the entry's split lock
    /// (``AddressSpace``'s `installIfUnchanged`): a page the fault took before a punch dropped it
    /// was in the cache while the fault's page table already existed, so the punch's zap reaches
    /// that table and takes its split lock, either after the install (and zaps the entry) or
    /// before it (and the fault sees the new count and retries). `FutexLock` sleeps, so the
    /// cache itself cannot be rechecked under a split lock; the count can.
    let punches = Atomic<UInt64>(0)
    /// The file's path for a file object; `nil` for shmem.
    @usableFromInline let path: String?
    /// The object's size in pages: an access to a page at or past it is `SIGBUS`. Shared
    /// anonymous memory keeps the length it was mapped with (no `ftruncate` here); file objects
    /// are unbounded (their size is not modelled).
    let pageLimit: UInt64

    init(memory: PhysicalMemory, path: String? = nil, pageLimit: UInt64 = .max) {
        self.memory = memory
        self.path = path
        self.pageLimit = pageLimit
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
    /// For fault-around: writes into `frames[i]` the frame caching page `from + i` with one more
    /// mapping reference taken for the caller, or 0 where the page is not cached, for `i` in
    /// `0..<count` except `skipping` (the faulting page, already mapped). Never allocates pages.
    func mapCachedPages(from: UInt64, count: Int, skipping: Int, into frames: UnsafeMutableBufferPointer<UInt64>) {
        pages.withLock { pages in
            for index in 0..<count {
                frames[index] = 0
                guard index != skipping, let frame = pages[from + UInt64(index)] else { continue }
                memory.mapAgain(frame)
                frames[index] = frame
            }
        }
    }

    /// The content token of page `offset` (0, a zero page, when it is not cached), without
    /// caching it: what a private mapping's first write copies.
    func token(at offset: UInt64) -> UInt64 {
        pages.withLock { pages in pages[offset].map { memory.token(of: $0) } ?? 0 }
    }

    /// Drops the cached pages `[from, to)` (`MADV_REMOVE`'s hole punch). Mappings of them keep
    /// their own references: the caller then zaps them in every space
    /// (``AddressSpace/zapObjectPages(_:from:to:)``).
    func removePages(from: UInt64, to: UInt64) {
        var chain = FrameChain()
        pages.withLock { pages in
            for offset in from..<to {
                if let frame = pages.removeValue(forKey: offset) { memory.unpin(frame, into: &chain) }
            }
        }
        // Releasing: a fault that reads the new count takes pages from the cache without these.
        punches.add(1, ordering: .releasing)
        memory.release(chain)
    }
}

extension SharedMemoryObject {
    /// Drops each listed page from the cache if it still caches that frame, nobody maps or pins
    /// it (the cache's reference is its only one) and it is still clean: reclaim of a clean shmem
    /// page (`MADV_PAGEOUT`). A fault that took the page meanwhile holds a reference, so the page
    /// stays. Caller: no split lock (this lock sleeps).
    func dropCleanPages(_ candidates: [(offset: UInt64, frame: UInt64)]) -> Int {
        var chain = FrameChain()
        let dropped = pages.withLock { pages -> Int in
            var dropped = 0
            for (offset, frame) in candidates
            where pages[offset] == frame && memory.refcountWord(frame) == PhysicalMemory.refOne && !memory.isDirty(frame) {
                pages.removeValue(forKey: offset)
                memory.unpin(frame, into: &chain)
                dropped += 1
            }
            return dropped
        }
        memory.release(chain)
        return dropped
    }
}

/// The spaces that map a ``SharedMemoryObject`` (weak references), with a generation that
/// changes whenever one is added: a hole punch that zapped every listed space rereads it and
/// zaps the newcomers (a fork whose child copied entries of the parent before the parent's zap).
struct MapperList {
    struct Mapper {
        weak var space: AddressSpace?
        let identity: ObjectIdentifier
    }
    var mappers: [Mapper] = []
    var generation: UInt64 = 0
}

extension SharedMemoryObject {
    /// Lists `space` as a mapper (idempotent). Called when a VMA over the object is inserted into
    /// `space` (under its mmap write lock), before any entry of it can exist.
    func addMapper(_ space: AddressSpace) {
        let identity = ObjectIdentifier(space)
        mappers.withLock { list in
            if list.mappers.contains(where: { $0.identity == identity }) { return }
            list.mappers.removeAll { $0.space == nil }
            list.mappers.append(MapperList.Mapper(space: space, identity: identity))
            list.generation &+= 1
        }
    }

    /// The live spaces listed and the list's generation.
    func mappingSpaces() -> (spaces: [AddressSpace], generation: UInt64) {
        mappers.withLock { list in (list.mappers.compactMap(\.space), list.generation) }
    }
}
