@_spi(Benchmarking) import Shootdown

/// `zap`: populate a region, then unmap it; ns per 4 KiB page of the unmap (zap, notifier
/// start/end, frame freeing, table freeing). `--subscribers K` attaches K no-op subscribers;
/// `--huge` uses 2 MiB mappings (a huge zap clears one entry per 512 pages).
func runZap(_ settings: BenchSettings) throws -> RunResult {
    var result = RunResult(workload: "zap")
    result.config = [("pages", String(settings.pages)), ("subscribers", String(settings.subscribers)),
                     ("huge", String(settings.huge))] + settings.knobs
    let memory = settings.makeMemory()
    let space = try AddressSpace(configuration: settings.configuration, memory: memory)
    let subscribers = try NoOpSubscribers(settings.subscribers, on: space)
    /// Populates a fresh region and unmaps it; returns the nanoseconds of the unmap.
    func populateAndUnmap() throws -> UInt64 {
        let base = settings.huge
            ? try alignedRegion(space, pages: settings.pages)
            : try space.map(length: UInt64(settings.pages) * 4096)
        if settings.huge { try space.advise(address: base, length: UInt64(settings.pages) * 4096, advice: .hugePage) }
        let step = settings.huge ? 512 : 1
        var page = 0
        while page < settings.pages {
            try space.fault(at: base + UInt64(page) * 4096, access: .write)
            page += step
        }
        let start = nowNanoseconds()
        try space.unmap(address: base, length: UInt64(settings.pages) * 4096)
        return nowNanoseconds() - start
    }
    // Warm-up, not measured: the first munmap of a fresh space and memory is several times slower
    // (cold frame and table state), which would decide the median of a few repetitions.
    _ = try populateAndUnmap()
    var perPage: [Double] = []
    let before = space.statistics
    for round in 0..<settings.repeats where !interrupted {
        perPage.append(Double(try populateAndUnmap()) / Double(settings.pages))
        if round == 0 { progress("zap: \(String(format: "%.2f", perPage[0])) ns/page") }
    }
    result.metrics = timedMetrics(nsPerOp: perPage)
    result.counters = counterPairs(space.statistics.since(before))
    result.notes.append("an op is one 4 KiB page of a \(settings.pages)-page munmap; p50/p99 over \(perPage.count) munmaps")
    subscribers.detach()
    space.teardown()
    return result
}
