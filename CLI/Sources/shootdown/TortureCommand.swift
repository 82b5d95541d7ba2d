@_spi(Benchmarking) import Shootdown
import ArgumentParser
import Foundation
import Synchronization

/// A randomized concurrency torture run with audits: faulting threads, a mirror reading through
/// an interval notifier, and a churning thread; checks the engine's invariants at the end and
/// after each structural operation.
struct Torture: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a concurrent torture test with audits.")

    @Option(help: "Structural operations by the churning thread.") var operations = 20_000
    @Option(help: "Faulting threads.") var threads = 2
    @Option(help: "Seed of the churning thread's choices.") var seed: UInt64 = 1
    @Option(name: .customLong("fault-path"), help: "speculative | mmap-lock | per-vma-lock")
    var faultPath: AddressSpace.FaultPath = .speculative

    func run() throws {
        installInterruptHandler()
        let memory = PhysicalMemory(capacity: 1 << 16)
        let space = try AddressSpace(configuration: .init(faultPath: faultPath), memory: memory)
        let pages = 1024
        let base = try space.map(length: UInt64(pages) * 4096)
        let mirror = try SoftwareMirror(space: space, start: base, length: UInt64(pages) * 4096)
        let stop = Atomic<Bool>(false)
        let violations = Atomic<Int>(0)
        let churned = Atomic<Int>(0)
        let operations = self.operations
        let seed = self.seed
        runOnThreads(threads + 2) { index in
            var state = seed &+ UInt64(index) &* 0x9E37_79B9_7F4A_7C15
            if index == 0 {
                for _ in 0..<operations where !interrupted {
                    let first = Int(xorshift(&state) % UInt64(pages - 8))
                    let count = UInt64(1 + xorshift(&state) % 8)
                    let address = base + UInt64(first) * 4096
                    switch xorshift(&state) % 4 {
                    case 0:
                        try? space.unmap(address: address, length: count * 4096)
                        for page in 0..<count where space.translate(address + page * 4096) != nil {
                            violations.wrappingAdd(1, ordering: .relaxed)
                        }
                        _ = try? space.map(length: count * 4096, placement: .fixed(address))
                    case 1:
                        try? space.protect(address: address, length: count * 4096, protection: .read)
                        for page in 0..<count where space.translate(address + page * 4096)?.isWritable == true {
                            violations.wrappingAdd(1, ordering: .relaxed)
                        }
                        try? space.protect(address: address, length: count * 4096, protection: .readWrite)
                    case 2:
                        try? space.advise(address: address, length: count * 4096, advice: .dontNeed)
                    default:
                        try? space.advise(address: address, length: count * 4096, advice: .pageOut)
                    }
                    churned.wrappingAdd(1, ordering: .relaxed)
                }
                stop.store(true, ordering: .releasing)
            } else if index == 1 {
                while !stop.load(ordering: .acquiring) {
                    let page = base + (xorshift(&state) % UInt64(pages)) * 4096
                    _ = try? mirror.read(at: page)
                }
            } else {
                while !stop.load(ordering: .acquiring) {
                    let page = base + (xorshift(&state) % UInt64(pages)) * 4096
                    try? space.fault(at: page, access: xorshift(&state) % 2 == 0 ? .write : .read)
                }
            }
        }
        let audit = space.audit()
        let statistics = space.statistics
        space.teardown()
        mirror.detach()
        BenchmarkSupport.drainDeferredReclamation()
        print("operations: \(churned.load(ordering: .relaxed)), faults: \(statistics.faults), speculative aborts: \(statistics.speculativeAborts), VMA-lock fallbacks: \(statistics.vmaLockFallbacks)")
        print("stale entries after unmap/protect: \(violations.load(ordering: .relaxed))")
        print("audit: entries outside VMAs \(audit.entriesOutsideVMAs), exceeding protection \(audit.entriesExceedingProtection), dead tables reached \(audit.deadTablesReached)")
        print("after teardown: frames in use \(memory.framesInUse), swap slots in use \(memory.swap.slotsInUse), mirror translations \(mirror.count)")
        let failed = violations.load(ordering: .relaxed) != 0 || audit.entriesOutsideVMAs != 0
            || audit.entriesExceedingProtection != 0 || audit.deadTablesReached != 0 || memory.framesInUse != 0
            || memory.swap.slotsInUse != 0 || mirror.count != 0
        print(failed ? "FAILED" : "passed")
        if failed { throw ExitCode.failure }
    }
}
