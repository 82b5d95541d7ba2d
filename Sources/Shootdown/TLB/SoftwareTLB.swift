import CInterop
import Synchronization

/// How a space's loads and stores (``AddressSpace/read(at:)``, ``AddressSpace/write(_:at:)``)
/// find their translation. A design knob chosen when the space is created (docs/tlb.md).
public enum TLBMode: String, Sendable, CaseIterable {
    /// Every access walks the page table and performs the access under the entry's split lock
    /// (the default: nothing else pays for TLBs).
    case none
    /// A small software TLB per thread slot, filled from the page table on a miss; every change
    /// that removes or downgrades a translation shoots the TLBs down, x86-style: a generation
    /// bump, a `membarrier` in place of the IPI, and a wait for the slots still inside an access.
    /// Accessors mark themselves with a plain store and a compiler barrier.
    case perThread = "per-thread"
    /// The same TLBs and protocol with a full fence on every access instead of `membarrier` on
    /// every shootdown (the comparison; also what ``perThread`` becomes where the kernel lacks
    /// `MEMBARRIER_CMD_PRIVATE_EXPEDITED`).
    case perThreadFenced = "per-thread-fenced"
}

/// The software TLBs of one address space (docs/tlb.md): one small direct-mapped TLB per thread
/// slot, found by the slot number without hashing, plus the space-wide shootdown state — the TLB
/// generation (`mm->context.tlb_gen`), the record of the last flush (`flush_tlb_info`) and the
/// slots that hold entries for the space (`mm_cpumask`).
///
/// A non-owning handle to one zero-filled mapping of 8-byte words; the space allocates it and
/// frees it in its `deinit`. Pages are populated on first touch, so a slot that never accesses the
/// space costs no memory. Layout, in blocks of ``blockWords`` words (8 KiB):
/// - block `s` for each owned slot `s` (`s < ThreadSlot.shared`): a 128-byte header written only
///   by the slot's thread (``sequence``, ``caughtUp``, ``barrierMode`` and its counters), then
///   ``entries`` pairs (tag, token address). The sequence word is the only one other threads read.
/// - block ``ThreadSlot/shared`` (threads sharing the overflow slot never use a TLB: they walk):
///   the space-wide words — ``generation`` and ``record`` on one line, read by every access and
///   written by every shootdown; ``slotMask`` on the next line, written once per joining slot.
///
/// An entry's tag is the page address with ``valid`` and, when the entry is writable and already
/// dirty in the page table, ``writeThrough`` (a write through a clean entry must walk to set the
/// dirty bit, as an x86 TLB takes a micro-fault for it). The second word is the address of the
/// frame's content token.
@frozen @usableFromInline
struct SoftwareTLB {
    /// Entries per TLB (direct-mapped by page number: 1 MiB of reach).
    @usableFromInline static let entries = 256
    /// log2 of the words per block.
    @usableFromInline static let blockShift = 10
    @usableFromInline static let blockWords = 1 << blockShift
    /// Header words before the entries (one 128-byte line pair).
    @usableFromInline static let headerWords = cacheLineSize / 8
    /// Bytes of the mapping: a block per slot, the shared slot's block holding the space's words.
    static let byteCount = ThreadSlot.count * blockWords * 8

    // Header words of a slot's block.
    /// Even outside an access, odd inside one; +2 per access (so it also counts accesses).
    @usableFromInline static let sequence = 0
    /// The generation this slot has caught up to; 0 until the slot first accessed the space.
    @usableFromInline static let caughtUp = 1
    /// 1 when the space's shootdowns issue `membarrier` (an access needs only a compiler barrier),
    /// 0 for a full fence. Copied from the space when the slot joins; 0 before (the safe choice).
    @usableFromInline static let barrierMode = 2
    @usableFromInline static let misses = 3
    static let partialFlushes = 4
    static let fullFlushes = 5
    static let pagesFlushed = 6

    // Space-wide words, in the shared slot's block.
    /// `tlb_gen`: incremented by every change that removes or downgrades a translation. Starts at
    /// 1, so a slot's `caughtUp` of 0 always differs.
    @usableFromInline static let generation = 0
    /// The last flush: the generation's low ``recordGenerationBits`` bits, the first page and the
    /// number of pages (0: flush everything).
    static let record = 1
    /// 1 when shootdowns use `membarrier`.
    static let spaceBarrierMode = 2
    /// `mm_cpumask`: bit `s` set once slot `s` accessed the space (never cleared: a lazy slot is
    /// skipped by the in-access test, not by the mask).
    static let slotMask = cacheLineSize / 8

    /// Tag bit: the entry holds a translation.
    @usableFromInline static let valid: UInt64 = 1
    /// Tag bit: a write may go through without a walk (writable, dirty bit already set).
    @usableFromInline static let writeThrough: UInt64 = 2

    /// A range of at most this many pages is flushed page by page, anything larger whole (the
    /// kernel's `tlb_single_page_flush_ceiling`).
    static let singlePageFlushCeiling: UInt64 = 33
    static let recordGenerationBits: UInt64 = 23

    @usableFromInline let words: UnsafeMutablePointer<Atomic<UInt64>>

    @inlinable
    init(words: UnsafeMutablePointer<Atomic<UInt64>>) { self.words = words }

    /// Maps the TLBs of a new space. `membarrier`: shootdowns force barriers with `membarrier` and
    /// accesses need only a compiler barrier (otherwise every access fences). `nil` if the system
    /// refuses the mapping.
    static func allocate(membarrier: Bool) -> SoftwareTLB? {
        guard let raw = cinterop_map_aligned(byteCount, 4096) else { return nil }
        // Zero-filled: every atomic starts at 0 (as the page-table allocator's blocks do).
        let tlb = SoftwareTLB(words: raw.bindMemory(to: Atomic<UInt64>.self, capacity: byteCount / 8))
        tlb.space(generation).pointee.store(1, ordering: .relaxed)
        tlb.space(spaceBarrierMode).pointee.store(membarrier ? 1 : 0, ordering: .relaxed)
        return tlb
    }

    /// Unmaps the TLBs (the space's `deinit`: no thread can be accessing it).
    func deallocate() { cinterop_unmap(UnsafeMutableRawPointer(words), Self.byteCount) }

    /// The block of slot `slot`.
    @inlinable @inline(__always)
    func block(_ slot: Int) -> UnsafeMutablePointer<Atomic<UInt64>> { words + (slot &<< Self.blockShift) }

    /// Space-wide word `index`.
    @inlinable @inline(__always)
    func space(_ index: Int) -> UnsafeMutablePointer<Atomic<UInt64>> {
        words + (ThreadSlot.shared &<< Self.blockShift &+ index)
    }

    /// The entry (tag word, then token-address word) that `address` maps to in `block`.
    @inlinable @inline(__always)
    static func entry(_ block: UnsafeMutablePointer<Atomic<UInt64>>, _ address: UInt64)
        -> UnsafeMutablePointer<Atomic<UInt64>>
    {
        block + (headerWords &+ Int(truncatingIfNeeded: (address &>> 12) & UInt64(entries &- 1)) &<< 1)
    }

    // MARK: - The access (hit path)

    /// Performs a load (`write == false`, returns the token) or a store of `token` at `address`
    /// through the calling thread's TLB; `nil` on a miss (or on a thread without a TLB of its own),
    /// after which the caller walks the page table (``AddressSpace`` fills the entry there).
    ///
    /// The access is bracketed as "in access" for shootdowns: the slot's sequence becomes odd
    /// (a plain store and a compiler barrier, or a full fence in fenced mode), the generation is
    /// compared with the one the slot caught up to (flushing what changed since), the entry is
    /// used, and the sequence becomes even again with a releasing store. No lock, no read-modify-
    /// write, no write to any line another thread writes.
    @inlinable @inline(__always)
    func access(_ address: UInt64, write: Bool, token: UInt64) -> UInt64? {
        let slot = ThreadSlot.current
        if slot == ThreadSlot.shared { return nil }
        let block = self.block(slot)
        let sequence = block[Self.sequence].load(ordering: .relaxed)
        block[Self.sequence].store(sequence | 1, ordering: .relaxed)
        if block[Self.barrierMode].load(ordering: .relaxed) != 0 {
            // The initiator's membarrier supplies the CPU barrier between the store above and the
            // load below when a shootdown needs it; only the compiler must keep them in order.
            cinterop_compiler_barrier()
        } else {
            // Sequentially consistent: the store-buffering pair with the initiator's fence after
            // its generation bump (docs/tlb.md, "Why the protocol is correct").
            atomicMemoryFence(ordering: .sequentiallyConsistent)
        }
        // Acquiring: pairs with the initiator's bump, which follows its page-table changes.
        let generation = space(Self.generation).pointee.load(ordering: .acquiring)
        if generation != block[Self.caughtUp].load(ordering: .relaxed) { catchUp(block, slot, generation) }
        let entry = Self.entry(block, address)
        let tag = entry[0].load(ordering: .relaxed)
        let wanted = address & ~(PageTable.pageSize &- 1) | Self.valid | Self.writeThrough
        var result: UInt64? = nil
        if (write ? tag : tag | Self.writeThrough) == wanted {
            testHook(.tlbHitBeforeAccess)
            let frame = UnsafeMutablePointer<Atomic<UInt64>>(bitPattern: UInt(truncatingIfNeeded: entry[1].load(
                ordering: .relaxed))).unsafelyUnwrapped
            if write {
                frame.pointee.store(token, ordering: .relaxed)
                result = token
            } else {
                result = frame.pointee.load(ordering: .relaxed)
            }
        } else {
            Self.bump(block + Self.misses)
        }
        // Releasing: the access happens before any initiator that sees the sequence move on.
        block[Self.sequence].store(sequence &+ 2, ordering: .releasing)
        return result
    }

    // MARK: - Catching up (the receiving side of a shootdown)

    /// Brings the slot's TLB up to `generation` (`flush_tlb_func`): exactly one generation behind
    /// and the record describes that generation's small range, flush those pages; otherwise flush
    /// everything. A slot's first access joins the space's slot mask instead (its TLB is empty).
    /// Runs inside the access, on the slot's own thread; takes no lock.
    @usableFromInline @inline(never)
    func catchUp(_ block: UnsafeMutablePointer<Atomic<UInt64>>, _ slot: Int, _ generation: UInt64) {
        let caughtUp = block[Self.caughtUp].load(ordering: .relaxed)
        var reached = generation
        if caughtUp == 0 {
            // Sequentially consistent, with the load below: an initiator whose mask load missed
            // this bit bumped the generation earlier in the single total order, so the load sees
            // that bump and every change before it (docs/tlb.md).
            space(Self.slotMask).pointee.bitwiseOr(1 &<< UInt64(slot), ordering: .sequentiallyConsistent)
            reached = space(Self.generation).pointee.load(ordering: .sequentiallyConsistent)
            block[Self.barrierMode].store(space(Self.spaceBarrierMode).pointee.load(ordering: .relaxed), ordering: .relaxed)
        } else if generation == caughtUp &+ 1, let (first, count) = recordedRange(of: generation) {
            for page in first..<(first &+ count) {
                let entry = Self.entry(block, page &<< 12)
                if entry[0].load(ordering: .relaxed) &>> 12 == page { entry[0].store(0, ordering: .relaxed) }
            }
            Self.bump(block + Self.partialFlushes)
            Self.bump(block + Self.pagesFlushed, by: count)
        } else {
            for index in 0..<Self.entries {
                block[Self.headerWords &+ index &<< 1].store(0, ordering: .relaxed)
            }
            Self.bump(block + Self.fullFlushes)
        }
        block[Self.caughtUp].store(reached, ordering: .relaxed)
    }

    /// The pages (first page number, count) the flush of `generation` covers, if the record is
    /// that generation's and small; `nil` means flush everything.
    @usableFromInline
    func recordedRange(of generation: UInt64) -> (UInt64, UInt64)? {
        // Acquiring: pairs with the initiator's releasing store of the record.
        let record = space(Self.record).pointee.load(ordering: .acquiring)
        let mask: UInt64 = (1 << Self.recordGenerationBits) - 1
        guard record >> 41 == generation & mask else { return nil }  // another generation's record
        let count = record & 63
        return count == 0 ? nil : ((record >> 6) & ((1 << 35) - 1), count)
    }

    /// The record of a flush of `[start, end)` at `generation`. The record names the generation by
    /// its low 23 bits; a catch-up reads it for the generation it just loaded, and every initiator
    /// bumping meanwhile waits for that access, so the bits cannot wrap in between.
    static func record(generation: UInt64, start: UInt64, end: UInt64) -> UInt64 {
        let pages = (end &- start) >> 12
        let count = pages >= 1 && pages <= singlePageFlushCeiling && end <= PageTable.userLimit ? pages : 0
        let mask: UInt64 = (1 << recordGenerationBits) - 1
        return (generation & mask) << 41 | ((start >> 12) & ((1 << 35) - 1)) << 6 | count
    }

    /// Adds `count` to a word only its slot's thread writes (others only read it).
    @usableFromInline @inline(__always)
    static func bump(_ word: UnsafeMutablePointer<Atomic<UInt64>>, by count: UInt64 = 1) {
        word.pointee.store(word.pointee.load(ordering: .relaxed) &+ count, ordering: .relaxed)
    }

    // MARK: - Filling (after a walk)

    /// Installs the translation of `address` to the token at `token` in the calling thread's TLB
    /// (a miss that walked). `writeThrough`: the page-table entry is writable and now dirty.
    ///
    /// Caller: holds the split lock of the entry it read, after the access that missed (so the
    /// slot has caught up to a generation read before this walk: any later change of the entry
    /// bumps past it and will flush this entry). Does nothing on a thread without a TLB.
    @usableFromInline
    func fill(_ address: UInt64, token: UnsafeMutablePointer<Atomic<UInt64>>, writeThrough: Bool) {
        let slot = ThreadSlot.current
        if slot == ThreadSlot.shared { return }
        let block = self.block(slot)
        // A slot that never accessed the space is not in the mask: it must not hold entries.
        if block[Self.caughtUp].load(ordering: .relaxed) == 0 { return }
        let entry = Self.entry(block, address)
        entry[1].store(UInt64(UInt(bitPattern: token)), ordering: .relaxed)
        entry[0].store(
            address & ~(PageTable.pageSize &- 1) | Self.valid | (writeThrough ? Self.writeThrough : 0),
            ordering: .relaxed)
    }

    // MARK: - Statistics

    /// Per-slot counter sums for ``AddressSpace/statistics``: accesses through a TLB, misses,
    /// partial and full flushes, pages flushed by partial flushes. Exact when quiescent.
    func counterSums() -> (accesses: Int64, misses: Int64, partial: Int64, full: Int64, pages: Int64) {
        var sums: (accesses: Int64, misses: Int64, partial: Int64, full: Int64, pages: Int64) = (0, 0, 0, 0, 0)
        for slot in 0..<ThreadSlot.shared {
            let block = self.block(slot)
            func value(_ index: Int) -> Int64 { Int64(bitPattern: block[index].load(ordering: .relaxed)) }
            sums.accesses += value(Self.sequence) >> 1
            sums.misses += value(Self.misses)
            sums.partial += value(Self.partialFlushes)
            sums.full += value(Self.fullFlushes)
            sums.pages += value(Self.pagesFlushed)
        }
        return sums
    }

    /// The space's current TLB generation (tests and diagnostics).
    var currentGeneration: UInt64 { space(Self.generation).pointee.load(ordering: .relaxed) }
}

/// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, the IPI of this model (CInterop).
enum Membarrier {
    /// Whether the kernel offers it (and the process is registered for it).
    static let available: Bool = cinterop_membarrier_expedited_available()

    /// Makes every CPU running a thread of this process execute a full barrier. Does not sleep
    /// (the kernel sends IPIs and waits for them), so it may run under a split lock.
    static func run() { cinterop_membarrier_expedited() }
}
