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
        case .pagesSwappedOut: "pagesSwappedOut"
        case .pagesMigrated: "pagesMigrated"
        case .pagesWriteProtected: "pagesWriteProtected"
        case .intervalInvalidations: "intervalInvalidations"
        case .intervalCollisions: "intervalCollisions"
        case .intervalReadWaits: "intervalReadWaits"
        case .notifierGracePeriods: "notifierGracePeriods"
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
        (SpaceCounter.speculativeAbortNoVMA.rawValue...SpaceCounter.speculativeAbortNoMemory.rawValue)
            .reduce(0) { $0 + values[$1] }
    }

    /// The difference `self - earlier`, counter by counter.
    public func since(_ earlier: SpaceStatistics) -> SpaceStatistics {
        SpaceStatistics(values: zip(values, earlier.values).map { $0 - $1 })
    }
}
