@_spi(Benchmarking) import Shootdown

/// `vma-lookup`: lock-free lookups (`mapping(containing:)`: RCU read section, index search, VMA
/// sequence validation) of random addresses among N VMAs.
func runLookup(_ settings: BenchSettings) throws -> RunResult {
    var result = RunResult(workload: "vma-lookup")
    result.config = [("vmas", String(settings.vmas)), ("iterations", String(settings.iterations))] + settings.knobs
    // Linux's default `vm.max_map_count` (65530) would refuse the larger sweeps; raise it as the
    // sysctl would, so the limit never decides what is measured.
    var configuration = settings.configuration
    configuration.maxMapCount = max(configuration.maxMapCount, settings.vmas + 1)
    let space = try AddressSpace(configuration: configuration, memory: PhysicalMemory(capacity: 4096))
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
    // Latency distribution: the first 20 000 lookups of the timed loop's address stream, each
    // timed individually.
    var latency = LatencyRecorder()
    var state = lookupSeed
    for _ in 0..<20_000 where !interrupted {
        let address = nextLookupAddress(&state, base: base, stride: stride, slots: settings.vmas)
        let timer = nowNanoseconds()
        _ = space.mapping(containing: address)
        latency.record(nowNanoseconds() - timer)
    }
    result.metrics = timedMetrics(nsPerOp: perLookup, latency: latency)
    result.counters = []
    space.teardown()
    return result
}
