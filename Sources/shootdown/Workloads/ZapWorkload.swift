import Shootdown

/// `zap`: populate a region, then unmap it; ns per 4 KiB page of the unmap (zap, notifier
/// start/end, frame freeing, table freeing). `--subscribers K` attaches K no-op subscribers;
/// `--huge` uses 2 MiB mappings (a huge zap clears one entry per 512 pages).
func runZap(_ settings: BenchSettings) throws -> RunResult {
    var result = RunResult(workload: "zap")
    result.config = [("pages", String(settings.pages)), ("subscribers", String(settings.subscribers)),
                     ("huge", String(settings.huge))] + settings.knobs
    let memory = settings.makeMemory()
    let space = try AddressSpace(configuration: settings.configuration, memory: memory)
    let subscribers = (0..<settings.subscribers).map { _ in NoOpNotifier() }
    for subscriber in subscribers { try space.registerNotifier(subscriber) }
    var perPage: [Double] = []
    let before = space.statistics
    let repeats = max(settings.repeats, 5)
    for round in 0..<repeats where !interrupted {
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
        let elapsed = nowNanoseconds() - start
        perPage.append(Double(elapsed) / Double(settings.pages))
        if round == 0 { progress("zap: \(String(format: "%.2f", perPage[0])) ns/page") }
    }
    let summary = Summary(perPage)
    result.metrics = [
        ("ns_per_op", summary.median), ("ops_per_sec", summary.median > 0 ? 1e9 / summary.median : 0),
        ("p50_ns", Summary.percentile(perPage, 50)), ("p99_ns", Summary.percentile(perPage, 99)),
        ("min_ns_per_op", summary.minimum), ("max_ns_per_op", summary.maximum), ("repeats", Double(perPage.count)),
    ]
    result.counters = counterPairs(space.statistics.since(before))
    result.notes.append("an op is one 4 KiB page of a \(settings.pages)-page munmap; p50/p99 over \(perPage.count) munmaps")
    for subscriber in subscribers { space.unregisterNotifier(subscriber) }
    space.teardown()
    return result
}
