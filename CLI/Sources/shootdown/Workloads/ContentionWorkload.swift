@_spi(Benchmarking) import Shootdown
import Synchronization

/// `contention`: one thread faults pages of one VMA while another thread runs an
/// mmap/write/mprotect/munmap loop on another VMA of the same space. Each round measures the thread
/// alone, then under churn; reports both rates, `retained` (the median over rounds of the round's
/// ratio, which cancels the machine's drift between rounds) and the churn rate. `--compare fault-path` runs both fault paths interleaved and reports `speedup`.
func runContention(_ settings: BenchSettings) throws -> RunResult {
    var result = RunResult(workload: "contention")
    result.config = [("pages", String(settings.pages))] + settings.knobs
    var solo: [Double] = []
    var contended: [Double] = []
    var churn: [Double] = []
    var ratios: [Double] = []
    var statistics: SpaceStatistics?
    for round in 0..<settings.repeats where !interrupted {
        solo.append(try measureFaultRate(settings, churn: false).faults)
        let measured = try measureFaultRate(settings, churn: true)
        contended.append(measured.faults)
        churn.append(measured.churn)
        ratios.append(solo.last! > 0 ? measured.faults / solo.last! : 0)
        statistics = measured.statistics
        progress("contention(\(settings.faultPath.rawValue)): round \(round + 1)/\(settings.repeats): solo \(Int(solo.last!)) /s, under churn \(Int(contended.last!)) /s, churn \(Int(churn.last!)) ops/s")
    }
    // The key metric, fault_ops_per_sec, equals ops_per_sec: its worst and best rounds are
    // max_ns_per_op and min_ns_per_op.
    let nsPerFault = contended.map { $0 > 0 ? 1e9 / $0 : 0 }
    let median = Summary(nsPerFault).median
    result.metrics = [("fault_ops_per_sec", median > 0 ? 1e9 / median : 0)]
    result.metrics += timedMetrics(
        nsPerOp: nsPerFault,
        extra: [("solo_fault_ops_per_sec", Summary(solo).median), ("retained", Summary(ratios).median),
                ("churn_ops_per_sec", Summary(churn).median)])
    result.counters = statistics.map(counterPairs) ?? []
    result.notes.append("a churn op is mmap + one write fault + mprotect(read) + munmap of 16 pages")
    return result
}

struct FaultRate {
    var faults: Double
    var churn: Double
    var statistics: SpaceStatistics
}

/// Faults `settings.pages` pages of a fresh VMA, optionally with a churning thread.
func measureFaultRate(_ settings: BenchSettings, churn: Bool) throws -> FaultRate {
    // Let liburcu's worker finish reclaiming the previous measurement's space first: freeing its
    // tables and VMAs during this one would make a third busy thread on the machine.
    BenchmarkSupport.drainDeferredReclamation()
    let space = try AddressSpace(configuration: settings.configuration, memory: settings.makeMemory())
    let region = try space.map(length: UInt64(settings.pages) * 4096)
    // The churn VMA sits 1 GiB below, so it never merges with (and never changes) the faulted VMA.
    let churnAddress = (region - (1 << 30)) & ~UInt64(4095)
    let stop = Atomic<Bool>(false)
    let churnOps = Atomic<Int>(0)
    let running = SpinningStartLine(parties: 2)
    let measured = Atomic<UInt64>(0)
    if churn {
        runOnThreads(2, pinned: true) { index in
            if index == 0 {
                running.arriveAndWait()
                var operations = 0
                while !stop.load(ordering: .relaxed) {
                    guard let address = try? space.map(length: 16 * 4096, placement: .fixed(churnAddress)) else { break }
                    try? space.fault(at: address, access: .write)
                    try? space.protect(address: address, length: 16 * 4096, protection: .read)
                    try? space.unmap(address: address, length: 16 * 4096)
                    operations += 1
                }
                churnOps.store(operations, ordering: .relaxed)
            } else {
                running.arriveAndWait()
                let start = nowNanoseconds()
                try? faultPages(space, region, settings.pages)
                measured.store(nowNanoseconds() - start, ordering: .relaxed)
                stop.store(true, ordering: .relaxed)
            }
        }
    } else {
        let start = nowNanoseconds()
        try faultPages(space, region, settings.pages)
        measured.store(nowNanoseconds() - start, ordering: .relaxed)
    }
    let elapsed = measured.load(ordering: .relaxed)
    let statistics = space.statistics
    space.teardown()
    let seconds = Double(elapsed) / 1e9
    return FaultRate(
        faults: Double(settings.pages) / seconds, churn: Double(churnOps.load(ordering: .relaxed)) / seconds,
        statistics: statistics)
}
