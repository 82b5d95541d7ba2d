import Benchmark
@_spi(Benchmarking) import Shootdown

// Hot-path benchmarks. CI-style gating uses only `mallocCountTotal` (deterministic); wall clock
// and throughput are reported for people, never gated (this class of machine is too noisy:
// docs/swift-notes.md). Thresholds: Benchmarks/Thresholds/6.3/.
//
//   swift package --package-path Benchmarks benchmark
//   swift package --package-path Benchmarks benchmark thresholds check \
//       --format metricP90AbsoluteThresholds --path Benchmarks/Thresholds/6.3/

/// Pages faulted per benchmark iteration.
private let faultBatch = 4096

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        warmupIterations: 2,
        scalingFactor: .one,
        maxDuration: .seconds(2),
        maxIterations: 200,
        thresholds: [.mallocCountTotal: .init(absolute: [.p90: 0])]
    )

    for path in AddressSpace.FaultPath.allCases {
        // One iteration: fault 4096 fresh pages of a mapped region. The mapping is set up outside
        // the measurement, so `mallocCountTotal` counts the fault path alone: it must be 0.
        Benchmark("Fault.\(path.rawValue).4096pages") { benchmark in
            let space = try AddressSpace(
                configuration: .init(faultPath: path), memory: PhysicalMemory(capacity: faultBatch + 8192))
            let base = try space.map(length: UInt64(faultBatch) * 4096)
            benchmark.startMeasurement()
            var address = base
            for _ in 0..<faultBatch {
                try space.fault(at: address, access: .write)
                address &+= 4096
            }
            benchmark.stopMeasurement()
            space.teardown()
        }
    }

    // One iteration: munmap of 16 384 populated pages with 16 subscribers attached. Allocations
    // are per munmap (bookkeeping), never per page.
    Benchmark("Zap.16subscribers.16384pages") { benchmark in
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 16_384 + 8192))
        let subscribers = (0..<16).map { _ in NoOp() }
        for subscriber in subscribers { try space.registerNotifier(subscriber) }
        let base = try space.map(length: 16_384 * 4096)
        for page in 0..<16_384 { try space.fault(at: base + UInt64(page) * 4096, access: .write) }
        benchmark.startMeasurement()
        try space.unmap(address: base, length: 16_384 * 4096)
        benchmark.stopMeasurement()
        space.teardown()
    }

    for subscribers in [0, 16] {
        // One iteration: 10 000 invalidation start/end pairs over a 4 KiB range.
        Benchmark("Notifier.\(subscribers)subscribers.10000pairs") { (benchmark: Benchmark, space: AddressSpace) in
            for _ in 0..<10_000 {
                space._invalidateWithoutChange(start: 0x1000_0000, end: 0x1000_1000, event: .clear)
            }
        } setup: {
            let space = try AddressSpace(memory: PhysicalMemory(capacity: 1024))
            for _ in 0..<subscribers { try space.registerNotifier(NoOp()) }
            return space
        }
    }

    // One iteration: 10 000 start/end pairs, each hitting one of 100 000 interval notifiers.
    Benchmark("Interval.100000intervals.10000pairs") { (benchmark: Benchmark, space: AddressSpace) in
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        for _ in 0..<10_000 {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            let address = 0x1000_0000 + (state % 100_000) * 8192
            space._invalidateWithoutChange(start: address, end: address + 4096, event: .clear)
        }
    } setup: {
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 1024))
        let handler = Minimal()
        for index in 0..<100_000 {
            _ = try space.insertIntervalNotifier(start: 0x1000_0000 + UInt64(index) * 8192, length: 4096, handler: handler)
        }
        return space
    }

    for count in [1000, 100_000] {
        // One iteration: 10 000 lock-free lookups of random addresses among `count` VMAs.
        Benchmark("VMALookup.\(count)vmas.10000lookups") { (benchmark: Benchmark, space: AddressSpace) in
            var state: UInt64 = 0x2545_F491_4F6C_DD1D
            var found = 0
            for _ in 0..<10_000 {
                state ^= state << 13
                state ^= state >> 7
                state ^= state << 17
                if space.mapping(containing: 0x1000_0000 + (state % UInt64(count)) * 8192 + 64) != nil { found += 1 }
            }
            blackHole(found)
        } setup: {
            // Linux's default vm.max_map_count (65 530) would refuse the 100 000-VMA space.
            let space = try AddressSpace(
                configuration: .init(maxMapCount: 2 * count), memory: PhysicalMemory(capacity: 1024))
            for index in 0..<count {
                try space.map(length: 4096, placement: .fixed(0x1000_0000 + UInt64(index) * 8192))
            }
            return space
        }
    }
}

private final class NoOp: MMUNotifier, @unchecked Sendable {
    var callbacks: NotifierCallbacks { .invalidateRange }
}

private final class Minimal: IntervalNotifierHandler, @unchecked Sendable {
    func invalidate(_ notifier: IntervalNotifier, range: InvalidationRange, currentSequence: UInt64) -> Bool {
        notifier.setSequence(currentSequence)
        return true
    }
}
