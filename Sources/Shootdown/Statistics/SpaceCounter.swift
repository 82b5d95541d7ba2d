import Synchronization
/// The per-space event counters (the kernel's `spf_*`, `VMA_LOCK_*` and vmstat counters). Read
/// them with ``AddressSpace/statistics``.
public enum SpaceCounter: Int, CaseIterable, Sendable, CustomStringConvertible {
    // Faults, by path and kind.
    /// Faults completed on the speculative path (no mmap lock).
    case speculativeFaults
    /// Faults completed on the classic path, under the mmap read lock.
    case classicFaults
    /// Faults that installed a 2 MiB mapping.
    case hugeFaults
    /// Write faults that copied a shared page (copy-on-write broken).
    case copyOnWriteFaults
    /// Read faults on private anonymous memory that mapped the shared zero page.
    case zeroPageFaults
    /// Faults that read a page back from swap.
    case swapInFaults
    /// Faults that found the entry already allowing the access (another thread got there first).
    case spuriousFaults
    /// Faults refused as segmentation faults (no VMA, or against its protection).
    case segmentationFaults
    /// Faults that failed because frames (or swap) ran out.
    case outOfMemoryFaults
    // Speculative-fault aborts, by reason (then the classic path runs).
    /// Speculative attempts that found no VMA at the address.
    case speculativeAbortNoVMA
    /// Speculative attempts that found the VMA being changed (odd sequence count).
    case speculativeAbortSequenceOdd
    /// Speculative attempts whose VMA changed before the entry was installed.
    case speculativeAbortVMAChanged
    /// Speculative attempts whose entry (or PMD) changed under them.
    case speculativeAbortEntryChanged
    /// Speculative attempts that could not take the split lock in time.
    case speculativeAbortLockContention
    /// Speculative attempts on faults the path does not handle (copy-on-write, swap-in, shared or huge mappings, ...).
    case speculativeAbortNotSupported
    /// Speculative attempts that could not allocate a frame.
    case speculativeAbortNoMemory
    /// Speculative attempts that met a missing page table (only the classic path installs tables).
    case speculativeAbortNoTable
    // Per-VMA-lock faults (the kernel's vmstat events of the same names).
    /// `VMA_LOCK_SUCCESS`: faults completed under the VMA lock (access errors reported there too).
    case vmaLockSuccess
    /// `VMA_LOCK_ABORT`: no VMA, VMA write-locked, or the address outside it once locked; the
    /// classic path runs.
    case vmaLockAbort
    /// `VMA_LOCK_RETRY`: the fault needed the mmap lock after all; the classic path runs.
    case vmaLockRetry
    /// `VMA_LOCK_MISS`: the VMA found was detached (removed meanwhile); the lookup was retried.
    case vmaLockMiss
    // Invalidations, by event.
    /// Invalidations with event ``InvalidationEvent/unmap``.
    case invalidationsUnmap
    /// Invalidations with event ``InvalidationEvent/clear``.
    case invalidationsClear
    /// Invalidations with event ``InvalidationEvent/protectionVMA``.
    case invalidationsProtectionVMA
    /// Invalidations with event ``InvalidationEvent/protectionPage``.
    case invalidationsProtectionPage
    /// Invalidations with event ``InvalidationEvent/softDirty``.
    case invalidationsSoftDirty
    /// Invalidations with event ``InvalidationEvent/release``.
    case invalidationsRelease
    /// Invalidations with event ``InvalidationEvent/migrate``.
    case invalidationsMigrate
    /// Invalidations with event ``InvalidationEvent/exclusive`` (none in this model).
    case invalidationsExclusive
    /// Non-blockable invalidations a subscriber refused (the range was left alone).
    case invalidationsRefused
    /// Blockable invalidations a subscriber or handler refused anyway (a bug in the subscriber; the change went ahead).
    case notifierContractViolations
    // Page-table work.
    /// 4 KiB entries removed.
    case pagesZapped
    /// 2 MiB mappings removed.
    case hugePagesZapped
    /// Swap entries removed (their slots released).
    case swapEntriesZapped
    /// Page tables freed after unmapping.
    case tablesFreed
    /// 2 MiB mappings split into 4 KiB entries.
    case hugePagesSplit
    /// Ranges of 512 pages collapsed into a 2 MiB mapping.
    case hugePagesCollapsed
    /// 2 MiB-aligned blocks inside a VMA that ``AddressSpace/collapse(address:length:)`` examined
    /// (holes in its range are skipped, not scanned).
    case hugePageBlocksScanned
    /// Pages written to swap by reclaim or page-out.
    case pagesSwappedOut
    /// Clean shared-memory pages `MADV_PAGEOUT` dropped from their object's cache.
    case sharedPagesReclaimed
    /// Pages `MADV_FREE` left lazily freeable that reclaim or `MADV_PAGEOUT` discarded.
    case lazyFreePagesDiscarded
    /// Cached pages a read fault mapped around the faulting one (fault-around).
    case faultAroundPages
    /// Pages moved to new frames.
    case pagesMigrated
    /// Entries made read-only (mprotect, fork, soft-dirty re-arming).
    case pagesWriteProtected
    // Interval notifiers and mirrors.
    /// Interval-notifier handler calls.
    case intervalInvalidations
    /// `readRetry` calls that reported a collision.
    case intervalCollisions
    /// `readBegin` calls that waited for an invalidation epoch to close.
    case intervalReadWaits
    // Grace periods this space waited for (notifier domain).
    /// Grace periods of the notifier domain this space waited for (unregistration, teardown).
    case notifierGracePeriods
    // Software TLBs (``AddressSpace/Configuration/tlb``; docs/tlb.md).
    /// Accesses served by a thread's TLB.
    case tlbHits
    /// Accesses through a TLB that walked the page table (and filled the entry).
    case tlbMisses
    /// Catch-ups one generation behind a small recorded range: those pages flushed.
    case tlbPartialFlushes
    /// Catch-ups that flushed a whole TLB.
    case tlbFullFlushes
    /// Pages flushed by partial flushes.
    case tlbPagesFlushed
    /// Changes that bumped the TLB generation (every invalidation of a space with TLBs).
    case tlbShootdowns
    /// Shootdowns that forced barriers with `membarrier` (another slot held entries).
    case tlbShootdownBarriers
    /// Slots a shootdown found inside an access and waited for.
    case tlbShootdownWaits
    /// Time initiators spent waiting for those accesses.
    case tlbShootdownWaitNanoseconds

    /// The case name. (Spelled out: `String(describing: self)` would call this property again and
    /// recurse until the stack overflows.)
    public var description: String {
        switch self {
        case .speculativeFaults: "speculativeFaults"
        case .classicFaults: "classicFaults"
        case .hugeFaults: "hugeFaults"
        case .copyOnWriteFaults: "copyOnWriteFaults"
        case .zeroPageFaults: "zeroPageFaults"
        case .swapInFaults: "swapInFaults"
        case .spuriousFaults: "spuriousFaults"
        case .segmentationFaults: "segmentationFaults"
        case .outOfMemoryFaults: "outOfMemoryFaults"
        case .speculativeAbortNoVMA: "speculativeAbortNoVMA"
        case .speculativeAbortSequenceOdd: "speculativeAbortSequenceOdd"
        case .speculativeAbortVMAChanged: "speculativeAbortVMAChanged"
        case .speculativeAbortEntryChanged: "speculativeAbortEntryChanged"
        case .speculativeAbortLockContention: "speculativeAbortLockContention"
        case .speculativeAbortNotSupported: "speculativeAbortNotSupported"
        case .speculativeAbortNoMemory: "speculativeAbortNoMemory"
        case .speculativeAbortNoTable: "speculativeAbortNoTable"
        case .vmaLockSuccess: "vmaLockSuccess"
        case .vmaLockAbort: "vmaLockAbort"
        case .vmaLockRetry: "vmaLockRetry"
        case .vmaLockMiss: "vmaLockMiss"
        case .invalidationsUnmap: "invalidationsUnmap"
        case .invalidationsClear: "invalidationsClear"
        case .invalidationsProtectionVMA: "invalidationsProtectionVMA"
        case .invalidationsProtectionPage: "invalidationsProtectionPage"
        case .invalidationsSoftDirty: "invalidationsSoftDirty"
        case .invalidationsRelease: "invalidationsRelease"
        case .invalidationsMigrate: "invalidationsMigrate"
        case .invalidationsExclusive: "invalidationsExclusive"
        case .invalidationsRefused: "invalidationsRefused"
        case .notifierContractViolations: "notifierContractViolations"
        case .pagesZapped: "pagesZapped"
        case .hugePagesZapped: "hugePagesZapped"
        case .swapEntriesZapped: "swapEntriesZapped"
        case .tablesFreed: "tablesFreed"
        case .hugePagesSplit: "hugePagesSplit"
        case .hugePagesCollapsed: "hugePagesCollapsed"
        case .hugePageBlocksScanned: "hugePageBlocksScanned"
        case .sharedPagesReclaimed: "sharedPagesReclaimed"
        case .lazyFreePagesDiscarded: "lazyFreePagesDiscarded"
        case .faultAroundPages: "faultAroundPages"
        case .pagesSwappedOut: "pagesSwappedOut"
        case .pagesMigrated: "pagesMigrated"
        case .pagesWriteProtected: "pagesWriteProtected"
        case .intervalInvalidations: "intervalInvalidations"
        case .intervalCollisions: "intervalCollisions"
        case .intervalReadWaits: "intervalReadWaits"
        case .notifierGracePeriods: "notifierGracePeriods"
        case .tlbHits: "tlbHits"
        case .tlbMisses: "tlbMisses"
        case .tlbPartialFlushes: "tlbPartialFlushes"
        case .tlbFullFlushes: "tlbFullFlushes"
        case .tlbPagesFlushed: "tlbPagesFlushed"
        case .tlbShootdowns: "tlbShootdowns"
        case .tlbShootdownBarriers: "tlbShootdownBarriers"
        case .tlbShootdownWaits: "tlbShootdownWaits"
        case .tlbShootdownWaitNanoseconds: "tlbShootdownWaitNanoseconds"
        }
    }

    /// Counter for the invalidation event `event`.
    @inlinable
    static func invalidations(_ event: InvalidationEvent) -> SpaceCounter {
        SpaceCounter(rawValue: invalidationsIndex(event))!
    }

    /// Index of the counter for `event` (no enum construction on the dispatch path).
    @inlinable
    static func invalidationsIndex(_ event: InvalidationEvent) -> Int {
        SpaceCounter.invalidationsUnmap.rawValue &+ Int(event.rawValue)
    }
}

/// A snapshot of an address space's counters.
public struct SpaceStatistics: Sendable, Equatable {
    private var values: [Int64]

    init(values: [Int64]) { self.values = values }

    /// The value of `counter`.
    public subscript(_ counter: SpaceCounter) -> Int64 { values[counter.rawValue] }

    /// Every counter with its name, in declaration order.
    public var all: [(name: String, value: Int64)] {
        SpaceCounter.allCases.map { ($0.description, values[$0.rawValue]) }
    }

    /// Counters that are not zero.
    public var nonZero: [(name: String, value: Int64)] { all.filter { $0.value != 0 } }

    /// Faults completed, by any path (under the VMA lock, access errors count too, as in the
    /// kernel's `VMA_LOCK_SUCCESS`).
    public var faults: Int64 { self[.speculativeFaults] + self[.classicFaults] + self[.vmaLockSuccess] }

    /// Per-VMA-lock attempts that ended on the classic path (`VMA_LOCK_ABORT` + `VMA_LOCK_RETRY`).
    public var vmaLockFallbacks: Int64 { self[.vmaLockAbort] + self[.vmaLockRetry] }

    /// Speculative aborts of every reason.
    public var speculativeAborts: Int64 {
        (SpaceCounter.speculativeAbortNoVMA.rawValue...SpaceCounter.speculativeAbortNoTable.rawValue)
            .reduce(0) { $0 + values[$1] }
    }

    /// The difference `self - earlier`, counter by counter.
    public func since(_ earlier: SpaceStatistics) -> SpaceStatistics {
        SpaceStatistics(values: zip(values, earlier.values).map { $0 - $1 })
    }
}
