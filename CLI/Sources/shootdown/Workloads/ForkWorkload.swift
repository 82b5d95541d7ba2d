@_spi(Benchmarking) import Shootdown

/// `fork`: fork a space with N populated private pages, then write every page in the child
/// (one copy-on-write fault each); ns per page for the whole, and for each part.
func runFork(_ settings: BenchSettings) throws -> RunResult {
    var result = RunResult(workload: "fork")
    result.config = [("pages", String(settings.pages))] + settings.knobs
    var total: [Double] = []
    var forkPart: [Double] = []
    var copyPart: [Double] = []
    var statistics: SpaceStatistics?
    for round in 0..<settings.repeats where !interrupted {
        let memory = settings.makeMemory(pages: settings.pages * 2)
        let parent = try AddressSpace(configuration: settings.configuration, memory: memory)
        let base = try parent.map(length: UInt64(settings.pages) * 4096)
        try writePages(parent, base, settings.pages, token: 1)
        let start = nowNanoseconds()
        let child = try parent.fork()
        let forked = nowNanoseconds()
        try writePages(child, base, settings.pages, token: 1_000_000)
        let end = nowNanoseconds()
        total.append(Double(end - start) / Double(settings.pages))
        forkPart.append(Double(forked - start) / Double(settings.pages))
        copyPart.append(Double(end - forked) / Double(settings.pages))
        statistics = child.statistics
        child.teardown()
        parent.teardown()
        progress("fork: round \(round + 1)/\(settings.repeats): \(String(format: "%.1f", total.last!)) ns/page")
    }
    result.metrics = timedMetrics(
        nsPerOp: total,
        extra: [("fork_ns_per_page", Summary(forkPart).median), ("cow_write_ns_per_page", Summary(copyPart).median)])
    result.counters = statistics.map(counterPairs) ?? []
    result.notes.append("an op is one page: its share of fork() plus its first write in the child")
    return result
}

/// `softdirty`: clear soft-dirty bits over N populated pages and write every page again (one
/// write-protect fault each); ns per page per cycle.
func runSoftDirty(_ settings: BenchSettings) throws -> RunResult {
    var result = RunResult(workload: "softdirty")
    result.config = [("pages", String(settings.pages))] + settings.knobs
    let space = try AddressSpace(configuration: settings.configuration, memory: settings.makeMemory())
    let length = UInt64(settings.pages) * 4096
    let base = try space.map(length: length)
    try writePages(space, base, settings.pages, token: 1)
    var total: [Double] = []
    var clearPart: [Double] = []
    let before = space.statistics
    for cycle in 0..<settings.repeats where !interrupted {
        let start = nowNanoseconds()
        try space.clearSoftDirty(address: base, length: length)
        let cleared = nowNanoseconds()
        try writePages(space, base, settings.pages, token: UInt64(cycle) << 32)
        let end = nowNanoseconds()
        total.append(Double(end - start) / Double(settings.pages))
        clearPart.append(Double(cleared - start) / Double(settings.pages))
    }
    let dirty = try space.softDirtyPages(address: base, length: length).count
    let clear = Summary(clearPart).median
    result.metrics = timedMetrics(
        nsPerOp: total,
        extra: [("clear_ns_per_page", clear), ("redirty_ns_per_page", Summary(total).median - clear),
                ("dirty_pages_after", Double(dirty))])
    result.counters = counterPairs(space.statistics.since(before))
    result.notes.append("an op is one page of one clear + re-dirty cycle")
    space.teardown()
    return result
}
