@_spi(Benchmarking) import Shootdown
import Synchronization

/// `shootdown`: the cost of one munmap and of one mprotect(PROT_READ) of `--pages` populated pages
/// (default 16: receivers flush page by page) while 0, 1 and `--threads` − 1 other threads of the
/// space keep loading from another region (so they hold TLB entries for the space and are inside
/// an access most of the time), and how long the initiator waits for them. Every thread is
/// pinned (the initiator to the first CPU, the others round-robin).
func runShootdown(_ settings: BenchSettings) throws -> RunResult {
    let settings = settings.withTLB(defaultingTo: .perThread)
    let largest = max(settings.threads - 1, 0)
    let counts = Array(Set([0, min(1, largest), largest])).sorted()
    var result = RunResult(workload: "shootdown")
    result.config = [("pages", String(settings.pages)), ("threads", String(settings.threads)),
                     ("iterations", String(settings.iterations))] + settings.knobs
    var key: [Double] = []
    var counters: [(String, Int64)] = []
    var control = ControlRounds(threads: largest + 1)
    var munmapMedians: [Int: Double] = [:]
    for others in counts where !interrupted {
        var munmaps: [Double] = []
        var mprotects: [Double] = []
        var waits: [Double] = []
        var waited: [Double] = []
        for round in 0..<settings.repeats where !interrupted {
            let measured = try measureShootdowns(settings, others: others)
            munmaps.append(measured.munmap)
            mprotects.append(measured.mprotect)
            let shootdowns = Double(max(measured.statistics[.tlbShootdowns], 1))
            waits.append(Double(measured.statistics[.tlbShootdownWaitNanoseconds]) / shootdowns)
            waited.append(Double(measured.statistics[.tlbShootdownWaits]) / shootdowns)
            if others == min(1, largest) { key.append(measured.munmap) }
            if round == 0 && others == largest { counters = counterPairs(measured.statistics) }
            if others == largest { control.measure(matching: (measured.munmap + measured.mprotect) * Double(settings.iterations)) }  // interleaved with the rounds of the largest count
            progress("shootdown: \(others) other thread(s), round \(round + 1)/\(settings.repeats): munmap \(Int(measured.munmap)) ns, mprotect \(Int(measured.mprotect)) ns")
        }
        munmapMedians[others] = Summary(munmaps).median
        result.metrics += [
            ("munmap_\(others)_others_ns", Summary(munmaps).median),
            ("mprotect_\(others)_others_ns", Summary(mprotects).median),
            ("wait_\(others)_others_ns", Summary(waits).median),
            ("waits_per_shootdown_\(others)_others", Summary(waited).median),
        ]
    }
    result.metrics = timedMetrics(nsPerOp: key) + result.metrics
    if largest > 0, let alone = munmapMedians[0], let loaded = munmapMedians[largest], loaded > 0 {
        result.metrics += control.metrics(scaling: alone / loaded, perThread: true)
        result.notes.append("scaling = munmap time with 0 others over with \(largest) other(s) loading; control_scaling = what each of \(largest + 1) pinned threads keeps of one thread's rate on private memory (interleaved)")
    }
    result.counters = counters
    result.notes.append("ns_per_op: one munmap of \(settings.pages) pages with \(min(1, largest)) other thread(s) loading; *_ns per call, medians of per-round medians; wait_*: initiator's wait per shootdown")
    return result
}

/// One round: a fresh space, `others` loading threads, `iterations` timed munmaps and mprotects.
/// Returns the median ns per call of each and the space's counters over the timed calls.
private func measureShootdowns(
    _ settings: BenchSettings, others: Int
) throws -> (munmap: Double, mprotect: Double, statistics: SpaceStatistics) {
    let space = try AddressSpace(configuration: settings.configuration, memory: settings.makeMemory(pages: 4096))
    let loadedPages = 64
    let loaded = try space.map(length: UInt64(loadedPages) * 4096)
    try writePages(space, loaded, loadedPages, token: 1)
    let length = UInt64(settings.pages) * 4096
    let target = try space.map(length: length)
    try space.unmap(address: target, length: length)
    let stop = Atomic<Bool>(false)
    let line = SpinningStartLine(parties: others + 1)
    let outcome = Mutex<(munmap: [Double], mprotect: [Double], statistics: SpaceStatistics?, error: (any Error)?)>(
        ([], [], nil, nil))
    runOnThreads(others + 1, pinned: true) { index in
        line.arriveAndWait()
        if index > 0 {
            _ = readUntilStopped(space, loaded, pages: loadedPages, stop: stop)
            return
        }
        defer { stop.store(true, ordering: .relaxed) }
        do {
            var munmaps: [Double] = []
            var mprotects: [Double] = []
            munmaps.reserveCapacity(settings.iterations)
            mprotects.reserveCapacity(settings.iterations)
            let warmUp = settings.iterations / 10
            var before = space.statistics
            for call in 0..<(warmUp + settings.iterations) {
                if call == warmUp { before = space.statistics }
                try space.map(length: length, placement: .fixed(target))
                try writePages(space, target, settings.pages, token: 1)
                let start = nowNanoseconds()
                try space.unmap(address: target, length: length)
                if call >= warmUp { munmaps.append(Double(nowNanoseconds() - start)) }
            }
            try space.map(length: length, placement: .fixed(target))
            for call in 0..<(warmUp + settings.iterations) {
                try writePages(space, target, settings.pages, token: 2)  // writable and dirty again
                let start = nowNanoseconds()
                try space.protect(address: target, length: length, protection: .read)
                if call >= warmUp { mprotects.append(Double(nowNanoseconds() - start)) }
                try space.protect(address: target, length: length, protection: .readWrite)
            }
            let statistics = space.statistics.since(before)
            outcome.withLock { $0 = (munmaps, mprotects, statistics, nil) }
        } catch {
            outcome.withLock { $0.error = error }
        }
    }
    space.teardown()
    let (munmaps, mprotects, statistics, error) = outcome.withLock { $0 }
    if let error { throw error }
    return (Summary(munmaps).median, Summary(mprotects).median, statistics!)
}
