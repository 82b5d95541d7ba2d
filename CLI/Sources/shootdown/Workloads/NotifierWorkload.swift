@_spi(Benchmarking) import Shootdown

/// `notifier`: ns per invalidation start/end pair over a 4 KiB range, with `--subscribers K`
/// no-op classic subscribers, or `--intervals M` interval notifiers of which the range hits one.
/// Also reports the same loop with no notifier call at all (`baseline_ns`).
func runNotifier(_ settings: BenchSettings) throws -> RunResult {
    var result = RunResult(workload: "notifier")
    result.config = [("subscribers", String(settings.subscribers)), ("intervals", String(settings.intervals)),
                     ("iterations", String(settings.iterations))] + settings.knobs
    let space = try AddressSpace(configuration: settings.configuration, memory: PhysicalMemory(capacity: 4096))
    let subscribers = try NoOpSubscribers(settings.subscribers, on: space)
    let handler = MinimalIntervalHandler()
    let base: UInt64 = 0x1000_0000
    let stride: UInt64 = 8192
    var intervals: [IntervalNotifier] = []
    intervals.reserveCapacity(settings.intervals)
    for index in 0..<settings.intervals {
        intervals.append(try space.insertIntervalNotifier(start: base + UInt64(index) * stride, length: 4096, handler: handler))
    }
    let slots = max(settings.intervals, 1024)
    let before = space.statistics
    var pairs: [Double] = []
    var baselines: [Double] = []
    for _ in 0..<settings.repeats where !interrupted {
        var start = nowNanoseconds()
        invalidatePairs(space, settings.iterations, base: base, stride: stride, slots: slots)
        pairs.append(Double(nowNanoseconds() - start) / Double(settings.iterations))
        start = nowNanoseconds()
        let sink = emptyPairs(settings.iterations, base: base, stride: stride, slots: slots)
        baselines.append(Double(nowNanoseconds() - start) / Double(settings.iterations))
        if sink == 42 { progress("") }
    }
    var latency = LatencyRecorder()
    var state = invalidationSeed  // the timed loop's address stream
    for _ in 0..<20_000 where !interrupted {
        let timer = nowNanoseconds()
        invalidatePairs(space, 1, base: base, stride: stride, slots: slots, state: &state)
        latency.record(nowNanoseconds() - timer)
    }
    let median = Summary(pairs).median
    let baseline = Summary(baselines).median
    result.metrics = timedMetrics(
        nsPerOp: pairs, latency: latency, extra: [("baseline_ns", baseline), ("overhead_ns", median - baseline)])
    result.counters = counterPairs(space.statistics.since(before))
    result.notes.append("an op is one start/end pair for a 4 KiB range; baseline_ns is the same loop without it")
    for notifier in intervals { notifier.remove() }
    subscribers.detach()
    space.teardown()
    return result
}
