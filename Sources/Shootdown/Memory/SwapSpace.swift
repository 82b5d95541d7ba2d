import Synchronization

/// Swap slots holding the content tokens of evicted anonymous pages (pageout, reclaim). A swap
/// entry in a page table names a slot; fork shares slots, so each slot is reference counted.
/// Not a hot path: one spin lock guards the free list. (A spin lock, not a sleeping one: page-out
/// takes slots and zaps release them while holding a split page-table lock.)
public final class SwapSpace: @unchecked Sendable {
    /// Number of slots (slot 0 is reserved as "none").
    public let capacity: Int

    private let tokens: UnsafeMutablePointer<Atomic<UInt64>>
    private let references: UnsafeMutablePointer<Atomic<UInt32>>
    /// Free slots, last freed on top (guarded by `lock`).
    private var freeSlots: [UInt32]
    private let lock = SpinLock()

    init(capacity: Int) {
        self.capacity = max(capacity, 0)
        tokens = RawMemory.allocateAtomics(UInt64.self, count: self.capacity + 1, initial: 0)
        references = RawMemory.allocateAtomics(UInt32.self, count: self.capacity + 1, initial: 0)
        // Slot 0 means "none": slots are 1...capacity, none at all without swap.
        freeSlots = self.capacity == 0 ? [] : Array((1...UInt32(self.capacity)).reversed())
        freeSlots.reserveCapacity(self.capacity)
    }

    deinit {
        RawMemory.deallocateAtomics(tokens, count: capacity + 1)
        RawMemory.deallocateAtomics(references, count: capacity + 1)
    }

    /// Stores `token` in a new slot with one reference. Returns `nil` when swap is full.
    func store(_ token: UInt64) -> UInt32? {
        guard let slot = lock.withLock({ freeSlots.popLast() }) else { return nil }
        tokens[Int(slot)].store(token, ordering: .relaxed)
        references[Int(slot)].store(1, ordering: .releasing)
        return slot
    }

    /// The token held by `slot`.
    public func token(of slot: UInt32) -> UInt64 { tokens[Int(slot)].load(ordering: .acquiring) }

    /// Adds a reference to `slot` (fork copied a swap entry).
    func duplicate(_ slot: UInt32) { references[Int(slot)].wrappingAdd(1, ordering: .relaxed) }

    /// Drops a reference to `slot`, freeing it with the last one.
    func release(_ slot: UInt32) {
        let remaining = references[Int(slot)].wrappingSubtract(1, ordering: .acquiringAndReleasing).newValue
        checkInvariant(remaining != UInt32.max, "swap slot \(slot) reference underflow")
        if remaining == 0 { lock.withLock { freeSlots.append(slot) } }
    }

    /// Slots in use.
    public var slotsInUse: Int { capacity - lock.withLock { freeSlots.count } }
}
