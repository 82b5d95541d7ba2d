@_spi(Benchmarking) import Shootdown
import Foundation
import Synchronization

/// `isolation`: while a notifier callback sleeps 100 ms inside an munmap (holding the mmap write
/// lock and a read section of the notifier domain), measure grace periods of the VMA/page-table
/// domain (`RCU.synchronize`) and count speculative faults on another range. Shows the two
/// domains are independent: a sleeping callback delays only the notifier domain. Each repetition
/// is one sleep in a fresh space; `grace_period_us` is the median over repetitions of each sleep's
/// median, `grace_period_max_us` the longest grace period of all.
func runIsolation(_ settings: BenchSettings) throws -> RunResult {
    var result = RunResult(workload: "isolation")
    result.config = [("sleep_ms", "100")] + settings.knobs
    var rounds: [IsolationRound] = []
    for round in 0..<settings.repeats where !interrupted {
        rounds.append(try measureIsolation(settings))
        let median = Summary(rounds.last!.gracePeriods).median
        progress("isolation: round \(round + 1)/\(settings.repeats): grace period \(String(format: "%.1f", median)) µs")
    }
    let medians = rounds.map { Summary($0.gracePeriods).median }
    let all = rounds.flatMap(\.gracePeriods)
    result.metrics = [
        ("grace_period_us", Summary(medians).median), ("grace_period_max_us", Summary(all).maximum),
        ("grace_periods", Double(all.count)),
        ("faults_during_sleep", Summary(rounds.map { Double($0.faults) }).median),
        ("notifier_grace_period_ms", Summary(rounds.map(\.notifierGrace)).median),
    ]
    result.metrics += rangeMetrics("grace_period_us", medians)
    result.metrics.append(("repeats", Double(rounds.count)))
    result.counters = rounds.last.map { counterPairs($0.statistics) } ?? []
    let slept = rounds.filter(\.stillSleeping).count
    result.notes.append("grace periods measured while the callback slept: \(slept == rounds.count ? "yes" : "NO (\(slept) of \(rounds.count) sleeps)")")
    if rounds.contains(where: \.faultsBlocked) { result.notes.append("mmap-lock fault path: faults wait for the sleeping munmap") }
    return result
}

/// What one sleep measured.
struct IsolationRound {
    var gracePeriods: [Double]  // µs
    var faults: Int
    var faultsBlocked: Bool
    var notifierGrace: Double  // ms
    var stillSleeping: Bool
    var statistics: SpaceStatistics
}

/// One sleeping munmap in a fresh space, and what the other domain and the fault path do meanwhile.
func measureIsolation(_ settings: BenchSettings) throws -> IsolationRound {
    let space = try AddressSpace(configuration: settings.configuration, memory: settings.makeMemory(pages: 65_536))
    let faultRegion = try space.map(length: 65_536 * 4096)
    let victim = try space.map(length: 16 * 4096)
    try faultPages(space, victim, 16)
    let sleeper = SleepingNotifier(victim: victim)
    try space.registerNotifier(sleeper)

    let unmapDone = Atomic<Bool>(false)
    let worker = Thread {
        try? space.unmap(address: victim, length: 16 * 4096)
        unmapDone.store(true, ordering: .releasing)
    }
    worker.start()
    sleeper.entered.wait()

    var gracePeriods: [Double] = []
    var faults = 0
    var faultsBlocked = false
    let sleepStart = nowNanoseconds()
    // Grace periods of the VMA/page-table domain while the callback sleeps.
    for _ in 0..<50 where !unmapDone.load(ordering: .acquiring) {
        let start = nowNanoseconds()
        BenchmarkSupport.synchronizeRCU()
        gracePeriods.append(Double(nowNanoseconds() - start) / 1000)
    }
    // Faults on another range while it still sleeps (the speculative path takes no mmap lock).
    while !unmapDone.load(ordering: .acquiring) && faults < 65_536 && nowNanoseconds() - sleepStart < 60_000_000 {
        if space.configuration.faultPath == .mmapLock { faultsBlocked = true; break }
        try space.fault(at: faultRegion + UInt64(faults) * 4096, access: .write)
        faults += 1
    }
    let stillSleeping = !unmapDone.load(ordering: .acquiring)
    // A grace period of the notifier domain must wait for the sleeper.
    let notifierStart = nowNanoseconds()
    BenchmarkSupport.synchronizeNotifierDomain()
    let notifierGrace = Double(nowNanoseconds() - notifierStart) / 1e6
    while !unmapDone.load(ordering: .acquiring) { Thread.sleep(forTimeInterval: 0.001) }
    space.unregisterNotifier(sleeper)
    let statistics = space.statistics
    space.teardown()
    return IsolationRound(
        gracePeriods: gracePeriods, faults: faults, faultsBlocked: faultsBlocked, notifierGrace: notifierGrace,
        stillSleeping: stillSleeping, statistics: statistics)
}

/// A subscriber whose start sleeps 100 ms the first time it sees `victim` invalidated.
final class SleepingNotifier: MMUNotifier, @unchecked Sendable {
    let victim: UInt64
    let entered = DispatchSemaphore(value: 0)
    private let slept = Atomic<Bool>(false)

    init(victim: UInt64) { self.victim = victim }

    var callbacks: NotifierCallbacks { .invalidateRange }

    func invalidateRangeStart(_ range: InvalidationRange) -> Bool {
        if range.start == victim && range.isBlockable && !slept.exchange(true, ordering: .relaxed) {
            entered.signal()
            Thread.sleep(forTimeInterval: 0.1)
        }
        return true
    }

    func invalidateRangeEnd(_ range: InvalidationRange) {}
}
