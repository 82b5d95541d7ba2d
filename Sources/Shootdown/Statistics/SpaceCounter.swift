import Synchronization
/// The per-space event counters (the kernel's `spf_*`, `VMA_LOCK_*` and vmstat counters). Read
/// them with ``AddressSpace/statistics``.
public enum SpaceCounter: Int, CaseIterable, Sendable, CustomStringConvertible {
    // Faults, by path and kind.
    case speculativeFaults
    case classicFaults
    case hugeFaults
    case copyOnWriteFaults
    case zeroPageFaults
    case swapInFaults
    case spuriousFaults
    case segmentationFaults
    case outOfMemoryFaults
    // Speculative-fault aborts, by reason (then the classic path runs).
    case speculativeAbortNoVMA
    case speculativeAbortSequenceOdd
    case speculativeAbortVMAChanged
    case speculativeAbortEntryChanged
    case speculativeAbortLockContention
    case speculativeAbortNotSupported
    case speculativeAbortNoMemory
    case speculativeAbortNoTable
    // Invalidations, by event.
    case invalidationsUnmap
    case invalidationsClear
    case invalidationsProtectionVMA
    case invalidationsProtectionPage
    case invalidationsSoftDirty
    case invalidationsRelease
    case invalidationsMigrate
    case invalidationsExclusive
    case invalidationsRefused
    case notifierContractViolations
    // Page-table work.
    case pagesZapped
    case hugePagesZapped
    case swapEntriesZapped
    case tablesFreed
    case hugePagesSplit
    case hugePagesCollapsed
    case pagesSwappedOut
    case pagesMigrated
    case pagesWriteProtected
    // Interval notifiers and mirrors.
    case intervalInvalidations
    case intervalCollisions
    case intervalReadWaits
    // Grace periods this space waited for (notifier domain).
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

    /// Faults handled, by either path.
    public var faults: Int64 { self[.speculativeFaults] + self[.classicFaults] }

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
