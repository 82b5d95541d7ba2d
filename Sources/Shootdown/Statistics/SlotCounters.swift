import Synchronization

/// Counters sharded by thread slot (the kernel's per-CPU counters): each slot has its own cache
/// line(s), so counting on a hot path never bounces a line between cores. A slot owned by one
/// thread is updated with a relaxed load and store; the shared overflow slot with an RMW.
/// Reading sums every slot, which is exact once the counting threads are quiescent.
@usableFromInline
final class SlotCounters: @unchecked Sendable {
    /// Keeps the fields every count reads off the line of the object header.
    private let headerPadding = CacheLinePadding()
    @usableFromInline let width: Int
    @usableFromInline let stride: Int
    @usableFromInline let words: UnsafeMutablePointer<Atomic<UInt64>>

    init(width: Int) {
        self.width = width
        let perLine = cacheLineSize / MemoryLayout<UInt64>.stride
        stride = (width + perLine - 1) / perLine * perLine
        words = RawMemory.allocateAtomics(UInt64.self, count: ThreadSlot.count * stride, initial: 0)
    }

    deinit { RawMemory.deallocateAtomics(words, count: ThreadSlot.count * stride) }

    /// Adds `delta` to counter `index` for the calling thread's slot.
    @inlinable @inline(__always)
    func add(_ index: Int, _ delta: Int64) {
        let slot = ThreadSlot.current
        let word = words + (slot &* stride &+ index)
        if slot != ThreadSlot.shared {
            word.pointee.store(word.pointee.load(ordering: .relaxed) &+ UInt64(bitPattern: delta), ordering: .relaxed)
        } else {
            word.pointee.wrappingAdd(UInt64(bitPattern: delta), ordering: .relaxed)
        }
    }

    /// Increments counter `index`.
    @inlinable @inline(__always)
    func increment(_ index: Int) { add(index, 1) }

    /// The sum of counter `index` over all slots.
    func sum(_ index: Int) -> Int64 {
        var total: UInt64 = 0
        for slot in 0..<ThreadSlot.count {
            total &+= words[slot * stride + index].load(ordering: .relaxed)
        }
        return Int64(bitPattern: total)
    }
}
