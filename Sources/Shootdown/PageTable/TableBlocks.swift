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
        let index = (address - arena) >> 12
        return UnsafeMutableRawPointer(bitPattern: arena + index * UInt(Self.descriptorSize)).unsafelyUnwrapped
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
/// Arenas of 2 MiB are mapped on demand and never returned; blocks come from a free list or from
/// the newest arena. A free list entry is reused only after the grace period that follows its
/// detachment (see ``RetireList``). Allocation takes one short spin lock; it happens
/// once per 512 faults at most.
@usableFromInline
final class TableAllocator: @unchecked Sendable {
    @usableFromInline static let shared = TableAllocator()

    private let lock = SpinLock()
    /// Free blocks (protected by `lock`).
    private var freeBlocks: [UnsafeMutablePointer<Atomic<UInt64>>] = []
    /// Next never-used block of the newest arena and its end (protected by `lock`).
    private var bump: UnsafeMutableRawPointer?
    private var bumpEnd: UnsafeMutableRawPointer?

    /// Allocates a zeroed block. Returns `nil` only if the system refuses to map another arena.
    @usableFromInline
    func allocate() -> TableBlock? {
        let raw: UnsafeMutablePointer<Atomic<UInt64>>? = lock.withLock {
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
        guard let raw else { return nil }
        cinterop_asan_unpoison(raw, 4096)
        // Private until published: plain zeroing, then the publishing CAS/store releases it.
        UnsafeMutableRawPointer(raw).initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
        let block = TableBlock(base: raw)
        checkInvariant(block.state.pointee.load(ordering: .relaxed) == TableState.free, "allocating a live table")
        checkInvariant(!block.splitLock.isLocked, "allocating a table whose lock is held")
        block.state.pointee.store(TableState.live, ordering: .relaxed)
        return block
    }

    /// Returns `block` to the free list. Call only after a grace period since it was detached (or
    /// for a block that was never published).
    @usableFromInline
    func free(_ block: TableBlock) {
        checkInvariant(!block.splitLock.isLocked, "freeing a table whose split lock is held")
        checkInvariant(block.state.pointee.load(ordering: .relaxed) != TableState.free, "double free of a table")
        block.state.pointee.store(TableState.free, ordering: .relaxed)
        cinterop_asan_poison(block.base, 4096)
        lock.withLock { freeBlocks.append(block.base) }
    }
}
