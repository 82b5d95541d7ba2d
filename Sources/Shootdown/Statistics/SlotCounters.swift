import Synchronization
import CInterop

/// Counters sharded by thread slot (the kernel's per-CPU counters): each slot has its own
/// block of cache lines, so counting on a hot path never bounces a line between cores.
///
/// Layout: ``ThreadSlot/count`` blocks of `1 << blockShift` bytes (1 KiB, room for 128 counters).
/// Block 0 is shared by every thread that owns no slot (overflow threads, and threads not attached
/// yet) and is updated with an atomic RMW; block `s + 1` belongs to the
/// thread owning slot `s`, the only writer, which updates it with a relaxed load and store.
/// A thread finds its block with one TLS load (``ThreadSlot/blockOffset``) and a shift.
///
/// Reading sums every block, which is exact once the counting threads are quiescent. Ownership:
/// the counters own `words` and free it in `deinit`; nothing else keeps a pointer into it.
@usableFromInline
final class SlotCounters: @unchecked Sendable {
    /// Keeps the fields every count reads off the line of the object header.
    private let headerPadding = CacheLinePadding()
    @usableFromInline let width: Int
    /// log2 of the bytes per block: the same for every instance, so that turning a
    /// ``ThreadSlot/blockOffset`` (blocks of `1 << CINTEROP_SLOT_BLOCK_SHIFT` bytes) into an offset
    /// here is one shift by a constant, not a shift by a loaded amount.
    @inlinable static var blockShift: Int { 10 }
    /// How far right a ``ThreadSlot/blockOffset`` shifts to become a byte offset into `words`.
    @inlinable static var offsetShift: Int { Int(CINTEROP_SLOT_BLOCK_SHIFT) &- blockShift }
    @usableFromInline let words: UnsafeMutablePointer<Atomic<UInt64>>

    init(width: Int) {
        precondition(width * MemoryLayout<UInt64>.stride <= 1 << Self.blockShift, "SlotCounters: \(width) counters do not fit a block")
        precondition(Self.offsetShift >= 0, "SlotCounters: thread-slot blocks smaller than a counter block")
        self.width = width
        words = RawMemory.allocateAtomics(UInt64.self, count: (Self.blocks << Self.blockShift) >> 3, initial: 0)
    }

    deinit { RawMemory.deallocateAtomics(words, count: (Self.blocks << Self.blockShift) >> 3) }

    /// Blocks: the shared one and one per slot a thread can own (the last slot is never owned).
    @usableFromInline static var blocks: Int { ThreadSlot.count }

    /// Adds `delta` to counter `index` for the calling thread: a relaxed load and store in the
    /// thread's own block, or a relaxed RMW in the shared block 0.
    @inlinable @inline(__always)
    func add(_ index: Int, _ delta: Int64) { add(index, delta, blockOffset: ThreadSlot.blockOffset) }

    /// Adds `delta` to counter `index` for the thread whose ``ThreadSlot/blockOffset`` is
    /// `offset` (the calling thread's, read once by a caller that counts more than once).
    @inlinable @inline(__always)
    func add(_ index: Int, _ delta: Int64, blockOffset offset: Int) {
        let word = (UnsafeMutableRawPointer(words) + (offset &>> Self.offsetShift))
            .assumingMemoryBound(to: Atomic<UInt64>.self) + index
        if offset != 0 {
            word.pointee.store(word.pointee.load(ordering: .relaxed) &+ UInt64(bitPattern: delta), ordering: .relaxed)
        } else {
            word.pointee.wrappingAdd(UInt64(bitPattern: delta), ordering: .relaxed)
        }
    }

    /// Increments counter `index`.
    @inlinable @inline(__always)
    func increment(_ index: Int) { add(index, 1) }

    /// Increments counter `index` for the thread whose ``ThreadSlot/blockOffset`` is `offset`.
    @inlinable @inline(__always)
    func increment(_ index: Int, blockOffset offset: Int) { add(index, 1, blockOffset: offset) }

    /// The sum of counter `index` over all blocks.
    func sum(_ index: Int) -> Int64 {
        var total: UInt64 = 0
        let stride = (1 << Self.blockShift) >> 3
        for block in 0..<Self.blocks {
            total &+= words[block * stride + index].load(ordering: .relaxed)
        }
        return Int64(bitPattern: total)
    }
}
