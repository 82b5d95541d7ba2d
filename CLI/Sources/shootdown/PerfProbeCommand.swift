@_spi(Benchmarking) import Shootdown
import ArgumentParser

/// Deterministic, single-threaded workloads for the instruction-count gate (`perf/check`). Each
/// does its setup, then runs the operations under test inside ``perfMeasuredRegion(_:)``, the only
/// function callgrind collects (`--toggle-collect=*perfMeasuredRegion*`), and prints the number of
/// operations so the gate can divide. Never timed; same inputs, same instructions.
struct PerfProbe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "perf-probe", abstract: "Deterministic workloads for perf/check (run under callgrind).",
        shouldDisplay: false)

    enum Probe: String, CaseIterable, ExpressibleByArgument {
        case faultSpeculative = "fault-speculative"
        case faultClassic = "fault-classic"
        case faultVMALock = "fault-vma-lock"
        case zap16 = "zap-16-subscribers"
        case zapHuge = "zap-huge"
        case notifier0 = "notifier-0-subscribers"
        case notifier16 = "notifier-16-subscribers"
        case notifierIntervals = "notifier-10000-intervals"
        case vmaLookup = "vma-lookup-10000"
        case forkCopyOnWrite = "fork-cow"
        case softDirty = "softdirty-cycle"
        case mirrorFault = "mirror-populate"
        case tlbHit = "tlb-hit"
    }

    @Argument(help: "The probe.") var probe: Probe?
    @Flag(help: "List the probes, one a line (what perf/measure measures).") var list = false
    @Flag(help: "Run the operation on two threads, one after the other, each on its own data, between markers (for perf/sharing, under valgrind's lackey tool; see PerfSharingProbe.swift).")
    var sharing = false
    @Option(help: "With --sharing: operations per thread (1024; 16384 pages for the zap probes).") var operations: Int?

    func validate() throws {
        if list && probe != nil { throw ValidationError("--list takes no probe") }
        if !list && probe == nil { throw ValidationError("give a probe, or --list") }
        if let operations, operations < 1 { throw ValidationError("--operations must be positive") }
    }

    func run() throws {
        guard let probe else {
            for probe in Probe.allCases { print(probe.rawValue) }
            return
        }
        if sharing { return try Self.runSharing(probe, operations: operations ?? Self.sharingOperations(probe)) }
        // Warm-up: the first run of an operation pays one-time costs (Swift metadata and protocol
        // conformance caches, first arena mappings) that are not what the gate is about.
        _ = try Self.run(probe, measured: false)
        guard BenchmarkSupport.profileHooksAvailable else {
            throw ValidationError("built without valgrind's headers: install valgrind and rebuild (scripts/ensure-dependencies --perf)")
        }
        let operations = try Self.run(probe, measured: true)
        print("operations \(operations)")
    }

    static func run(_ probe: Probe, measured: Bool) throws -> Int {
        let memory = PhysicalMemory(capacity: 1 << 16, swapSlots: 256)
        // Only the measured run enters the collected function (callgrind toggles collection on
        // every entry of a matching symbol, so this helper must not match the pattern itself).
        func region(_ body: () throws -> Void) rethrows {
            if measured { try perfMeasuredRegion(body) } else { try body() }
        }
        switch probe {
        case .faultSpeculative, .faultClassic, .faultVMALock:
            let path: AddressSpace.FaultPath =
                probe == .faultSpeculative ? .speculative : (probe == .faultClassic ? .mmapLock : .perVMALock)
            let configuration = AddressSpace.Configuration(faultPath: path)
            let space = try AddressSpace(configuration: configuration, memory: memory)
            let pages = 16_384
            let base = try space.map(length: UInt64(pages) * 4096)
            try region { try faultPages(space, base, pages) }
            return pages
        case .zap16:
            let space = try AddressSpace(memory: memory)
            let subscribers = try NoOpSubscribers(16, on: space)
            let pages = 16_384
            let base = try space.map(length: UInt64(pages) * 4096)
            try faultPages(space, base, pages)
            try region { try space.unmap(address: base, length: UInt64(pages) * 4096) }
            subscribers.detach()
            return pages
        case .zapHuge:
            let space = try AddressSpace(memory: memory)
            let pages = 32 * 512
            let base = try alignedRegion(space, pages: pages)
            try space.advise(address: base, length: UInt64(pages) * 4096, advice: .hugePage)
            for huge in 0..<32 { try space.fault(at: base + UInt64(huge) << 21, access: .write) }
            try region { try space.unmap(address: base, length: UInt64(pages) * 4096) }
            return pages
        case .notifier0, .notifier16:
            let space = try AddressSpace(memory: memory)
            let subscribers = try NoOpSubscribers(probe == .notifier16 ? 16 : 0, on: space)
            let pairs = 20_000
            region { invalidatePairs(space, pairs, base: 0x1000_0000, stride: 8192, slots: 1024) }
            subscribers.detach()
            return pairs
        case .notifierIntervals:
            let space = try AddressSpace(memory: memory)
            let handler = MinimalIntervalHandler()
            var notifiers: [IntervalNotifier] = []
            for index in 0..<10_000 {
                notifiers.append(try space.insertIntervalNotifier(
                    start: 0x1000_0000 + UInt64(index) * 8192, length: 4096, handler: handler))
            }
            let pairs = 20_000
            region { invalidatePairs(space, pairs, base: 0x1000_0000, stride: 8192, slots: 10_000) }
            for notifier in notifiers { notifier.remove() }
            return pairs
        case .vmaLookup:
            let space = try AddressSpace(memory: memory)
            for index in 0..<10_000 {
                try space.map(length: 4096, placement: .fixed(0x1000_0000 + UInt64(index) * 8192))
            }
            let lookups = 100_000
            // The addresses are drawn before the region, so it measures the lookups alone.
            var state = lookupSeed
            let addresses = (0..<lookups).map { _ in
                nextLookupAddress(&state, base: 0x1000_0000, stride: 8192, slots: 10_000)
            }
            var found = 0
            addresses.withUnsafeBufferPointer { addresses in
                region { found = lookupMappings(space, addresses) }
            }
            precondition(found == lookups)
            return lookups
        case .forkCopyOnWrite:
            let parent = try AddressSpace(memory: memory)
            let pages = 4096
            let base = try parent.map(length: UInt64(pages) * 4096)
            try writePages(parent, base, pages, token: 1)
            try region {
                let child = try parent.fork()
                try writePages(child, base, pages, token: 7)
            }
            return pages
        case .softDirty:
            let space = try AddressSpace(memory: memory)
            let pages = 4096
            let base = try space.map(length: UInt64(pages) * 4096)
            try writePages(space, base, pages, token: 1)
            try region {
                try space.clearSoftDirty(address: base, length: UInt64(pages) * 4096)
                try writePages(space, base, pages, token: 2)
            }
            return pages
        case .mirrorFault:
            let space = try AddressSpace(memory: memory)
            let pages = 4096
            let base = try space.map(length: UInt64(pages) * 4096)
            let mirror = try SoftwareMirror(space: space, start: base, length: UInt64(pages) * 4096)
            try region { try mirror.populate(address: base, length: UInt64(pages) * 4096, write: true) }
            mirror.detach()
            return pages
        case .tlbHit:
            // Loads that hit the calling thread's TLB: the whole access, with the loop around it.
            let space = try AddressSpace(configuration: AddressSpace.Configuration(tlb: .perThread), memory: memory)
            let pages = 64
            let base = try space.map(length: UInt64(pages) * 4096)
            try writePages(space, base, pages, token: 1)
            _ = try readSequential(space, base, pages: pages, pages)
            _ = try readSequential(space, base, pages: pages, pages)  // a thread's first access walks
            let loads = 100_000
            var sum: UInt64 = 0
            let before = space.statistics
            try region { sum = try readSequential(space, base, pages: pages, loads) }
            // writePages stored tokens 1 ... 64; every load of the region hit.
            let statistics = space.statistics.since(before)
            guard sum == UInt64(loads / pages) * UInt64(pages * (pages + 1) / 2) + UInt64((loads % pages) * (loads % pages + 1) / 2),
                statistics[.tlbMisses] == 0, statistics[.tlbHits] == Int64(loads)
            else {
                throw ValidationError("tlb-hit: unexpected sum \(sum) or TLB counters \(statistics.nonZero)")
            }
            space.teardown()
            return loads
        }
    }
}

/// A lock-free VMA lookup of each of `addresses`; returns how many were found.
@inline(never)
func lookupMappings(_ space: AddressSpace, _ addresses: UnsafeBufferPointer<UInt64>) -> Int {
    var found = 0
    for address in addresses where space.mapping(containing: address) != nil { found &+= 1 }
    return found
}

/// The region the instruction-count gate measures: callgrind's counters are reset on entry and
/// dumped on exit (client requests through CInterop), so the dump holds exactly this region's
/// instructions and calls.
@inline(never)
func perfMeasuredRegion(_ body: () throws -> Void) rethrows {
    BenchmarkSupport.profileRegionBegin()
    defer { BenchmarkSupport.profileRegionEnd() }
    try body()
}
