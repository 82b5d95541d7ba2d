import Shootdown

/// `vma-lookup`: lock-free lookups (`mapping(containing:)`: RCU read section, index search, VMA
/// sequence validation) of random addresses among N VMAs.
func runLookup(_ settings: BenchSettings) throws -> RunResult {
    var result = RunResult(workload: "vma-lookup")
    result.config = [("vmas", String(settings.vmas)), ("iterations", String(settings.iterations))] + settings.knobs
    let space = try AddressSpace(
        configuration: AddressSpace.Configuration(
            faultPath: settings.faultPath, notifierList: settings.notifierList, pageTableLocking: settings.locking),
        memory: PhysicalMemory(capacity: 4096))
    let base: UInt64 = 0x1000_0000
    let stride: UInt64 = 8192  // one page mapped, one page hole: VMAs never merge
    progress("vma-lookup: creating \(settings.vmas) VMAs")
    for index in 0..<settings.vmas {
        try space.map(length: 4096, placement: .fixed(base + UInt64(index) * stride))
    }
    var perLookup: [Double] = []
    for _ in 0..<settings.repeats where !interrupted {
        let start = nowNanoseconds()
        let found = lookupMappings(space, settings.iterations, base: base, stride: stride, slots: settings.vmas)
        perLookup.append(Double(nowNanoseconds() - start) / Double(settings.iterations))
        if found != settings.iterations { result.notes.append("lookups that missed: \(settings.iterations - found)") }
    }
    var latency = LatencyRecorder()
    var state: UInt64 = 1
    for _ in 0..<20_000 where !interrupted {
        state = state &* 6_364_136_223_846_793_005 &+ 1
        let address = base + (state >> 33) % UInt64(settings.vmas) * stride
        let timer = nowNanoseconds()
        _ = space.mapping(containing: address)
        latency.record(nowNanoseconds() - timer)
    }
    let summary = Summary(perLookup)
    result.metrics = [
        ("ns_per_op", summary.median), ("ops_per_sec", summary.median > 0 ? 1e9 / summary.median : 0),
        ("p50_ns", latency.percentile(50)), ("p99_ns", latency.percentile(99)),
        ("min_ns_per_op", summary.minimum), ("max_ns_per_op", summary.maximum), ("repeats", Double(perLookup.count)),
    ]
    result.counters = []
    space.teardown()
    return result
}
