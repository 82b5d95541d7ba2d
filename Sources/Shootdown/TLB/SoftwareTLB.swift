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
/// space costs no memory. Layout, in blocks of ``blockWords`` words (8 KiB), found from the
/// thread's ``ThreadSlot/blockOffset`` with one TLS load:
/// - block 0: the space-wide words — ``generation`` and the flush record (``record``,
///   ``recordGeneration``, ``recordSequence``) on one line, read by every
///   access and written by every shootdown; ``slotMask`` on the next line, written once per
///   joining slot.
/// - block `s + 1` for each owned slot `s` (threads sharing the overflow slot never use a TLB:
///   they walk): a 128-byte header written only by the slot's thread (``sequence``, ``caughtUp``
///   and its counters), then ``entries`` pairs (tag, token address). The sequence word is the
///   only one other threads read.
///
/// An entry's tag is the page address with its low 12 bits set (``tagWritable``) when the entry is
/// writable and already dirty in the page table, or all but bit 1 (``tagReadable``): a write
/// through a clean entry must walk to set the dirty bit, as an x86 TLB takes a micro-fault for it.
/// An empty entry's tag is 0. The second word is the address of the frame's content token.
@frozen @usableFromInline
struct SoftwareTLB {
    /// Entries per TLB (direct-mapped by page number: 1 MiB of reach).
    @usableFromInline static let entries = 256
    /// log2 of the words per block (the blocks of ``ThreadSlot/blockOffset``).
    @usableFromInline static let blockShift = Int(CINTEROP_SLOT_BLOCK_SHIFT) - 3
    @usableFromInline static let blockWords = 1 << blockShift
    /// Header words before the entries (one 128-byte line pair).
    @usableFromInline static let headerWords = cacheLineSize / 8
    /// Bytes of the mapping: the space's block, then one per owned slot.
    static let byteCount = ThreadSlot.count * blockWords * 8

    // Header words of a slot's block.
    /// Even outside an access, odd inside one; +2 per access (so it also counts accesses).
    @usableFromInline static let sequence = 0
    /// The generation this slot has caught up to; 0 until the slot first accessed the space.
    @usableFromInline static let caughtUp = 1
    @usableFromInline static let misses = 2
    static let partialFlushes = 3
    static let fullFlushes = 4
    static let pagesFlushed = 5
    /// Accesses that left the inlined path for ``accessSlow(_:write:token:)`` (each counted twice
    /// by the sequence).
    static let slowAccesses = 6

    // Space-wide words, in block 0.
    /// `tlb_gen`: incremented by every change that removes or downgrades a translation. Starts at
    /// 1, so a slot's `caughtUp` of 0 always differs.
    @usableFromInline static let generation = 0
    /// The last flush's range: the first page number and the number of pages (0: flush
    /// everything); its generation is ``recordGeneration``. Both are written under
    /// ``recordSequence``.
    static let record = 1
    /// The full generation of the flush ``record`` describes (0: none yet).
    static let recordGeneration = 2
    /// The record's seqcount: odd while an initiator writes the record (writers exclude each other
    /// by making it odd), +2 per record written.
    static let recordSequence = 3
    /// `mm_cpumask`: bit `s` set once slot `s` accessed the space (never cleared: a lazy slot is
    /// skipped by the in-access test, not by the mask).
    static let slotMask = cacheLineSize / 8

    /// Low tag bits of an entry that loads and stores may use (writable, dirty bit already set).
    @usableFromInline static let tagWritable: UInt64 = 0xFFF
    /// Low tag bits of an entry only loads may use.
    @usableFromInline static let tagReadable: UInt64 = 0xFFD

    /// A range of at most this many pages is flushed page by page, anything larger whole (the
    /// kernel's `tlb_single_page_flush_ceiling`).
    static let singlePageFlushCeiling: UInt64 = 33

    @usableFromInline let words: UnsafeMutablePointer<Atomic<UInt64>>
    /// Shootdowns force barriers with `membarrier` and an access needs only a compiler barrier;
    /// otherwise every access fences. Fixed for the space's life (a `let` of a `let`: a loop of
    /// accesses tests it once).
    @usableFromInline let membarrier: Bool

    @inlinable
    init(words: UnsafeMutablePointer<Atomic<UInt64>>, membarrier: Bool) {
        self.words = words
        self.membarrier = membarrier
    }

    /// Maps the TLBs of a new space (see ``membarrier``). `nil` if the system refuses the mapping.
    static func allocate(membarrier: Bool) -> SoftwareTLB? {
        guard let raw = cinterop_map_aligned(byteCount, 4096) else { return nil }
        // Zero-filled: every atomic starts at 0 (as the page-table allocator's blocks do).
        let tlb = SoftwareTLB(
            words: raw.bindMemory(to: Atomic<UInt64>.self, capacity: byteCount / 8), membarrier: membarrier)
        tlb.space(generation).pointee.store(1, ordering: .relaxed)
        return tlb
    }

    /// Unmaps the TLBs (the space's `deinit`: no thread can be accessing it).
    func deallocate() { cinterop_unmap(UnsafeMutableRawPointer(words), Self.byteCount) }

    /// The block of slot `slot`.
    @inlinable @inline(__always)
    func block(_ slot: Int) -> UnsafeMutablePointer<Atomic<UInt64>> { words + ((slot &+ 1) &<< Self.blockShift) }

    /// The block at byte offset `offset` (a ``ThreadSlot/blockOffset``).
    @inlinable @inline(__always)
    func block(atByteOffset offset: Int) -> UnsafeMutablePointer<Atomic<UInt64>> {
        UnsafeMutableRawPointer(words).advanced(by: offset).assumingMemoryBound(to: Atomic<UInt64>.self)
    }

    /// The slot whose block is `block`.
    @inlinable
    func slot(of block: UnsafeMutablePointer<Atomic<UInt64>>) -> Int { (block - words) &>> Self.blockShift &- 1 }

    /// Space-wide word `index`.
    @inlinable @inline(__always)
    func space(_ index: Int) -> UnsafeMutablePointer<Atomic<UInt64>> { words + index }

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
    /// compared with the one the slot caught up to, the entry is used, and the sequence becomes
    /// even again with a releasing store. No lock, no read-modify-write, no write to any line
    /// another thread writes. Anything but a hit of a caught-up slot leaves the access and takes
    /// ``accessSlow(_:write:token:)`` (which catches up and counts misses), so the inlined part
    /// calls nothing on its way.
    @inlinable @inline(__always)
    func access(_ address: UInt64, write: Bool, token: UInt64) -> UInt64? {
        let offset = ThreadSlot.blockOffset
        if offset == 0 { return nil }
        let block = self.block(atByteOffset: offset)
        let sequence = enter(block)
        // Acquiring: pairs with the initiator's bump, which follows its page-table changes.
        let generation = space(Self.generation).pointee.load(ordering: .acquiring)
        let entry = Self.entry(block, address)
        let tag = entry[0].load(ordering: .relaxed)
        if generation == block[Self.caughtUp].load(ordering: .relaxed) && Self.allows(tag, address, write: write) {
            let result = Self.use(entry, write: write, token: token)
            // Releasing: the access happens before any initiator that sees the sequence move on.
            block[Self.sequence].store(sequence &+ 2, ordering: .releasing)
            return result
        }
        block[Self.sequence].store(sequence &+ 2, ordering: .releasing)
        return accessSlow(address, write: write, token: token)
    }

    /// ``access(_:write:token:)`` after the generation moved or the entry did not match: a new
    /// access that catches up first, then uses the entry or counts a miss.
    @usableFromInline @inline(never)
    func accessSlow(_ address: UInt64, write: Bool, token: UInt64) -> UInt64? {
        let block = self.block(atByteOffset: ThreadSlot.blockOffset)
        Self.bump(block + Self.slowAccesses)
        let sequence = enter(block)
        let generation = space(Self.generation).pointee.load(ordering: .acquiring)
        if generation != block[Self.caughtUp].load(ordering: .relaxed) { catchUp(block, generation) }
        let entry = Self.entry(block, address)
        var result: UInt64? = nil
        if Self.allows(entry[0].load(ordering: .relaxed), address, write: write) {
            result = Self.use(entry, write: write, token: token)
        } else {
            Self.bump(block + Self.misses)
        }
        block[Self.sequence].store(sequence &+ 2, ordering: .releasing)
        return result
    }

    /// Marks the slot of `block` inside an access (odd sequence) and orders that store before the
    /// access's load of the generation; returns the even sequence it started from.
    @inlinable @inline(__always)
    func enter(_ block: UnsafeMutablePointer<Atomic<UInt64>>) -> UInt64 {
        let sequence = block[Self.sequence].load(ordering: .relaxed)
        block[Self.sequence].store(sequence | 1, ordering: .relaxed)
        if membarrier {
            // The initiator's membarrier supplies the CPU barrier between the store above and the
            // generation load after it when a shootdown needs one; only the compiler must keep
            // them in order.
            cinterop_compiler_barrier()
        } else {
            // Sequentially consistent: the store-buffering pair with the initiator's fence after
            // its generation bump (docs/tlb.md, "Why the protocol is correct").
            atomicMemoryFence(ordering: .sequentiallyConsistent)
        }
        return sequence
    }

    /// Whether an entry tagged `tag` translates `address` for a load (or, `write`, a store).
    @inlinable @inline(__always)
    static func allows(_ tag: UInt64, _ address: UInt64, write: Bool) -> Bool {
        (write ? tag : tag | (tagWritable ^ tagReadable)) == address | tagWritable
    }

    /// The load or store through `entry` (inside an access).
    @inlinable @inline(__always)
    static func use(_ entry: UnsafeMutablePointer<Atomic<UInt64>>, write: Bool, token: UInt64) -> UInt64 {
        testHook(.tlbHitBeforeAccess)
        let frame = UnsafeMutablePointer<Atomic<UInt64>>(
            bitPattern: UInt(truncatingIfNeeded: entry[1].load(ordering: .relaxed))).unsafelyUnwrapped
        if write {
            frame.pointee.store(token, ordering: .relaxed)
            return token
        }
        return frame.pointee.load(ordering: .relaxed)
    }

    // MARK: - Catching up (the receiving side of a shootdown)

    /// Brings the slot's TLB up to `generation` (`flush_tlb_func`): exactly one generation behind
    /// and the record describes that generation's small range, flush those pages; otherwise flush
    /// everything. A slot's first access joins the space's slot mask instead (its TLB is empty).
    /// Runs inside the access, on the slot's own thread; takes no lock.
    @usableFromInline @inline(never)
    func catchUp(_ block: UnsafeMutablePointer<Atomic<UInt64>>, _ generation: UInt64) {
        let caughtUp = block[Self.caughtUp].load(ordering: .relaxed)
        var reached = generation
        if caughtUp == 0 {
            // Sequentially consistent, with the load below: an initiator whose mask load missed
            // this bit bumped the generation earlier in the single total order, so the load sees
            // that bump and every change before it (docs/tlb.md). Until then the slot was in no
            // mask and no access of it used the barrier it may have lacked: it had no entries.
            space(Self.slotMask).pointee.bitwiseOr(1 &<< UInt64(slot(of: block)), ordering: .sequentiallyConsistent)
            reached = space(Self.generation).pointee.load(ordering: .sequentiallyConsistent)
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
    /// that generation's and small; `nil` means flush everything. A seqcount read of the record
    /// (``publishRecord(_:_:)``): a record being written, or another generation's, is a full flush.
    @usableFromInline
    func recordedRange(of generation: UInt64) -> (UInt64, UInt64)? {
        let sequence = space(Self.recordSequence)
        // Acquiring: pairs with the writer's releasing store of the even sequence.
        let before = sequence.pointee.load(ordering: .acquiring)
        if before & 1 != 0 { return nil }
        let recorded = space(Self.recordGeneration).pointee.load(ordering: .relaxed)
        let record = space(Self.record).pointee.load(ordering: .relaxed)
        // Acquiring fence: the loads above happen before the re-check below (the read side of a
        // seqcount; pairs with the writer's releasing fence).
        atomicMemoryFence(ordering: .acquiring)
        guard sequence.pointee.load(ordering: .relaxed) == before, recorded == generation else { return nil }
        let count = record & 63
        return count == 0 ? nil : (record >> 6, count)
    }

    /// The record of a flush of `[start, end)`: the first page number and the page count (0:
    /// everything, for ranges above the single-page ceiling).
    static func record(start: UInt64, end: UInt64) -> UInt64 {
        let pages = (end &- start) >> 12
        let count = pages >= 1 && pages <= singlePageFlushCeiling && end <= PageTable.userLimit ? pages : 0
        return (start >> 12) << 6 | count
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
        let offset = ThreadSlot.blockOffset
        if offset == 0 { return }
        let block = self.block(atByteOffset: offset)
        // A slot that never accessed the space is not in the mask: it must not hold entries.
        if block[Self.caughtUp].load(ordering: .relaxed) == 0 { return }
        let entry = Self.entry(block, address)
        entry[1].store(UInt64(UInt(bitPattern: token)), ordering: .relaxed)
        // The page's address, not the access's: an offset with bit 1 set would turn a read-only
        // tag into a writable one.
        let page = address & ~(PageTable.pageSize &- 1)
        entry[0].store(page | (writeThrough ? Self.tagWritable : Self.tagReadable), ordering: .relaxed)
    }

    // MARK: - Statistics

    /// Per-slot counter sums for ``AddressSpace/statistics``: accesses through a TLB, misses,
    /// partial and full flushes, pages flushed by partial flushes. Exact when quiescent.
    func counterSums() -> (accesses: Int64, misses: Int64, partial: Int64, full: Int64, pages: Int64) {
        var sums: (accesses: Int64, misses: Int64, partial: Int64, full: Int64, pages: Int64) = (0, 0, 0, 0, 0)
        for slot in 0..<ThreadSlot.shared {
            let block = self.block(slot)
            func value(_ index: Int) -> Int64 { Int64(bitPattern: block[index].load(ordering: .relaxed)) }
            sums.accesses += value(Self.sequence) >> 1 - value(Self.slowAccesses)
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
