@_spi(Benchmarking) import Shootdown
import Synchronization

/// `contention`: one thread faults pages of one VMA while another thread churns the address space
/// under the mmap write lock. Each round measures the faulting thread alone, then under churn;
/// reports both rates, `retained` (the median over rounds of the round's ratio, which cancels the
/// machine's drift between rounds), the churn rate and `mmap_lock_share` (the fraction of faults
/// that ran on the classic path: fallbacks of the lockless paths, all of them for mmap-lock).
///
/// `--churn other-vma` (default): the churn maps, write-faults, mprotects and unmaps 16 pages of
/// another VMA 1 GiB away, so the faulted VMA never changes: lockless paths never need the mmap
/// lock. `--churn same-vma`: the churn mprotects the 16 pages just above the faulted range, which
/// belong to the faulted VMA and were written once before the measurement (read-only, which splits
/// the VMA, then read-write, which merges it back): every op changes the faulted VMA twice, so
/// speculative faults abort and per-VMA-lock faults find it write-locked (and its writer waits for
/// the faults holding it), and both fall back to the mmap lock for the duration of each write. The
/// churn thread faults nothing there, so every fault counted is the measured thread's.
///
/// `--compare fault-path` runs every fault path interleaved and reports ratios over mmap-lock.
func runContention(_ settings: BenchSettings) throws -> RunResult {
    var result = RunResult(workload: "contention")
    result.config = [("pages", String(settings.pages)), ("churn", settings.churn.rawValue)] + settings.knobs
    var solo: [Double] = []
    var contended: [Double] = []
    var churn: [Double] = []
    var ratios: [Double] = []
    var shares: [Double] = []
    var control = ControlRounds(threads: 2)
    var statistics: SpaceStatistics?
    for round in 0..<settings.repeats where !interrupted {
        solo.append(try measureFaultRate(settings, churn: false).faults)
        let measured = try measureFaultRate(settings, churn: true)
        contended.append(measured.faults)
        churn.append(measured.churn)
        ratios.append(solo.last! > 0 ? measured.faults / solo.last! : 0)
        let faults = measured.statistics.faults
        shares.append(faults > 0 ? Double(measured.statistics[.classicFaults]) / Double(faults) : 0)
        statistics = measured.statistics
        control.measure(matching: measured.faults > 0 ? Double(settings.pages) / measured.faults * 1e9 : 1e7)  // the interleaved control: the same two pinned threads, private memory
        progress("contention(\(settings.faultPath.rawValue), \(settings.churn.rawValue)): round \(round + 1)/\(settings.repeats): solo \(Int(solo.last!)) /s, under churn \(Int(contended.last!)) /s, churn \(Int(churn.last!)) ops/s")
    }
    // The key metric, fault_ops_per_sec, equals ops_per_sec: its worst and best rounds are
    // max_ns_per_op and min_ns_per_op.
    let nsPerFault = contended.map { $0 > 0 ? 1e9 / $0 : 0 }
    let median = Summary(nsPerFault).median
    result.metrics = [("fault_ops_per_sec", median > 0 ? 1e9 / median : 0)]
    result.metrics += timedMetrics(
        nsPerOp: nsPerFault,
        extra: [("solo_fault_ops_per_sec", Summary(solo).median), ("retained", Summary(ratios).median),
                ("churn_ops_per_sec", Summary(churn).median), ("mmap_lock_share", Summary(shares).median)]
            + control.metrics(scaling: Summary(ratios).median, perThread: true))
    result.counters = statistics.map(counterPairs) ?? []
    switch settings.churn {
    case .otherVMA: result.notes.append("a churn op is mmap + one write fault + mprotect(read) + munmap of 16 pages of another VMA")
    case .sameVMA: result.notes.append("a churn op is mprotect(read) + mprotect(read-write) of 16 written pages of the faulted VMA")
    }
    result.notes.append("scaling = retained; control_scaling = what each of two pinned threads keeps of one thread's rate on private memory (interleaved)")
    result.notes.append("counters: the last round under churn" + (settings.churn == .otherVMA ? ", the churn thread's own faults included" : ""))
    return result
}

struct FaultRate {
    var faults: Double
    var churn: Double
    var statistics: SpaceStatistics
}

/// Pages of the faulted VMA that `--churn same-vma` mprotects (above the faulted range).
let sameVMAChurnPages = 16

/// Faults `settings.pages` pages of a fresh VMA, optionally with a churning thread.
func measureFaultRate(_ settings: BenchSettings, churn: Bool) throws -> FaultRate {
    // Let liburcu's worker finish reclaiming the previous measurement's space first: freeing its
    // tables and VMAs during this one would make a third busy thread on the machine.
    BenchmarkSupport.drainDeferredReclamation()
    let space = try AddressSpace(configuration: settings.configuration, memory: settings.makeMemory())
    let churnLength = UInt64(sameVMAChurnPages) * 4096
    let extra = settings.churn == .sameVMA ? churnLength : 0
    let region = try space.map(length: UInt64(settings.pages) * 4096 + extra)
    let churnAddress: UInt64
    switch settings.churn {
    case .otherVMA:
        // 1 GiB below, so it never merges with (and never changes) the faulted VMA.
        churnAddress = (region - (1 << 30)) & ~UInt64(4095)
    case .sameVMA:
        churnAddress = region + UInt64(settings.pages) * 4096
        try writePages(space, churnAddress, sameVMAChurnPages, token: 1)
    }
    let stop = Atomic<Bool>(false)
    let churnOps = Atomic<Int>(0)
    let running = SpinningStartLine(parties: 2)
    let measured = Atomic<UInt64>(0)
    if churn {
        runOnThreads(2, pinned: true) { index in
            if index == 0 {
                running.arriveAndWait()
                let operations: Int
                switch settings.churn {
                case .otherVMA: operations = churnOtherVMA(space, churnAddress, stop)
                case .sameVMA: operations = churnSameVMA(space, churnAddress, stop)
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

/// `--churn other-vma`: mmap + write fault + mprotect + munmap of 16 pages at `address` until
/// `stop`; returns the number of ops.
func churnOtherVMA(_ space: AddressSpace, _ address: UInt64, _ stop: borrowing Atomic<Bool>) -> Int {
    var operations = 0
    while !stop.load(ordering: .relaxed) {
        guard let mapped = try? space.map(length: 16 * 4096, placement: .fixed(address)) else { break }
        try? space.fault(at: mapped, access: .write)
        try? space.protect(address: mapped, length: 16 * 4096, protection: .read)
        try? space.unmap(address: mapped, length: 16 * 4096)
        operations += 1
    }
    return operations
}

/// `--churn same-vma`: mprotect(read) + mprotect(read-write) of the 16 pages of the faulted VMA at
/// `address` until `stop`; returns the number of ops.
func churnSameVMA(_ space: AddressSpace, _ address: UInt64, _ stop: borrowing Atomic<Bool>) -> Int {
    let length = UInt64(sameVMAChurnPages) * 4096
    var operations = 0
    while !stop.load(ordering: .relaxed) {
        guard (try? space.protect(address: address, length: length, protection: .read)) != nil,
            (try? space.protect(address: address, length: length, protection: .readWrite)) != nil
        else { break }
        operations += 1
    }
    return operations
}
