@_spi(Benchmarking) import Shootdown
import ArgumentParser
import Synchronization

/// What each thread of `invalidate` does to its pages after re-faulting them.
enum InvalidateOp: String, CaseIterable, Sendable, ExpressibleByArgument {
    /// `madvise(MADV_DONTNEED)`: mmap read lock, event `clear`.
    case dontneed
    /// `madvise(MADV_PAGEOUT)`: mmap read lock, event `clear`; the re-fault swaps the pages in.
    case pageout
    /// `mprotect(PROT_READ)` then back to read-write: mmap write lock, event `protectionVMA`.
    case protect
    /// `munmap` then `mmap(MAP_FIXED)` of the same pages: mmap write lock, event `unmap`.
    case unmapMap = "unmap-map"
    /// ``AddressSpace/migrate(address:length:owner:)`` (`migrate_vma`): mmap read lock, event
    /// `migrate`.
    case migrate

    /// Whether the operation takes the mmap write lock (so two threads doing it serialise).
    var takesWriteLock: Bool { self == .protect || self == .unmapMap }
}

/// Where the threads of `invalidate` work relative to each other.
enum InvalidateOverlap: String, CaseIterable, Sendable, ExpressibleByArgument {
    /// Each thread in a 2 MiB region of its own (its own PTE table and split lock).
    case none
    /// Every thread in one 2 MiB region, different pages: one PTE table, one split lock.
    case samePMD = "same-pmd"
    /// Every thread on the same pages.
    case sameRange = "same-range"
}

/// `invalidate`: `--threads N` threads each loop over its own range of `--pages` pages: write-fault
/// them (so there is something to invalidate), then invalidate them with `--op`. All ranges lie in
/// one VMA, placed per `--overlap`. Each round measures one thread alone and then N threads (same
/// space, same process), and the interleaved control (``ControlRounds``); reports invalidations
/// (one `--op` call each) and pages per second, `scaling` (N threads' rate over one thread's),
/// `control_scaling` and `scaling_vs_control`.
///
/// dontneed, pageout and migrate run under the mmap read lock, so their threads can run in
/// parallel (zaps of one VMA share its write section); protect and unmap-map take the mmap write
/// lock and serialise (their scaling stays near 1 or below).
///
/// `--subscribers K` no-op classic subscribers, `--intervals M` interval notifiers spread over the
/// region, `--mirrors R` ``SoftwareMirror``s over the region, each repopulated (write) over a
/// thread's range after every re-fault. `--faulters F` adds F threads write-faulting their pages
/// while the N threads invalidate (their own 2 MiB regions with overlap none, the invalidators'
/// pages otherwise), reporting `faults_per_sec` beside the invalidation rate.
func runInvalidate(_ settings: BenchSettings) throws -> RunResult {
    let geometry = try InvalidateGeometry(settings)
    var result = RunResult(workload: "invalidate")
    result.config = [("op", settings.op.rawValue), ("overlap", settings.overlap.rawValue),
                     ("threads", String(settings.threads)), ("faulters", String(settings.faulters)),
                     ("pages", String(settings.pages)), ("iterations", String(settings.iterations)),
                     ("subscribers", String(settings.subscribers)), ("intervals", String(settings.intervals)),
                     ("mirrors", String(settings.mirrors))] + settings.knobs
    var single: [Double] = []
    var multi: [Double] = []
    var faults: [Double] = []
    var failed: [Double] = []
    var control = ControlRounds(threads: settings.threads)
    var statistics: SpaceStatistics?
    for round in 0..<settings.repeats where !interrupted {
        let bench = try InvalidateBench(settings, geometry)
        single.append(try bench.measure(invalidators: 1, faulters: 0).invalidations)
        let measured = try bench.measure(invalidators: settings.threads, faulters: settings.faulters)
        multi.append(measured.invalidations)
        faults.append(measured.faults)
        failed.append(measured.failedShare)
        statistics = measured.statistics
        bench.close()
        BenchmarkSupport.drainDeferredReclamation()
        control.measure(matching: multi.last! > 0 ? Double(settings.threads * settings.iterations) / multi.last! * 1e9 : 1e7)
        progress("invalidate(\(settings.op.rawValue), \(settings.overlap.rawValue)): round \(round + 1)/\(settings.repeats): 1 thread \(Int(single.last!)) /s, \(settings.threads) threads \(Int(multi.last!)) /s, control \(String(format: "%.2f", control.multi.last! / control.single.last!))x")
    }
    let aggregate = Summary(multi).median
    let one = Summary(single).median
    result.metrics = [("invalidations_per_sec", aggregate), ("pages_per_sec", aggregate * Double(settings.pages)),
                      ("single_thread_invalidations_per_sec", one)]
    result.metrics += control.metrics(scaling: one > 0 ? aggregate / one : 0)
    result.metrics += rangeMetrics("invalidations_per_sec", multi)
    if settings.faulters > 0 { result.metrics.append(("faults_per_sec", Summary(faults).median)) }
    if settings.op.takesWriteLock && settings.overlap == .sameRange {
        // Another thread's unmap or mprotect can make a re-fault fail; such iterations are not counted.
        result.metrics.append(("failed_share", Summary(failed).median))
    }
    result.metrics.append(("ns_per_op", aggregate > 0 ? 1e9 / aggregate : 0))
    result.metrics.append(("repeats", Double(multi.count)))
    result.counters = statistics.map(counterPairs) ?? []
    result.notes.append("an invalidation is one \(settings.op.rawValue) call over \(settings.pages) pages, after re-faulting them (write); rates are all threads together")
    result.notes.append("scaling = \(settings.threads) threads' rate over 1 thread's (same round, same space); control_scaling = the same for private-memory loops on the same pinned threads")
    if settings.op.takesWriteLock { result.notes.append("\(settings.op.rawValue) takes the mmap write lock: its threads serialise") }
    result.notes.append("counters: the last round's \(settings.threads)-thread measurement")
    return result
}

/// Where each thread's pages are: one VMA of `regionPages` pages at a 2 MiB-aligned address;
/// thread `i` (invalidators first, then faulters) works on `pages` pages at `offset(i)`. A value;
/// needs no lock.
struct InvalidateGeometry: Sendable {
    let pages: Int
    let overlap: InvalidateOverlap
    let regionPages: Int

    init(_ settings: BenchSettings) throws {
        pages = settings.pages
        overlap = settings.overlap
        let threads = settings.threads + settings.faulters
        switch overlap {
        case .none:
            guard pages <= 512 else { throw ValidationError("--pages must be at most 512 (one 2 MiB region per thread)") }
            regionPages = 512 * threads
        case .samePMD:
            guard pages * threads <= 512 else {
                throw ValidationError("--overlap same-pmd needs (threads + faulters) × pages ≤ 512 (one 2 MiB region)")
            }
            regionPages = 512
        case .sameRange:
            guard pages <= 512 else { throw ValidationError("--pages must be at most 512") }
            regionPages = 512
        }
    }

    /// Page offset of thread `index`'s range in the region.
    func offset(_ index: Int) -> Int {
        switch overlap {
        case .none: index * 512
        case .samePMD: index * pages
        case .sameRange: 0
        }
    }
}

/// One round's space: the region (written once), subscribers, interval notifiers and mirrors.
/// Holds no lock of its own: its threads call the space's public operations, which take the mmap
/// lock (read or write, per ``InvalidateOp``), split locks and notifier read sections themselves.
/// ``close()`` only after ``measure(invalidators:faulters:)`` returned (its threads are joined).
final class InvalidateBench: @unchecked Sendable {
    let settings: BenchSettings
    let geometry: InvalidateGeometry
    let space: AddressSpace
    let base: UInt64
    private let subscribers: NoOpSubscribers
    private let intervals: [IntervalNotifier]
    private let mirrors: [SoftwareMirror]

    init(_ settings: BenchSettings, _ geometry: InvalidateGeometry) throws {
        self.settings = settings
        self.geometry = geometry
        let pages = geometry.regionPages
        let memory = PhysicalMemory(capacity: pages + 16_384, swapSlots: max(1024, 2 * pages))
        let space = try AddressSpace(configuration: settings.configuration, memory: memory)
        let base = try alignedRegion(space, pages: pages)
        self.space = space
        self.base = base
        try writePages(space, base, pages, token: 1)
        subscribers = try NoOpSubscribers(settings.subscribers, on: space)
        let handler = MinimalIntervalHandler()
        let stride = max(1, pages / max(settings.intervals, 1))
        intervals = try (0..<settings.intervals).map { index in
            try space.insertIntervalNotifier(
                start: base + UInt64((index * stride) % pages) * 4096, length: UInt64(stride) * 4096, handler: handler)
        }
        mirrors = try (0..<settings.mirrors).map { _ in
            let mirror = try SoftwareMirror(space: space, start: base, length: UInt64(pages) * 4096)
            try mirror.populate(address: base, length: UInt64(pages) * 4096, write: true)
            return mirror
        }
    }

    /// Runs `invalidators` threads (`settings.iterations` iterations each) and `faulters` threads
    /// (until the invalidators are done), all pinned; returns the rates over the invalidators'
    /// time, from the first start to the last end.
    func measure(invalidators: Int, faulters: Int) throws -> (
        invalidations: Double, faults: Double, failedShare: Double, statistics: SpaceStatistics
    ) {
        let line = SpinningStartLine(parties: invalidators + faulters)
        let startTime = Atomic<UInt64>(0)
        let finish = Atomic<UInt64>(0)
        let remaining = Atomic<Int>(invalidators)
        let faultCount = Atomic<Int>(0)
        let failures = Atomic<Int>(0)
        let before = space.statistics
        let space = self.space
        let mirrors = self.mirrors.map { Unmanaged.passUnretained($0) }
        let op = settings.op
        let iterations = settings.iterations
        let pages = geometry.pages
        let faulterPages = geometry.overlap == .none ? pages : pages * invalidators
        runOnThreads(invalidators + faulters, pinned: true) { [self] index in
            line.arriveAndWait()
            if index < invalidators {
                _ = startTime.compareExchange(expected: 0, desired: nowNanoseconds(), ordering: .relaxed)
                let address = base + UInt64(geometry.offset(index)) * 4096
                let failed = invalidateLoop(space, address, pages: pages, op: op, iterations: iterations, mirrors: mirrors)
                let end = nowNanoseconds()
                failures.wrappingAdd(failed, ordering: .relaxed)
                recordLatest(end, in: finish)
                // Releasing: the faulters stop after the last invalidator's work.
                remaining.wrappingSubtract(1, ordering: .releasing)
            } else {
                // Faulters: their own region with overlap none, else the invalidators' pages.
                let first = geometry.overlap == .none ? geometry.offset(index) : geometry.offset(0)
                let count = faultUntilDone(space, base + UInt64(first) * 4096, pages: faulterPages, remaining: remaining)
                faultCount.wrappingAdd(count, ordering: .relaxed)
            }
        }
        withExtendedLifetime(self.mirrors) {}
        // Only write-lock operations on the same pages can find them unmapped or read-only.
        if failures.load(ordering: .relaxed) > 0 && !(op.takesWriteLock && geometry.overlap == .sameRange) {
            throw ValidationError("invalidate: \(failures.load(ordering: .relaxed)) operations failed")
        }
        let elapsed = Double(finish.load(ordering: .relaxed) &- startTime.load(ordering: .relaxed)) / 1e9
        // Only iterations that completed count: a failed one skipped part of its work.
        let attempted = invalidators * iterations
        let completed = attempted - failures.load(ordering: .relaxed)
        let failedShare = Double(attempted - completed) / Double(max(attempted, 1))
        guard elapsed > 0 else { return (0, 0, failedShare, space.statistics.since(before)) }
        return (Double(completed) / elapsed, Double(faultCount.load(ordering: .relaxed)) / elapsed, failedShare,
                space.statistics.since(before))
    }

    /// Detaches everything and tears the space down.
    func close() {
        for notifier in intervals { notifier.remove() }
        subscribers.detach()
        space.teardown()
        for mirror in mirrors { mirror.detach() }
    }
}

/// One invalidating thread: `iterations` times, write-fault `pages` pages at `address`, repopulate
/// every mirror over them, and invalidate them with `op`. Returns how many steps failed (with
/// overlapping write-lock operations another thread may have the pages unmapped or read-only at
/// that moment; anything else fails the run).
@inline(never)
func invalidateLoop(
    _ space: AddressSpace, _ address: UInt64, pages: Int, op: InvalidateOp, iterations: Int,
    mirrors: [Unmanaged<SoftwareMirror>]
) -> Int {
    let length = UInt64(pages) &* 4096
    var failed = 0
    for _ in 0..<iterations {
        do throws(MemoryError) {
            var page = address
            for _ in 0..<pages {
                try space.fault(at: page, access: .write)
                page &+= 4096
            }
            for mirror in mirrors {
                // Guaranteed reference: no retain and release per call (the caller keeps the
                // mirrors alive).
                let populated = mirror._withUnsafeGuaranteedRef {
                    (try? $0.populate(address: address, length: length, write: true)) != nil
                }
                if !populated { throw .badAddress }
            }
            switch op {
            case .dontneed: try space.advise(address: address, length: length, advice: .dontNeed)
            case .pageout: try space.advise(address: address, length: length, advice: .pageOut)
            case .migrate: _ = try space.migrate(address: address, length: length)
            case .protect:
                try space.protect(address: address, length: length, protection: .read)
                try space.protect(address: address, length: length, protection: .readWrite)
            case .unmapMap:
                try space.unmap(address: address, length: length)
                try space.map(length: length, placement: .fixed(address))
            }
        } catch {
            failed &+= 1
        }
    }
    return failed
}

/// A faulting thread: write-faults `pages` pages at `base` over and over until no invalidator
/// remains; returns the faults made (failed ones, on pages another thread has unmapped or made
/// read-only at that moment, are not counted).
@inline(never)
func faultUntilDone(_ space: AddressSpace, _ base: UInt64, pages: Int, remaining: borrowing Atomic<Int>) -> Int {
    var faults = 0
    while remaining.load(ordering: .acquiring) > 0 {
        var page = base
        for _ in 0..<pages {
            if (try? space.fault(at: page, access: .write)) != nil { faults &+= 1 }
            page &+= 4096
        }
    }
    return faults
}
