@_spi(Benchmarking) import Shootdown

/// `access`: loads and stores of `read(at:)` / `write(_:at:)` over a populated working set of
/// `--pages` pages (default 256, the reach of one thread's TLB), sequential and pseudo-random:
/// with per-thread TLBs (default) every access after the first pass hits; with `--tlb none` every
/// access walks the page table under the split lock. `--compare tlb` runs both interleaved.
func runAccess(_ settings: BenchSettings) throws -> RunResult {
    let settings = settings.withTLB(defaultingTo: .perThread)
    var result = RunResult(workload: "access")
    result.config = [("pages", String(settings.pages)), ("iterations", String(settings.iterations))] + settings.knobs
    let space = try AddressSpace(configuration: settings.configuration, memory: settings.makeMemory())
    let base = try space.map(length: UInt64(settings.pages) * 4096)
    try writePages(space, base, settings.pages, token: 1)
    _ = try readSequential(space, base, pages: settings.pages, settings.pages)  // warm: one pass
    let count = settings.iterations
    var sequentialReads: [Double] = []
    var sequentialWrites: [Double] = []
    var randomReads: [Double] = []
    var randomWrites: [Double] = []
    var averages: [Double] = []
    var state: UInt64 = 0x2545_F491_4F6C_DD1D
    var sink: UInt64 = 0
    let before = space.statistics
    for round in 0..<settings.repeats where !interrupted {
        var start = nowNanoseconds()
        sink &+= try readSequential(space, base, pages: settings.pages, count)
        sequentialReads.append(Double(nowNanoseconds() - start) / Double(count))
        start = nowNanoseconds()
        try writeSequential(space, base, pages: settings.pages, count)
        sequentialWrites.append(Double(nowNanoseconds() - start) / Double(count))
        start = nowNanoseconds()
        sink &+= try readRandom(space, base, pages: settings.pages, count, state: &state)
        randomReads.append(Double(nowNanoseconds() - start) / Double(count))
        start = nowNanoseconds()
        try writeRandom(space, base, pages: settings.pages, count, state: &state)
        randomWrites.append(Double(nowNanoseconds() - start) / Double(count))
        averages.append((sequentialReads[round] + sequentialWrites[round] + randomReads[round] + randomWrites[round]) / 4)
        progress("access: round \(round + 1)/\(settings.repeats): \(String(format: "%.2f", averages[round])) ns/access")
    }
    if sink == 42 { progress("") }
    result.metrics = timedMetrics(nsPerOp: averages, extra: [
        ("sequential_read_ns", Summary(sequentialReads).median), ("sequential_write_ns", Summary(sequentialWrites).median),
        ("random_read_ns", Summary(randomReads).median), ("random_write_ns", Summary(randomWrites).median),
    ])
    result.counters = counterPairs(space.statistics.since(before))
    result.notes.append("ns_per_op: the mean of sequential and random loads and stores over \(settings.pages) populated pages")
    space.teardown()
    return result
}
