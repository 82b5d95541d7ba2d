import CInterop
import Synchronization

/// A non-owning handle to one 4 KiB page-table block: 512 atomic 8-byte entries.
///
/// Blocks are carved from 2 MiB-aligned arenas whose first 64 KiB hold one 128-byte descriptor
/// per block, so the descriptor (and the split lock in it) is found from the block address by
/// arithmetic, like the kernel's `struct ptdesc`, with no extra load. Descriptors are padded to
/// ``cacheLineSize``: two split locks never share a line (or an adjacent-line prefetch pair).
///
/// Lifetime: a block reachable from a live page table stays valid for any walker inside an RCU
/// (memb) read section, because blocks are returned to the arena only after a grace period.
@frozen @usableFromInline
struct TableBlock: Equatable {
    @usableFromInline static let entries = 512
    @usableFromInline static let arenaSize = 2 << 20
    @usableFromInline static let descriptorSize = cacheLineSize
    /// Blocks at the start of an arena that hold descriptors.
    @usableFromInline static let descriptorBlocks = arenaSize / 4096 * descriptorSize / 4096

    @usableFromInline let base: UnsafeMutablePointer<Atomic<UInt64>>

    @inlinable @inline(__always)
    init(base: UnsafeMutablePointer<Atomic<UInt64>>) { self.base = base }

    /// The block an upper-level (or non-huge PMD) entry points to.
    @inlinable @inline(__always)
    init(entry: PageTableEntry) {
        base = UnsafeMutablePointer(bitPattern: UInt(entry.tableAddress)).unsafelyUnwrapped
    }

    /// The block's address.
    @inlinable var address: UInt64 { UInt64(UInt(bitPattern: base)) }

    /// The entry slot `index`.
    @inlinable @inline(__always)
    subscript(index: Int) -> UnsafeMutablePointer<Atomic<UInt64>> { base + index }

    /// Loads entry `index` for a lockless walk. Acquiring: a table published by a releasing store
    /// or CAS is fully initialised when reached through the loaded entry.
    @inlinable @inline(__always)
    func load(_ index: Int) -> PageTableEntry {
        PageTableEntry(rawValue: base[index].load(ordering: .acquiring))
    }

    /// The descriptor of this block.
    @inlinable
    var descriptor: UnsafeMutableRawPointer {
        let address = UInt(bitPattern: base)
        let arena = address & ~UInt(Self.arenaSize - 1)
        // Wrapping arithmetic: `address` is inside its arena, so nothing can overflow (and the
        // descriptor lookup, on every split-lock acquisition, carries no trap branch).
        let index = (address &- arena) &>> 12
        return UnsafeMutableRawPointer(bitPattern: arena &+ index &* UInt(Self.descriptorSize)).unsafelyUnwrapped
    }

    /// The split lock of this table (for a PTE table: its `ptlock`; for a PMD table: `pmd_lock`).
    @inlinable @inline(__always)
    var splitLock: SpinLockHandle {
        SpinLockHandle(descriptor.assumingMemoryBound(to: Atomic<UInt32>.self))
    }

    /// The block's lifecycle state word (descriptor offset 4), see ``TableState``.
    @inlinable
    var state: UnsafeMutablePointer<Atomic<UInt32>> {
        (descriptor + 4).assumingMemoryBound(to: Atomic<UInt32>.self)
    }

    /// How many times the block was allocated (descriptor offset 8; maintained only with
    /// internal checks). A walker that reads it on reaching the table and again before its read
    /// section ends must see one value: a table is never reallocated while reachable.
    var generation: UnsafeMutablePointer<Atomic<UInt64>> {
        (descriptor + 8).assumingMemoryBound(to: Atomic<UInt64>.self)
    }
}

/// Lifecycle of a table block, tracked in its descriptor for invariant checks and audits.
@usableFromInline
enum TableState {
    @usableFromInline static let free: UInt32 = 0
    @usableFromInline static let live: UInt32 = 1
    /// Detached from its page table, waiting for a grace period.
    @usableFromInline static let retired: UInt32 = 2
}

/// The process-wide allocator of page-table blocks (the kernel's page allocator, for tables).
///
/// Arenas of 2 MiB are mapped on demand and never returned; blocks come from the calling
/// thread's cache, else from the shared free list or the newest arena.
///
/// Per-slot caches (like the frame allocator's shards, and the kernel's per-CPU page lists):
/// a thread that owns a ``ThreadSlot`` keeps up to ``cacheCapacity`` free blocks in its slot's
/// cache, which only it reads and writes (plain loads and stores; a slot passes to its next
/// owner with the release/acquire of the slot bitmap, blocks included). Allocation takes the
/// shared spin lock only to refill an empty cache with ``refillBatch`` blocks, freeing only to
/// spill half of a full one; threads without a slot (overflow threads, liburcu's reclamation
/// thread) use the shared list under the lock directly. A dead thread's cache waits, at most
/// ``cacheCapacity`` blocks, for the slot's next owner.
///
/// A block is freed (to a cache or the shared list) only after the grace period that follows
/// its detachment (see ``RetireList``), or if it was never published: wherever it goes, no
/// walker can still reach it.
@usableFromInline
final class TableAllocator: @unchecked Sendable {
    @usableFromInline static let shared = TableAllocator()

    /// Blocks a slot's cache holds at most.
    static let cacheCapacity = 15
    /// Blocks a refill moves into an empty cache (and a spill moves out of a full one).
    static let refillBatch = 8
    /// Bytes per slot cache: a count word and ``cacheCapacity`` block addresses (one line).
    static let cacheShift = 7

    private let lock = SpinLock()
    /// Free blocks (protected by `lock`).
    private var freeBlocks: [UnsafeMutablePointer<Atomic<UInt64>>] = []
    /// Next never-used block of the newest arena and its end (protected by `lock`).
    private var bump: UnsafeMutableRawPointer?
    private var bumpEnd: UnsafeMutableRawPointer?
    /// The slot caches, indexed like ``ThreadSlot/blockOffset`` (block 0, for threads without a
    /// slot, stays unused). Owned by the allocator, which lives as long as the process.
    private let caches: UnsafeMutableRawPointer

    private init() {
        let bytes = ThreadSlot.count << Self.cacheShift
        caches = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: cacheLineSize)
        caches.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
    }

    /// The calling thread's cache, `nil` for a thread without a slot.
    private var slotCache: SlotTableCache? {
        let offset = ThreadSlot.blockOffset
        if offset == 0 { return nil }
        return SlotTableCache(raw: caches + (offset >> (ThreadSlot.blockShift - Self.cacheShift)))
    }

    /// Allocates a zeroed block. Returns `nil` only if the system refuses to map another arena.
    @usableFromInline
    func allocate() -> TableBlock? {
        let raw: UnsafeMutablePointer<Atomic<UInt64>>?
        if let cache = slotCache {
            raw = cache.pop() ?? refill(cache)
        } else {
            raw = lock.withLock { takeLocked() }
        }
        guard let raw else { return nil }
        cinterop_asan_unpoison(raw, 4096)
        // Private until published: plain zeroing, then the publishing CAS/store releases it.
        UnsafeMutableRawPointer(raw).initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
        let block = TableBlock(base: raw)
        checkInvariant(block.state.pointee.load(ordering: .relaxed) == TableState.free, "allocating a live table")
        checkInvariant(!block.splitLock.isLocked, "allocating a table whose lock is held")
        #if SHOOTDOWN_INTERNAL_CHECKS
        // Relaxed: read by walkers of the same thread's tests only to compare (see `generation`).
        block.generation.pointee.wrappingAdd(1, ordering: .relaxed)
        #endif
        block.state.pointee.store(TableState.live, ordering: .relaxed)
        return block
    }

    /// Refills the empty `cache` with up to ``refillBatch`` blocks under the lock and returns one
    /// more for the caller.
    private func refill(_ cache: SlotTableCache) -> UnsafeMutablePointer<Atomic<UInt64>>? {
        lock.withLock {
            for _ in 1..<Self.refillBatch {
                guard let block = takeLocked() else { break }
                cache.push(block)
            }
            return takeLocked()
        }
    }

    /// One block from the shared list or the newest arena (mapping another if needed). Caller
    /// holds `lock`.
    private func takeLocked() -> UnsafeMutablePointer<Atomic<UInt64>>? {
        if let block = freeBlocks.popLast() { return block }
        if bump == nil || bump == bumpEnd {
            guard let arena = cinterop_map_aligned(TableBlock.arenaSize, TableBlock.arenaSize) else { return nil }
            // One arena is exactly one 2 MiB page: a lockless walk of any table in it, and its
            // descriptors, share one TLB entry.
            _ = cinterop_advise_huge_pages(arena, TableBlock.arenaSize)
            bump = arena + TableBlock.descriptorBlocks * 4096
            bumpEnd = arena + TableBlock.arenaSize
        }
        let block = bump.unsafelyUnwrapped
        bump = block + 4096
        return block.bindMemory(to: Atomic<UInt64>.self, capacity: TableBlock.entries)
    }

    /// Returns `block` to the calling thread's cache (spilling half of a full cache to the shared
    /// list) or, for a thread without a slot, to the shared list. Call only after a grace period
    /// since it was detached (or for a block that was never published).
    @usableFromInline
    func free(_ block: TableBlock) {
        checkInvariant(!block.splitLock.isLocked, "freeing a table whose split lock is held")
        checkInvariant(block.state.pointee.load(ordering: .relaxed) != TableState.free, "double free of a table")
        block.state.pointee.store(TableState.free, ordering: .relaxed)
        cinterop_asan_poison(block.base, 4096)
        guard let cache = slotCache else {
            lock.withLock { freeBlocks.append(block.base) }
            return
        }
        if cache.isFull {
            lock.withLock {
                for _ in 0..<Self.refillBatch { freeBlocks.append(cache.pop().unsafelyUnwrapped) }
            }
        }
        cache.push(block.base)
    }

    /// Free blocks in the calling thread's cache (tests).
    var cachedBlocks: Int { slotCache?.count ?? 0 }
}

/// A handle to one slot's cache of free table blocks: a count word, then up to
/// ``TableAllocator/cacheCapacity`` block addresses. Only the thread owning the slot touches it
/// (plain loads and stores).
struct SlotTableCache {
    let raw: UnsafeMutableRawPointer

    var count: Int { raw.load(as: Int.self) }
    var isFull: Bool { count == TableAllocator.cacheCapacity }

    func pop() -> UnsafeMutablePointer<Atomic<UInt64>>? {
        let count = self.count
        if count == 0 { return nil }
        raw.storeBytes(of: count &- 1, as: Int.self)
        return raw.load(fromByteOffset: count &* 8, as: UnsafeMutablePointer<Atomic<UInt64>>.self)
    }

    func push(_ block: UnsafeMutablePointer<Atomic<UInt64>>) {
        let count = self.count &+ 1
        checkInvariant(count <= TableAllocator.cacheCapacity, "table cache overflow")
        raw.storeBytes(of: block, toByteOffset: count &* 8, as: UnsafeMutablePointer<Atomic<UInt64>>.self)
        raw.storeBytes(of: count, as: Int.self)
    }
}
