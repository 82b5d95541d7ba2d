@_spi(Benchmarking) import Shootdown
import Foundation
import Synchronization

/// A randomized concurrent torture run of every structural and page-level operation of an
/// ``AddressSpace``, with secondary mirrors checked against the CPU page table.
///
/// Layout: the arena (``Configuration/arena``) is split into one region per worker thread. A
/// worker maps, unmaps, protects, remaps, advises, locks, faults, pins and migrates only inside its
/// own region (placements that land elsewhere are unmapped at once, outside the arena); the
/// whole-space operations (fork, `mlockall`, reclaim, soft-dirty clear of the whole space) affect
/// every region; every mirror covers the whole arena, and the workers drive each mirror's device
/// side (populate, read, write, migrate) inside their own regions only.
///
/// Oracle, right after each operation returns: for every page of the operation's range (its whole
/// region after a whole-space operation) the worker reads the CPU entry first, then asks each
/// mirror for its translations; each must name the frame the CPU maps there and be writable only if
/// the CPU entry is. No false positives: only the worker itself creates translations in its region
/// (CPU faults and mirror commits), so a translation a mirror reports after the CPU read already
/// existed at the CPU read; other threads can only remove or downgrade it in between, and a correct
/// mirror drops or downgrades before the CPU entry changes.
///
/// At the end: the whole arena checked once more while quiescent, ``AddressSpace/audit()``, every
/// start of the classic subscribers matched by its end, the workers' interval notifiers all
/// removed; then the harness tears the space down and detaches the mirrors, and checks that every
/// frame and swap slot of the space's ``PhysicalMemory`` came back, no interval notifier is left,
/// and the mirrors hold nothing.
public enum TortureHarness {
    /// What to run.
    public struct Configuration: Sendable {
        /// The space to torture. The harness tears it down at the end; its ``PhysicalMemory`` must
        /// serve no other live space (the run checks that every frame comes back).
        public var space: AddressSpace
        /// Worker threads (one region each).
        public var threads: Int
        /// Seed of the workers' random streams (worker `i` draws from `seed` and `i`).
        public var seed: UInt64
        /// Total operations over all workers; `nil` for no limit (then ``seconds`` must be set).
        public var operations: Int?
        /// Wall-clock limit in seconds; `nil` for none (then ``operations`` must be set).
        public var seconds: Double?
        /// Relative weights of the operation kinds (missing kinds are never drawn).
        public var mix: [TortureOperation: Int]
        /// The mirrors to drive and check; each must cover ``arena``.
        public var mirrors: [any TortureMirror]
        /// First address of the arena: 2 MiB aligned, free of mappings.
        public var arenaStart: UInt64
        /// Pages of each worker's region: a positive multiple of 512 (whole 2 MiB blocks).
        public var regionPages: Int

        /// A configuration; build the mirrors over ``arena`` (or
        /// ``TortureHarness/arena(threads:arenaStart:regionPages:)``) first.
        public init(
            space: AddressSpace, threads: Int = 2, seed: UInt64 = 1, operations: Int? = nil, seconds: Double? = nil,
            mix: [TortureOperation: Int] = TortureOperation.defaultMix, mirrors: [any TortureMirror] = [],
            arenaStart: UInt64 = TortureHarness.defaultArenaStart, regionPages: Int = 1024
        ) {
            self.space = space
            self.threads = threads
            self.seed = seed
            self.operations = operations
            self.seconds = seconds
            self.mix = mix
            self.mirrors = mirrors
            self.arenaStart = arenaStart
            self.regionPages = regionPages
        }

        /// The arena `[start, end)`.
        public var arena: Range<UInt64> {
            TortureHarness.arena(threads: threads, arenaStart: arenaStart, regionPages: regionPages)
        }
    }

    /// Progress, reported from the calling thread while the workers run.
    public struct Progress: Sendable {
        /// Operations done so far.
        public var operations: Int
        /// Violations found so far.
        public var violations: Int
        /// Seconds since the start.
        public var seconds: Double
    }

    /// Where the arena starts by default: far below the mmap base, so placements the engine
    /// chooses (searched top-down from the base) never land in it.
    public static let defaultArenaStart: UInt64 = 0x10_0000_0000

    /// At most this many violations are recorded in a report (all are counted).
    public static let maximumRecordedViolations = 64

    /// The arena of `threads` regions of `regionPages` pages from `arenaStart`.
    public static func arena(threads: Int, arenaStart: UInt64 = defaultArenaStart, regionPages: Int = 1024) -> Range<UInt64> {
        // Saturating: a configuration this large is rejected by `run`, never trapped on.
        let pages = UInt64(max(threads, 0)).multipliedReportingOverflow(by: UInt64(max(regionPages, 0)))
        let bytes = pages.partialValue.multipliedReportingOverflow(by: AddressSpace.pageSize)
        let end = arenaStart.addingReportingOverflow(bytes.partialValue)
        if pages.overflow || bytes.overflow || end.overflow { return arenaStart..<UInt64.max }
        return arenaStart..<end.partialValue
    }

    /// Runs the torture and returns its report (violations are in the report; nothing traps on
    /// them, except a ``SoftwareMirror`` that finds its own translation stale, which traps by design).
    ///
    /// Context: blocks the calling thread until the run ends; calls `progress` on it about every
    /// `progressInterval` seconds. Must not be called from a notifier callback.
    ///
    /// - Throws: ``MemoryError/invalidArgument`` for a configuration without a budget, a negative,
    ///   infinite or NaN budget (or one past 10^9 seconds), with no thread or more than 4096, a region size that is not a positive multiple of 512 pages, an unaligned arena or
    ///   one past the user address space, an empty mix, or a mirror of another space;
    ///   ``MemoryError/addressSpaceDead`` for a torn-down space; ``MemoryError/alreadyExists`` if the
    ///   arena is not free.
    public static func run(
        _ configuration: Configuration, progressInterval: Double = 1,
        progress: ((Progress) -> Void)? = nil
    ) throws(MemoryError) -> TortureReport {
        try validate(configuration)
        let space = configuration.space
        let memory = space.memory
        let pairing = TorturePairingSubscriber()
        let flushes = TortureTLBSubscriber()
        try space.registerNotifier(pairing)
        try space.registerNotifier(flushes)
        let intervalsBefore = space.intervalNotifierCount
        let shared = TortureShared(configuration)
        let clock = ContinuousClock()
        let started = clock.now
        let done = DispatchSemaphore(value: 0)
        let results = Mutex<[TortureWorker.Summary]>([])
        for index in 0..<configuration.threads {
            let thread = Thread {
                let worker = TortureWorker(index: index, configuration: configuration, shared: shared)
                worker.run()
                let summary = worker.finish()
                results.withLock { $0.append(summary) }
                done.signal()
            }
            thread.stackSize = 4 << 20
            thread.start()
        }
        var finished = 0
        while finished < configuration.threads {
            if done.wait(timeout: .now() + progressInterval) == .success {
                finished += 1
            } else if let progress {
                progress(Progress(
                    operations: shared.performed.load(ordering: .relaxed),
                    violations: shared.violationCount.load(ordering: .relaxed),
                    seconds: seconds(clock.now - started)))
            }
        }
        let elapsed = seconds(clock.now - started)
        let summaries = results.withLock { $0 }

        // End of run, quiescent: the whole arena, the audit, the subscribers, the notifiers.
        let arena = configuration.arena
        var final = TortureChecker(space: space, mirrors: configuration.mirrors)
        final.check(start: arena.lowerBound, pages: configuration.threads * configuration.regionPages) { detail in
            shared.record(TortureViolation(seed: configuration.seed, thread: -1, step: 0, operation: nil, detail: detail))
        }
        func fail(_ detail: String) {
            shared.record(TortureViolation(seed: configuration.seed, thread: -1, step: 0, operation: nil, detail: detail))
        }
        let audit = space.audit()
        let statistics = space.statistics
        if statistics[.notifierContractViolations] != 0 {
            fail("the engine counted \(statistics[.notifierContractViolations]) notifier contract violations")
        }
        for (field, value) in audit.failures { fail("audit: \(field) = \(value)") }
        if audit.unmergedNeighbours != 0 {
            // Which pairs: adjacent mappings with the same protection and flags (the audit also
            // compares what the public view does not show, such as anon_vma identities).
            let mappings = space.mappings()
            for (left, right) in zip(mappings, mappings.dropFirst())
            where left.end == right.start && left.protection == right.protection && left.vmFlags == right.vmFlags {
                fail("audit: adjacent mappings with equal protection and flags: \(left) | \(right)")
            }
        }
        let starts = pairing.starts.load(ordering: .sequentiallyConsistent)
        let ends = pairing.ends.load(ordering: .sequentiallyConsistent)
        if starts != ends { fail("classic subscriber: \(starts) invalidation starts but \(ends) ends") }
        let malformed = pairing.malformed.load(ordering: .relaxed) + flushes.malformed.load(ordering: .relaxed)
        if malformed != 0 { fail("classic subscribers: \(malformed) malformed ranges or unmatched ends") }
        if space.intervalNotifierCount != intervalsBefore {
            fail("interval notifiers: \(space.intervalNotifierCount) after the run, \(intervalsBefore) before it")
        }

        // Teardown: every frame and swap slot back, nothing left anywhere.
        space.teardown()
        for mirror in configuration.mirrors { mirror.detach() }
        BenchmarkSupport.drainDeferredReclamation()
        if pairing.releases.load(ordering: .relaxed) != 1 {
            fail("classic subscriber released \(pairing.releases.load(ordering: .relaxed)) times by teardown, not once")
        }
        if space.intervalNotifierCount != 0 { fail("\(space.intervalNotifierCount) interval notifiers left after teardown") }
        for mirror in configuration.mirrors {
            let left = mirror.translations(start: 0, end: AddressSpace.userLimit).count
            if left != 0 { fail("\(mirror.name) holds \(left) translations after teardown and detach") }
        }
        if memory.framesInUse != 0 { fail("\(memory.framesInUse) frames in use after teardown") }
        if memory.swap.slotsInUse != 0 { fail("\(memory.swap.slotsInUse) swap slots in use after teardown") }

        var counts: [String: Int] = [:]
        var errors: [String: Int] = [:]
        var checks = final.checks
        var pages = final.pages
        var translations = final.translations
        for summary in summaries {
            for kind in TortureOperation.allCases {
                counts[kind.rawValue, default: 0] += summary.counts[kind.ordinal]
                errors[kind.rawValue, default: 0] += summary.errors[kind.ordinal]
            }
            checks += summary.checks
            pages += summary.pages
            translations += summary.translations
        }
        return TortureReport(
            seed: configuration.seed, threads: configuration.threads, operations: counts.values.reduce(0, +),
            seconds: elapsed, counts: counts, errors: errors, checks: checks, pagesChecked: pages,
            translationsChecked: translations, violationCount: shared.violationCount.load(ordering: .relaxed),
            violations: shared.violations.withLock { $0 }, audit: audit.fields,
            statistics: Dictionary(uniqueKeysWithValues: statistics.nonZero.map { ($0.name, $0.value) }),
            framesInUseAfterTeardown: memory.framesInUse, swapSlotsInUseAfterTeardown: memory.swap.slotsInUse,
            classicInvalidations: starts, intervalInvalidations: shared.intervalHandler.invalidations.load(ordering: .relaxed))
    }

    private static func validate(_ configuration: Configuration) throws(MemoryError) {
        guard configuration.threads > 0, configuration.operations != nil || configuration.seconds != nil,
            (configuration.operations ?? 0) >= 0,
            configuration.seconds.map({ $0.isFinite && $0 >= 0 && $0 <= 1e9 }) ?? true,
            configuration.arenaStart < AddressSpace.userLimit,
            configuration.regionPages > 0, configuration.regionPages % 512 == 0,
            configuration.arenaStart % AddressSpace.hugePageSize == 0, configuration.arenaStart != 0,
            configuration.threads <= 1 << 12, configuration.regionPages <= 1 << 20,
            configuration.mix.values.allSatisfy({ $0 >= 0 }), configuration.mix.values.reduce(0, +) > 0
        else { throw .invalidArgument }
        let arena = configuration.arena
        guard arena.upperBound <= AddressSpace.userLimit else { throw .invalidArgument }
        for mirror in configuration.mirrors {
            if let software = mirror as? SoftwareMirror, software.space !== configuration.space { throw .invalidArgument }
        }
        if configuration.space.isTornDown { throw .addressSpaceDead }
        for mapping in configuration.space.mappings() where mapping.start < arena.upperBound && mapping.end > arena.lowerBound {
            throw .alreadyExists
        }
    }

    private static func seconds(_ duration: Duration) -> Double {
        let parts = duration.components
        return Double(parts.seconds) + Double(parts.attoseconds) * 1e-18
    }
}

/// State the workers share: the budget, the stop flag, the violations.
final class TortureShared: Sendable {
    /// Operations claimed from the budget (may pass it by the number of workers).
    let claimed = Atomic<Int>(0)
    /// Operations performed (for progress).
    let performed = Atomic<Int>(0)
    /// Violations found.
    let violationCount = Atomic<Int>(0)
    /// The first violations.
    let violations = Mutex<[TortureViolation]>([])
    /// Set when the deadline passed.
    let stop = Atomic<Bool>(false)
    /// The handler of every worker-inserted interval notifier.
    let intervalHandler = TortureIntervalHandler()
    let budget: Int
    let deadline: ContinuousClock.Instant?

    init(_ configuration: TortureHarness.Configuration) {
        budget = configuration.operations ?? Int.max
        deadline = configuration.seconds.map { ContinuousClock.now + .nanoseconds(Int64($0 * 1e9)) }
    }

    /// Takes one operation from the budget; `false` once it is spent or the deadline passed
    /// (checked every 64 claims).
    func claim() -> Bool {
        // Relaxed: a counter; the threads share nothing through it.
        let taken = claimed.wrappingAdd(1, ordering: .relaxed).oldValue
        if taken >= budget { return false }
        if let deadline, taken % 64 == 0, ContinuousClock.now >= deadline {
            // Relaxed: a hint to stop; nothing is published with it.
            stop.store(true, ordering: .relaxed)
        }
        return !stop.load(ordering: .relaxed)
    }

    func record(_ violation: TortureViolation) {
        violationCount.wrappingAdd(1, ordering: .relaxed)
        violations.withLock { if $0.count < TortureHarness.maximumRecordedViolations { $0.append(violation) } }
    }
}

extension TortureOperation {
    /// Position in ``allCases``.
    var ordinal: Int { Self.allCases.firstIndex(of: self)! }
}
