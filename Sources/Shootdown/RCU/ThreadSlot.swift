import Synchronization
import CInterop

/// A small integer naming the calling thread, used to shard per-thread data (counters, SRCU
/// counts, frame free lists) the way the kernel uses per-CPU data.
///
/// Slots `0 ..< count - 1` are owned by exactly one live thread: data indexed by such a slot may be
/// updated with a relaxed load and store. The last slot (``shared``) is used by every thread past
/// the first `count - 1` live ones, so data indexed by it must be updated with read-modify-writes.
/// A thread's slot is claimed on first use and released when it exits (CInterop).
@usableFromInline
enum ThreadSlot {
    /// Number of slots.
    @usableFromInline static let count = Int(CINTEROP_THREAD_SLOTS)

    /// The slot shared by overflow threads.
    @usableFromInline static let shared = count - 1

    /// The calling thread's slot.
    @inlinable @inline(__always)
    static var current: Int { Int(cinterop_thread_slot()) }
}

extension ThreadSlot {
    /// The calling thread's block in tables of ``count`` blocks of `1 << CINTEROP_SLOT_BLOCK_SHIFT`
    /// bytes whose block 0 belongs to no slot: the byte offset `(slot + 1) << shift` when the
    /// thread owns its slot, 0 when it shares the overflow slot or has none yet (one TLS load).
    @inlinable @inline(__always)
    static var blockOffset: Int { Int(truncatingIfNeeded: cinterop_thread_block()) }

    /// log2 of the bytes per block of ``blockOffset``.
    @usableFromInline static let blockShift = Int(CINTEROP_SLOT_BLOCK_SHIFT)
}
