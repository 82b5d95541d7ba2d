@_spi(Benchmarking) import Shootdown
import Synchronization

/// `fault`: write-fault every 4 KiB page of a fresh anonymous region once (one thread), or, with
/// `--threads T`, T threads faulting disjoint 2 MiB-aligned parts of one region, compared with one
/// thread faulting the same total in the same process (`metrics.scaling`, and `retained`, the
/// fraction of the one-thread rate each thread keeps: scaling / T).
///
/// The region is one VMA shared by the threads (the default): per-VMA-lock faults then all write
/// that VMA's reference count, speculative faults write nothing shared. `--vma-per-thread` gives
/// each thread's part a VMA of its own (adjacent parts alternate protection flags so they never
/// merge), which takes the shared count away.
func runFault(_ settings: BenchSettings) throws -> RunResult {
    if settings.threads > 1 { return try runFaultThreads(settings) }
    var result = RunResult(workload: "fault")
    result.config = [("pages", String(settings.pages)), ("threads", "1")] + settings.knobs
    var perOp: [Double] = []
    var statistics: SpaceStatistics?
    for round in 0..<settings.repeats where !interrupted {
        let space = try AddressSpace(configuration: settings.configuration, memory: settings.makeMemory())
        let base = try space.map(length: UInt64(settings.pages) * 4096)
        let start = nowNanoseconds()
        try faultPages(space, base, settings.pages)
        let elapsed = nowNanoseconds() - start
        perOp.append(Double(elapsed) / Double(settings.pages))
        statistics = space.statistics
        progress("fault: round \(round + 1)/\(settings.repeats): \(String(format: "%.1f", perOp.last!)) ns/fault")
    }
    // Latency distribution from a separate run that times every 8th fault individually.
    var latency = LatencyRecorder()
    if !interrupted {
        let space = try AddressSpace(configuration: settings.configuration, memory: settings.makeMemory())
        let base = try space.map(length: UInt64(settings.pages) * 4096)
        try faultPagesSampled(space, base, settings.pages, sampleEvery: 8, into: &latency)
    }
    result.metrics = timedMetrics(nsPerOp: perOp, latency: latency)
    result.counters = statistics.map(counterPairs) ?? []
    result.notes.append("p50/p99 from \(latency.count) individually timed faults, timer cost (\(latency.timerOverhead) ns) subtracted")
    return result
}

private func runFaultThreads(_ settings: BenchSettings) throws -> RunResult {
    let threads = settings.threads
    let chunk = 512  // pages per 2 MiB
    let perThread = max(1, settings.pages / threads / chunk) * chunk
    let total = perThread * threads
    var result = RunResult(workload: "fault")
    result.config = [("pages", String(total)), ("threads", String(threads)),
                     ("vmas", settings.vmaPerThread ? "per-thread" : "one")] + settings.knobs
    var single: [Double] = []
    var multi: [Double] = []
    var control = ControlRounds(threads: threads)
    var statistics: SpaceStatistics?
    for round in 0..<settings.repeats where !interrupted {
        // One thread, same total, same process.
        do {
            let space = try AddressSpace(configuration: settings.configuration, memory: settings.makeMemory(pages: total))
            let base = try threadRegion(space, settings, parts: threads, pagesPerPart: perThread)
            let start = nowNanoseconds()
            try faultPages(space, base, total)
            single.append(Double(total) * 1e9 / Double(nowNanoseconds() - start))
            space.teardown()
        }
        // Let liburcu's worker finish reclaiming the torn-down space now, not during the
        // measurement (it would be a third busy thread on the machine).
        BenchmarkSupport.drainDeferredReclamation()
        // T threads, disjoint 2 MiB-aligned parts.
        let space = try AddressSpace(configuration: settings.configuration, memory: settings.makeMemory(pages: total))
        let base = try threadRegion(space, settings, parts: threads, pagesPerPart: perThread)
        let line = SpinningStartLine(parties: threads)
        let finish = Atomic<UInt64>(0)
        let startTime = Atomic<UInt64>(0)
        runOnThreads(threads, pinned: true) { index in
            line.arriveAndWait()
            _ = startTime.compareExchange(expected: 0, desired: nowNanoseconds(), ordering: .relaxed)
            try? faultPages(space, base + UInt64(index * perThread) * 4096, perThread)
            recordLatest(nowNanoseconds(), in: finish)
        }
        let elapsed = finish.load(ordering: .relaxed) - startTime.load(ordering: .relaxed)
        multi.append(Double(total) * 1e9 / Double(elapsed))
        statistics = space.statistics
        space.teardown()
        BenchmarkSupport.drainDeferredReclamation()
        // The interleaved control: the same threads, pinned the same way, on private memory.
        control.measure(matching: Double(elapsed))
        progress("fault: round \(round + 1)/\(settings.repeats): 1 thread \(Int(single.last!)) /s, \(threads) threads \(Int(multi.last!)) /s, control \(String(format: "%.2f", control.multi.last! / control.single.last!))x")
    }
    let aggregate = Summary(multi).median
    let one = Summary(single).median
    result.metrics = timedMetrics(
        nsPerOp: multi.map { $0 > 0 ? 1e9 / $0 : 0 },
        extra: [("single_thread_ops_per_sec", one)] + control.metrics(scaling: one > 0 ? aggregate / one : 0)
            + [("retained", one > 0 ? aggregate / one / Double(threads) : 0)])
    result.counters = statistics.map(counterPairs) ?? []
    result.notes.append("ns_per_op is wall time per fault across all threads (aggregate); p50/p99 over \(multi.count) runs")
    result.notes.append("control_scaling: \(threads) pinned threads over 1 on private memory, interleaved with each round; scaling_vs_control = scaling / control_scaling")
    return result
}

/// The region of a multi-threaded fault run: `parts` parts of `pagesPerPart` pages at a 2 MiB-aligned
/// address, in one VMA, or with `vmaPerThread` one VMA per part (odd parts read-write-exec: the same
/// faults, but their VMAs cannot merge with the even ones).
func threadRegion(_ space: AddressSpace, _ settings: BenchSettings, parts: Int, pagesPerPart: Int) throws -> UInt64 {
    let base = try alignedRegion(space, pages: parts * pagesPerPart)
    if settings.vmaPerThread {
        for index in stride(from: 1, to: parts, by: 2) {
            try space.protect(
                address: base + UInt64(index * pagesPerPart) * 4096, length: UInt64(pagesPerPart) * 4096,
                protection: [.read, .write, .exec])
        }
    }
    return base
}

/// Maps `pages` pages at a 2 MiB-aligned address.
func alignedRegion(_ space: AddressSpace, pages: Int) throws -> UInt64 {
    let length = UInt64(pages) * 4096
    let slack = try space.map(length: length + (2 << 20))
    try space.unmap(address: slack, length: length + (2 << 20))
    let aligned = (slack + (2 << 20) - 1) & ~UInt64((2 << 20) - 1)
    return try space.map(length: length, placement: .fixed(aligned))
}
