import Synchronization

/// The frames (physical pages) that address spaces map, with a reference count, a map count and
/// a content token per frame, and the swap space that holds evicted pages.
///
/// Frames are what secondary mirrors cache, so the rule is: a frame is never recycled before every
/// notifier has seen the invalidation that unmapped it. Zaps gather frames into a `FrameChain`
/// and release the chain only after the invalidation's end has been called.
///
/// Frame `0` is the shared zero page: read faults on anonymous memory map it read-only, and it is
/// never counted or freed. Usable frames come in 512-frame blocks (one 2 MiB huge page each);
/// block 0 is reserved for the zero page, so frame numbers of huge pages are 512-aligned.
///
/// Free frames live on 16 shards picked by thread slot (lock-free Treiber stacks with ABA tags;
/// slots 16 apart share one), refilled a block at a time, so concurrent faults on different cores do not share a cache line. Whole free
/// blocks for huge pages live on a separate stack. Frames freed on one thread and needed on
/// another (an munmap on one core, faults on others) move in batches of `stealBatch`: a shard
/// that runs dry takes that many frames from another shard in one detach, like the kernel's
/// per-CPU page lists refilling in bulk from the buddy allocator.
///
/// A frame's counts word packs `refcount` (bits 0–31) and `mapcount` (bits 32–63). While a frame
/// is mapped by exactly one entry, every change of its counts happens under that entry's split
/// lock, which lets the zap path release an exclusive frame with a plain load and store.
public final class PhysicalMemory: @unchecked Sendable {
    /// Frames per huge page and per refill block.
    public static let framesPerHugePage = 512
    /// The zero page.
    public static let zeroFrame: UInt64 = 0

    @usableFromInline static let shardCount = 16
    @usableFromInline static let shardStride = cacheLineSize / MemoryLayout<UInt64>.stride
    /// Frames moved from one shard to another at once.
    static let stealBatch = 1024
    /// Distance between the words of `global`.
    static let globalStride = cacheLineSize / MemoryLayout<UInt64>.stride
    @usableFromInline static let refOne: UInt64 = 1
    @usableFromInline static let mapOne: UInt64 = 1 << 32
    /// Counts word of a frame mapped by exactly one entry and referenced by nothing else.
    @usableFromInline static let exclusivelyMapped: UInt64 = refOne | mapOne

    /// Keeps the fields every allocation reads off the line of the object header (every space
    /// sharing this memory retains it).
    private let headerPadding = CacheLinePadding()
    /// Number of usable frames (a multiple of 512).
    public let capacity: Int
    /// Total frames including reserved block 0.
    @usableFromInline let totalFrames: Int

    @usableFromInline let counts: UnsafeMutablePointer<Atomic<UInt64>>
    @usableFromInline let links: UnsafeMutablePointer<Atomic<UInt32>>
    @usableFromInline let tokens: UnsafeMutablePointer<Atomic<UInt64>>
    /// One byte of flags per frame, 0 from allocation (one store resets all of them).
    ///
    /// Bits 0–1, the dirty state: 1 once a page-table entry mapping the frame became dirty (the
    /// folio's dirty flag; see ``markDirty(_:)``), 2 for a private page `MADV_FREE` made lazily
    /// freeable and nothing dirtied since (``markLazyFree(_:)``).
    /// Bits 2–7, the lock mark: nonzero for a page still mlocked although no locked VMA holds it
    /// (``markStillLocked(_:)``), then one more than the lock count kept for it (saturating at
    /// ``lockMarkLimit``).
    ///
    /// Written under the split lock of an entry mapping the frame; a frame mapped by several
    /// entries (shared memory, pages fork shares) can see writers under different locks, so every
    /// change after allocation is a relaxed compare-and-swap that keeps the other field
    /// (``updateFlags(_:_:)``); a change that would not alter the byte stores nothing.
    @usableFromInline let dirtyFlags: UnsafeMutablePointer<Atomic<UInt8>>
    @usableFromInline static let dirtyStateMask: UInt8 = 0b11
    @usableFromInline static let dirtyStateDirty: UInt8 = 1
    @usableFromInline static let dirtyStateLazyFree: UInt8 = 2
    @usableFromInline static let lockMarkShift: UInt8 = 2
    /// The largest lock mark (a lock count of 62 kept for a page).
    @usableFromInline static let lockMarkLimit: UInt8 = 0xFF >> 2
    /// Whether any frame was ever marked still locked: until then mlock and munlock skip the
    /// page walk that adjusts the marks.
    let hasLockMarks = Atomic<Bool>(false)
    /// Shard stacks, one per cache line: `tag << 32 | top frame` (0 = empty).
    @usableFromInline let shards: UnsafeMutablePointer<Atomic<UInt64>>
    /// Three words, ``cacheLineSize`` apart: the next never-used block (``freshBlockWord``), the
    /// stack of free huge blocks (`tag << 32 | head frame`, ``hugeTop``), and the steals in progress
    /// (bits 0–31) and completed (bits 32–63) (``stealWord``).
    @usableFromInline let global: UnsafeMutablePointer<Atomic<UInt64>>
    /// Frames in use, sharded per thread slot (see ``ThreadSlot``).
    @usableFromInline let inUse: SlotCounters

    /// The swap space backing evicted anonymous pages.
    public let swap: SwapSpace

    /// Creates physical memory with `capacity` usable frames (rounded up to a multiple of 512) and
    /// `swapSlots` swap slots.
    public init(capacity: Int = 1 << 20, swapSlots: Int = 1 << 16) {
        let blocks = max(1, (capacity + Self.framesPerHugePage - 1) / Self.framesPerHugePage)
        self.capacity = blocks * Self.framesPerHugePage
        totalFrames = (blocks + 1) * Self.framesPerHugePage
        counts = RawMemory.allocateAtomics(UInt64.self, count: totalFrames, initial: 0)
        links = RawMemory.allocateAtomics(UInt32.self, count: totalFrames, initial: 0)
        tokens = RawMemory.allocateAtomics(UInt64.self, count: totalFrames, initial: 0)
        dirtyFlags = RawMemory.allocateAtomics(UInt8.self, count: totalFrames, initial: 0)
        shards = RawMemory.allocateAtomics(UInt64.self, count: Self.shardCount * Self.shardStride, initial: 0)
        global = RawMemory.allocateAtomics(UInt64.self, count: 3 * Self.globalStride, initial: 0)
        global[0].store(1, ordering: .relaxed)  // block 0 holds the zero page
        inUse = SlotCounters(width: 1)
        swap = SwapSpace(capacity: swapSlots)
    }

    deinit {
        RawMemory.deallocateAtomics(counts, count: totalFrames)
        RawMemory.deallocateAtomics(links, count: totalFrames)
        RawMemory.deallocateAtomics(tokens, count: totalFrames)
        RawMemory.deallocateAtomics(dirtyFlags, count: totalFrames)
        RawMemory.deallocateAtomics(shards, count: Self.shardCount * Self.shardStride)
        RawMemory.deallocateAtomics(global, count: 3 * Self.globalStride)
    }

    // MARK: - Allocation

    /// Allocates one frame, zero-filled (token 0), with counts set to `initialCounts`.
    /// Returns `nil` when every frame is in use. Lock-free; no heap allocation. Inlined into the
    /// fault paths (a call would spill their live registers around it).
    @inlinable @inline(__always)
    func allocate(initialCounts: UInt64 = exclusivelyMapped) -> UInt64? {
        let shard = ThreadSlot.current & (Self.shardCount - 1)
        guard let frame = pop(shard: shard) ?? allocateSlow(shard: shard) else { return nil }
        prepareAllocated(frame, initialCounts: initialCounts, blockOffset: ThreadSlot.blockOffset)
        return frame
    }

    /// Allocates one frame as ``allocate(initialCounts:)`` does, for a caller that already read
    /// its ``ThreadSlot/blockOffset`` (the speculative fault, which reads it once for the frame's
    /// shard and every count). The pop from the thread's own free list is inline; refilling an
    /// empty list (a fresh block, a free huge block, a steal) is a call on the cold branch only.
    ///
    /// - Precondition: the calling thread is attached (it is inside an RCU read section).
    @inlinable @inline(__always)
    func allocate(blockOffset: Int) -> UInt64? {
        guard let frame = pop(shard: Self.shard(blockOffset: blockOffset)) else {
            return allocateRefilling(blockOffset: blockOffset)
        }
        prepareAllocated(frame, initialCounts: Self.exclusivelyMapped, blockOffset: blockOffset)
        return frame
    }

    /// The cold half of ``allocate(blockOffset:)``: the thread's free list is empty.
    @usableFromInline @inline(never)
    func allocateRefilling(blockOffset: Int) -> UInt64? {
        guard let frame = allocateSlow(shard: Self.shard(blockOffset: blockOffset)) else { return nil }
        prepareAllocated(frame, initialCounts: Self.exclusivelyMapped, blockOffset: blockOffset)
        return frame
    }

    /// The shard of the thread whose ``ThreadSlot/blockOffset`` is `blockOffset`: the same as
    /// `ThreadSlot.current & (shardCount - 1)` for an attached thread (the offset is
    /// `(slot + 1) << blockShift`, and 0 for a thread in the shared last slot, whose shard is the
    /// last one either way).
    @inlinable @inline(__always)
    static func shard(blockOffset: Int) -> Int {
        ((blockOffset &>> ThreadSlot.blockShift) &- 1) & (shardCount - 1)
    }

    /// Zero-fills a frame just popped from a free list (token 0, clean), sets its counts and
    /// counts it in use.
    @inlinable @inline(__always)
    func prepareAllocated(_ frame: UInt64, initialCounts: UInt64, blockOffset: Int) {
        tokens[Int(frame)].store(0, ordering: .relaxed)
        dirtyFlags[Int(frame)].store(0, ordering: .relaxed)  // dirty state and lock mark
        // Relaxed: the frame is private until the caller publishes it under a split lock.
        counts[Int(frame)].store(initialCounts, ordering: .relaxed)
        inUse.add(0, 1, blockOffset: blockOffset)
    }

    /// The head word of shard `shard`'s free stack.
    @inlinable @inline(__always)
    func shardTop(_ shard: Int) -> UnsafeMutablePointer<Atomic<UInt64>> { shards + shard &* Self.shardStride }

    /// The head word of the stack of free huge blocks (linked through their head frames).
    var hugeTop: UnsafeMutablePointer<Atomic<UInt64>> { global + Self.globalStride }

    /// The word counting steals in progress and completed (see ``allocateSlow(shard:)``).
    var stealWord: UnsafeMutablePointer<Atomic<UInt64>> { global + 2 * Self.globalStride }

    /// The word holding the next never-used block.
    var freshBlockWord: UnsafeMutablePointer<Atomic<UInt64>> { global }

    @inlinable @inline(__always)
    func pop(shard: Int) -> UInt64? { pop(from: shardTop(shard)) }

    /// Pops one frame from the tagged stack headed by `top`.
    @inlinable @inline(__always)
    func pop(from top: UnsafeMutablePointer<Atomic<UInt64>>) -> UInt64? {
        var head = top.pointee.load(ordering: .acquiring)
        while true {
            let frame = UInt32(truncatingIfNeeded: head)
            if frame == 0 { return nil }
            let next = links[Int(frame)].load(ordering: .relaxed)
            let replacement = ((head >> 32) &+ 1) << 32 | UInt64(next)
            // Acquiring: the freer's writes to the frame (released by its push) are visible.
            let result = top.pointee.compareExchange(expected: head, desired: replacement, ordering: .acquiring)
            if result.exchanged { return UInt64(frame) }
            head = result.original
        }
    }

    @usableFromInline
    func allocateSlow(shard: Int) -> UInt64? {
        var backoff = Backoff()
        while true {
            // Acquiring: pairs with the releasing update that ends a steal (see below).
            let before = stealWord.pointee.load(ordering: .acquiring)
            // Refill this shard with a never-used block, or break a free huge block into frames.
            if let first = takeFreshBlock().map({ $0 &* UInt64(Self.framesPerHugePage) }) ?? pop(from: hugeTop) {
                return refill(shard, withBlockAt: first)
            }
            // Take a batch from another shard.
            for offset in 1..<Self.shardCount {
                if let frame = steal(from: (shard + offset) & (Self.shardCount - 1), into: shard) { return frame }
            }
            if let frame = pop(shard: shard) { return frame }  // a free onto this shard meanwhile
            // Every list looked empty. A steal holds its victim's list detached for a moment; only
            // if none was in progress and none ended since `before` is memory really exhausted.
            // A steal in progress was counted before its detach (which our acquiring load of the
            // empty list synchronised with); a finished one bumped the completed count before
            // leaving.
            let after = stealWord.pointee.load(ordering: .acquiring)
            if after & 0xFFFF_FFFF == 0 && after >> 32 == before >> 32 { return nil }
            backoff.wait()
        }
    }

    /// Pushes the frames of the 512-frame block at `first` except `first` itself onto `shard`, and
    /// returns `first` for the caller.
    private func refill(_ shard: Int, withBlockAt first: UInt64) -> UInt64 {
        let last = first &+ UInt64(Self.framesPerHugePage - 1)
        // Frame numbers fit 32 bits and the block is in range (it was taken from this memory): a
        // plain counted loop, without the range's and the conversions' overflow checks.
        var frame = Int(truncatingIfNeeded: first) &+ 1
        let end = Int(truncatingIfNeeded: last)
        while frame < end {
            links[frame].store(UInt32(truncatingIfNeeded: frame &+ 1), ordering: .relaxed)
            frame &+= 1
        }
        push(first: first &+ 1, last: last, onto: shardTop(shard))
        return first
    }

    /// Detaches `victim`'s list, keeps up to ``stealBatch`` frames (one returned, the rest pushed on
    /// `shard`) and gives the remainder back. `nil` if `victim` is empty.
    private func steal(from victim: Int, into shard: Int) -> UInt64? {
        let top = shardTop(victim)
        // Acquiring: if this sees a list another steal just detached, that steal's count is
        // visible to the exhaustion check in `allocateSlow`.
        if UInt32(truncatingIfNeeded: top.pointee.load(ordering: .acquiring)) == 0 { return nil }
        // Relaxed: the detach below is a releasing RMW, which orders this count before it.
        stealWord.pointee.wrappingAdd(1, ordering: .relaxed)
        defer {
            // Releasing: the frames given back are visible to whoever sees the steal completed.
            stealWord.pointee.wrappingAdd((1 << 32) &- 1, ordering: .releasing)
        }
        var head = top.pointee.load(ordering: .acquiring)
        var first: UInt64
        while true {
            first = UInt64(UInt32(truncatingIfNeeded: head))
            if first == 0 { return nil }
            // Acquiring: the freers' link writes; releasing: the steal count above comes first.
            let result = top.pointee.compareExchange(
                expected: head, desired: ((head >> 32) &+ 1) << 32, ordering: .acquiringAndReleasing)
            if result.exchanged { break }
            head = result.original
        }
        var last = first
        var taken = 1
        while taken < Self.stealBatch {
            let next = links[Int(last)].load(ordering: .relaxed)
            if next == 0 { break }
            last = UInt64(next)
            taken += 1
        }
        let rest = UInt64(links[Int(last)].load(ordering: .relaxed))
        if rest != 0 { giveBack(rest, to: victim) }
        if taken > 1 {
            push(first: UInt64(links[Int(first)].load(ordering: .relaxed)), last: last, onto: shardTop(shard))
        }
        return first
    }

    /// Re-attaches a detached list starting at `first` to `shard`: in one step if the shard is still
    /// empty, otherwise (frames were freed onto it meanwhile) by finding the list's end.
    private func giveBack(_ first: UInt64, to shard: Int) {
        let top = shardTop(shard)
        let head = top.pointee.load(ordering: .relaxed)
        if UInt32(truncatingIfNeeded: head) == 0 {
            // Releasing: the list's links are visible to the next popper.
            let result = top.pointee.compareExchange(
                expected: head, desired: ((head >> 32) &+ 1) << 32 | first, ordering: .releasing)
            if result.exchanged { return }
        }
        var last = first
        while true {
            let next = links[Int(last)].load(ordering: .relaxed)
            if next == 0 { break }
            last = UInt64(next)
        }
        push(first: first, last: last, onto: top)
    }

    @usableFromInline
    func takeFreshBlock() -> UInt64? {
        let blocks = UInt64(totalFrames / Self.framesPerHugePage)
        var next = freshBlockWord.pointee.load(ordering: .relaxed)
        while next < blocks {
            let result = freshBlockWord.pointee.compareExchange(expected: next, desired: next &+ 1, ordering: .relaxed)
            if result.exchanged { return next }
            next = result.original
        }
        return nil
    }

    /// Allocates a 512-frame, 512-aligned compound frame for a huge mapping, zero-filled. Its counts
    /// live in the head frame. Returns `nil` when no whole block is free (the caller falls back to
    /// 4 KiB pages).
    func allocateHuge(initialCounts: UInt64 = exclusivelyMapped) -> UInt64? {
        guard let head = pop(from: hugeTop) ?? takeFreshBlock().map({ $0 &* UInt64(Self.framesPerHugePage) }) else {
            return nil
        }
        for index in 0..<Self.framesPerHugePage {
            tokens[Int(head) + index].store(0, ordering: .relaxed)
            counts[Int(head) + index].store(0, ordering: .relaxed)
            dirtyFlags[Int(head) + index].store(0, ordering: .relaxed)  // dirty state and lock mark
        }
        counts[Int(head)].store(initialCounts, ordering: .relaxed)
        inUse.add(0, Int64(Self.framesPerHugePage))
        return head
    }

    /// Pushes the chain `first ... last` (linked through `links`) onto the tagged stack `top`.
    @usableFromInline
    func push(first: UInt64, last: UInt64, onto top: UnsafeMutablePointer<Atomic<UInt64>>) {
        var head = top.pointee.load(ordering: .relaxed)
        while true {
            links[Int(last)].store(UInt32(truncatingIfNeeded: head), ordering: .relaxed)
            let replacement = ((head >> 32) &+ 1) << 32 | first
            // Releasing: links and the frames' last state are visible to the popper.
            let result = top.pointee.compareExchange(expected: head, desired: replacement, ordering: .releasing)
            if result.exchanged { return }
            head = result.original
        }
    }

    // MARK: - Freeing

    /// Returns every frame of `chain` to the free lists. Call only after the invalidation that
    /// unmapped them has ended.
    @usableFromInline
    func release(_ chain: consuming FrameChain) {
        if chain.count > 0 {
            push(first: chain.first, last: chain.last, onto: shardTop(ThreadSlot.current & (Self.shardCount - 1)))
            inUse.add(0, -Int64(chain.count))
        }
        var huge = chain.hugeFirst
        for _ in 0..<chain.hugeCount {
            let next = UInt64(links[Int(huge)].load(ordering: .relaxed))
            freeHuge(huge)
            huge = next
        }
    }

    /// Frees a frame that was allocated but never mapped (a fault that lost a race).
    @usableFromInline
    func freeUnused(_ frame: UInt64) {
        counts[Int(frame)].store(0, ordering: .relaxed)
        var chain = FrameChain()
        chain.append(frame, links: links)
        release(chain)
    }

    /// Frees a compound frame that was allocated but never mapped.
    func freeUnusedHuge(_ head: UInt64) {
        counts[Int(head)].store(0, ordering: .relaxed)
        freeHuge(head)
    }

    private func freeHuge(_ head: UInt64) {
        inUse.add(0, -Int64(Self.framesPerHugePage))
        push(first: head, last: head, onto: hugeTop)
    }

    // MARK: - Counts

    /// Drops one mapping of `frame` (and the reference it held). If that was the last reference the
    /// frame is appended to `chain` for freeing after the invalidation ends.
    ///
    /// - Precondition: the caller holds the split lock of the entry that mapped `frame`.
    @inlinable @inline(__always)
    func unmapFrame(_ frame: UInt64, into chain: inout FrameChain) {
        if frame == Self.zeroFrame { return }
        let word = counts + Int(frame)
        // Exclusive fast path: nobody else can change the counts of a frame mapped once without
        // holding the split lock the caller holds (see the type's note), so load+store suffices.
        if word.pointee.load(ordering: .relaxed) == Self.exclusivelyMapped {
            word.pointee.store(0, ordering: .relaxed)
            chain.append(frame, links: links)
            return
        }
        let remaining = word.pointee.wrappingSubtract(Self.refOne | Self.mapOne, ordering: .acquiringAndReleasing)
            .newValue
        checkInvariant(remaining & Self.referenceMask != Self.referenceMask, "frame \(frame) refcount underflow")
        if remaining == 0 { chain.append(frame, links: links) }
    }

    /// Drops one mapping of the compound frame headed by `head`.
    ///
    /// - Precondition: the caller holds the lock of the PMD table that mapped it.
    func unmapHugeFrame(_ head: UInt64, into chain: inout FrameChain) {
        let remaining = counts[Int(head)].wrappingSubtract(Self.refOne | Self.mapOne, ordering: .acquiringAndReleasing)
            .newValue
        checkInvariant(remaining & 0xFFFF_FFFF != 0xFFFF_FFFF, "huge frame \(head) refcount underflow")
        if remaining == 0 { chain.appendHuge(head, links: links) }
    }

    /// Adds one mapping (and reference) to `frame`, e.g. when fork shares it.
    @inlinable
    func mapAgain(_ frame: UInt64) {
        if frame == Self.zeroFrame { return }
        let old = counts[Int(frame)].wrappingAdd(Self.refOne | Self.mapOne, ordering: .relaxed).oldValue
        checkInvariant(old & Self.referenceMask != Self.referenceMask, "frame \(frame): 2^20 references")
    }

    /// Drops a reference that is not a mapping (a shared-memory object's page cache); appends the
    /// frame to `chain` if it was the last reference.
    func unpin(_ frame: UInt64, into chain: inout FrameChain) {
        if frame == Self.zeroFrame { return }
        let remaining = counts[Int(frame)].wrappingSubtract(Self.refOne, ordering: .acquiringAndReleasing).newValue
        if remaining == 0 { chain.append(frame, links: links) }
    }

    /// The reference count of `frame`: one per mapping, one per page-cache reference (shared
    /// memory), one per pin (see ``pinCount(_:)``).
    public func refcount(_ frame: UInt64) -> Int {
        let word = counts[Int(frame)].load(ordering: .relaxed)
        return Int(word & Self.referenceMask) + Int((word & Self.pinMask) >> 20)
    }

    /// The whole counts word of `frame` (references, pins and mappings; acquiring, so what the
    /// last holder did before dropping its count is visible).
    func refcountWord(_ frame: UInt64) -> UInt64 { counts[Int(frame)].load(ordering: .acquiring) }

    /// The number of page-table entries mapping `frame`.
    public func mapcount(_ frame: UInt64) -> Int {
        Int(counts[Int(frame)].load(ordering: .relaxed) >> 32)
    }

    /// Whether `frame` is mapped once and referenced by nothing else (so a write may reuse it).
    @inlinable
    func isExclusive(_ frame: UInt64) -> Bool {
        frame != Self.zeroFrame && counts[Int(frame)].load(ordering: .acquiring) == Self.exclusivelyMapped
    }

    /// Turns the compound frame headed by `head` into 512 independent frames, each with the
    /// compound's counts (used when a huge mapping is split into a PTE table).
    func splitCompound(_ head: UInt64) {
        let word = counts[Int(head)].load(ordering: .relaxed)
        for index in 0..<Self.framesPerHugePage {
            counts[Int(head) + index].store(word, ordering: .relaxed)
        }
    }

    // MARK: - Content tokens

    /// The content token of `frame` (the model of a page's data; the zero page reads 0).
    @inlinable
    public func token(of frame: UInt64) -> UInt64 {
        tokens[Int(frame)].load(ordering: .relaxed)
    }

    /// Sets the content token of `frame`.
    @inlinable
    func setToken(_ token: UInt64, of frame: UInt64) {
        checkInvariant(frame != Self.zeroFrame, "writing the zero page")
        tokens[Int(frame)].store(token, ordering: .relaxed)
    }

    // MARK: - Dirty state

    /// Replaces frame `frame`'s flags byte with `transform` of it, keeping whatever another
    /// writer changed meanwhile (relaxed CAS loop; no store when the byte would not change).
    @inlinable @inline(__always)
    func updateFlags(_ frame: UInt64, _ transform: (UInt8) -> UInt8) {
        let word = dirtyFlags + Int(frame)
        var old = word.pointee.load(ordering: .relaxed)
        while true {
            let new = transform(old)
            if new == old { return }
            let result = word.pointee.compareExchange(expected: old, desired: new, ordering: .relaxed)
            if result.exchanged { return }
            old = result.original
        }
    }

    /// Records that an entry mapping `frame` became dirty (a store, or a write fault). Linux moves
    /// a page-table entry's dirty bit into the folio when the entry goes; shared memory is never
    /// written back without swap, so "ever dirtied while cached" is the folio's dirty flag here.
    /// Set where an entry's dirty bit is set, under that entry's split lock; relaxed: readers
    /// order through the frame's counts (acquiring) or the object's cache lock. A frame already
    /// dirty costs one load.
    @inlinable
    func markDirty(_ frame: UInt64) {
        if frame != Self.zeroFrame {
            updateFlags(frame) { $0 & ~Self.dirtyStateMask | Self.dirtyStateDirty }
        }
    }

    /// Whether ``markDirty(_:)`` was called for `frame` since it was allocated (and no
    /// ``markLazyFree(_:)`` since).
    func isDirty(_ frame: UInt64) -> Bool {
        dirtyFlags[Int(frame)].load(ordering: .relaxed) & Self.dirtyStateMask == Self.dirtyStateDirty
    }

    /// Marks a private page lazily freeable (`MADV_FREE`; the folio losing `swapbacked`): until an
    /// entry mapping it becomes dirty (``markDirty(_:)`` overwrites the mark), reclaim may discard
    /// it instead of writing it to swap. Caller: the split lock of the entry mapping it.
    func markLazyFree(_ frame: UInt64) {
        updateFlags(frame) { $0 & ~Self.dirtyStateMask | Self.dirtyStateLazyFree }
    }

    /// Whether `frame` is lazily freeable (see ``markLazyFree(_:)``).
    func isLazyFree(_ frame: UInt64) -> Bool {
        dirtyFlags[Int(frame)].load(ordering: .relaxed) & Self.dirtyStateMask == Self.dirtyStateLazyFree
    }

    // MARK: - Pages still locked

    // Linux keeps a page mlocked (unevictable) until the lock count it keeps for the page drops
    // to zero, and only mlock and munlock of locked VMAs move that count. A MREMAP_DONTUNMAP move
    // of a locked VMA drops the old VMA's lock without unlocking its pages, so they stay mlocked
    // in an unlocked VMA: MADV_PAGEOUT and reclaim leave them, MADV_FREE does not make them lazily
    // freeable. Page-out's attempt resets their count to zero; mlock of a VMA mapping them adds
    // one, munlock takes one and unlocks them at zero (measured on 6.18). Only such pages are
    // marked: a page in a locked VMA is refused by page-out anyway. The marks live in bits 2–7 of
    // the frame's flags byte (``dirtyFlags``); they are approximate under concurrency (two
    // munlocks racing under different split locks may both see the same count), as is Linux's
    // count, but a change never loses the dirty state beside it.

    /// The lock mark of `frame` (0: not marked).
    @inline(__always)
    func lockMark(_ frame: UInt64) -> UInt8 {
        dirtyFlags[Int(frame)].load(ordering: .relaxed) >> Self.lockMarkShift
    }

    /// Sets the lock mark of `frame` to `mark`, keeping its dirty state.
    @inline(__always)
    private func setLockMark(_ frame: UInt64, _ mark: UInt8) {
        updateFlags(frame) { $0 & Self.dirtyStateMask | mark << Self.lockMarkShift }
    }

    /// Marks `frame` still mlocked after its VMA lost its lock without unlocking it, with a count
    /// of at least one. Caller: the split lock of an entry mapping `frame`.
    func markStillLocked(_ frame: UInt64) {
        guard frame != Self.zeroFrame else { return }
        if lockMark(frame) < 2 { setLockMark(frame, 2) }
        hasLockMarks.store(true, ordering: .relaxed)
    }

    /// Whether `frame` is still mlocked (see ``markStillLocked(_:)``).
    func isStillLocked(_ frame: UInt64) -> Bool { lockMark(frame) != 0 }

    /// Reclaim tried `frame` and put it back: still mlocked, with a count of zero. Caller: the
    /// split lock of an entry mapping `frame`.
    func resetLockCount(_ frame: UInt64) {
        if lockMark(frame) != 0 { setLockMark(frame, 1) }
    }

    /// mlock (`locking`) or munlock of a VMA mapping a marked `frame`: one more on its count, or
    /// one less, unmarked at zero. Unmarked frames are left alone. Caller: the split lock of an
    /// entry mapping `frame`.
    func adjustLockCount(_ frame: UInt64, locking: Bool) {
        let mark = lockMark(frame)
        guard mark != 0 else { return }
        let next: UInt8 = locking ? (mark == Self.lockMarkLimit ? mark : mark + 1) : (mark <= 2 ? 0 : mark - 1)
        setLockMark(frame, next)
    }

    // MARK: - Accounting

    /// Frames currently allocated (approximate while allocations race; exact when quiescent).
    public var framesInUse: Int { Int(inUse.sum(0)) }

    /// Frames that can still be allocated.
    public var framesFree: Int { capacity - framesInUse }
}
