@_spi(Benchmarking) import Shootdown

/// Everything a workload can be told, with the defaults of `shootdown bench`.
struct BenchSettings: Sendable {
    var pages = 262_144
    var threads = 1
    var subscribers = 0
    var intervals = 0
    var vmas = 10_000
    var huge = false
    /// `contention`: which VMA the churning thread changes.
    var churn: ChurnTarget = .otherVMA
    /// `fault` with threads: each thread's part in a VMA of its own instead of one shared VMA.
    var vmaPerThread = false
    var faultPath: AddressSpace.FaultPath = .speculative
    var notifierList: NotifierListProtection = .rcu
    var locking: PageTableLocking = .split
    /// `--tlb`; `nil`: the workload's default (per-thread TLBs for access and shootdown, none
    /// elsewhere).
    var tlb: TLBMode? = nil
    var iterations = 1_000_000
    /// `invalidate`: the operation, where the threads work, mirrors and faulting threads.
    var op: InvalidateOp = .dontneed
    var overlap: InvalidateOverlap = .none
    var mirrors = 0
    var faulters = 0
    var repeats = 5

    var configuration: AddressSpace.Configuration {
        AddressSpace.Configuration(
            faultPath: faultPath, notifierList: notifierList, pageTableLocking: locking, tlb: tlb ?? .none)
    }

    /// The design knobs, for the `config` object of a result.
    var knobs: [(String, String)] {
        [("fault_path", faultPath.rawValue), ("notifier_list", notifierList.rawValue),
         ("page_table_locking", locking.rawValue), ("tlb", (tlb ?? .none).rawValue)]
    }

    /// These settings with `mode` as the TLB mode unless `--tlb` (or a comparison) chose one.
    func withTLB(defaultingTo mode: TLBMode) -> BenchSettings {
        var copy = self
        if copy.tlb == nil { copy.tlb = mode }
        return copy
    }

    /// A physical memory large enough for `pages` pages plus slack.
    func makeMemory(pages: Int? = nil) -> PhysicalMemory {
        PhysicalMemory(capacity: (pages ?? self.pages) + 16_384, swapSlots: 1024)
    }
}

/// What the churning thread of `contention` changes.
enum ChurnTarget: String, CaseIterable, Sendable {
    /// mmap + write fault + mprotect + munmap of another, distant VMA: the faulted VMA never changes.
    case otherVMA = "other-vma"
    /// mprotect of pages of the faulted VMA itself (read-only, then back): every churn op changes
    /// the faulted VMA twice (a split and a merge).
    case sameVMA = "same-vma"
}

/// The counters of `space` that are not zero, for a result's `counters` object.
func counterPairs(_ statistics: SpaceStatistics) -> [(String, Int64)] {
    statistics.nonZero.map { ($0.name, $0.value) }
}

/// `count` no-op classic subscribers registered on one space (`--subscribers K`).
struct NoOpSubscribers {
    let space: AddressSpace
    let notifiers: [NoOpNotifier]

    init(_ count: Int, on space: AddressSpace) throws {
        self.space = space
        notifiers = (0..<count).map { _ in NoOpNotifier() }
        for notifier in notifiers { try space.registerNotifier(notifier) }
    }

    /// Unregisters them.
    func detach() {
        for notifier in notifiers { space.unregisterNotifier(notifier) }
    }
}

/// A notifier that implements start and end and does nothing: the cost of dispatch alone.
final class NoOpNotifier: MMUNotifier, @unchecked Sendable {
    var callbacks: NotifierCallbacks { .invalidateRange }
    func invalidateRangeStart(_ range: InvalidationRange) -> Bool { true }
    func invalidateRangeEnd(_ range: InvalidationRange) {}
}

/// An interval handler doing the minimum the protocol requires.
final class MinimalIntervalHandler: IntervalNotifierHandler, @unchecked Sendable {
    func invalidate(_ notifier: IntervalNotifier, range: InvalidationRange, currentSequence: UInt64) -> Bool {
        notifier.setSequence(currentSequence)
        return true
    }
}
