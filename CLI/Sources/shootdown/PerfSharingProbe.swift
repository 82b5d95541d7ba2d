@_spi(Benchmarking) import Shootdown
import ArgumentParser
import Foundation

// `shootdown perf-probe NAME --sharing`: the probe's operation on two threads, each on its own data,
// for perf/sharing (run under valgrind's lackey tool, which prints the data address of every
// memory access). Thread A runs its operations, then parks; only then does thread B start and run
// the same number of operations on its data. Nothing overlaps, so nothing depends on timing.
//
// A parks instead of exiting because a thread's slot (per-slot frame caches, counters, SRCU counts)
// is released when it exits and the next thread claims the lowest free one: B would inherit A's
// slot, and the lines of per-slot data would look shared although two CPUs running at the same time
// never share them.
//
// The measured operations of each thread lie between two getppid system calls (the markers: the
// engine never makes that call, and valgrind's --trace-syscalls names the calling thread). Before
// its first marker a thread attaches to the engine (claims its slot, registers with liburcu) and
// does any per-thread preparation, so the one-time costs of a new thread are not counted. After
// both threads, the probe prints `operations N` (per thread) and the process's memory map as
// `map LINE` lines, from which perf/sharing turns run-time instruction addresses into addresses in
// each object's file.
//
// What "its own data" is, per probe (N = --operations; unless given 1024, and for the zap probes
// 16384 pages as in the single-thread probes, since an unmap's fixed costs are spread over its pages):
//   fault-*                   two mappings of one space, N pages each, 2 MiB aligned, 2 MiB or more
//                             apart (separate VMAs, separate page-table pages); each thread
//                             write-faults its own.
//   zap-16-subscribers        the same two mappings, faulted in beforehand; each thread unmaps its
//                             own (16 no-op subscribers on the space).
//   zap-huge                  two mappings of N rounded up to 512 pages, faulted as huge pages;
//                             each thread unmaps its own.
//   notifier-0/16-subscribers invalidation pairs over two disjoint windows of 1024 slots.
//   notifier-10000-intervals  2000 interval notifiers (not 10000: under lackey, inserting 10000
//                             costs minutes, and which lines an invalidation RMWs does not depend
//                             on the count); thread A invalidates among the first 1000, B among
//                             the last 1000.
//   vma-lookup-10000          2000 mappings (not 10000, as above); A looks up addresses in the
//                             first 1000, B in the last 1000.
//   fork-cow                  two parent spaces on one PhysicalMemory, N pages each; each thread
//                             forks its own parent and writes every page of the child.
//   softdirty-cycle           two mappings of one space; each thread clears soft-dirty on its own
//                             and writes every page again.
//   mirror-populate           two mappings of one space, one SoftwareMirror each; each thread
//                             populates its own mirror.
//   tlb-hit                   one space with per-thread TLBs, two 64-page mappings; each thread
//                             loads from its own (its TLB filled before the first marker).
extension PerfProbe {
    /// The two threads' work: `prepare(thread)` before the first marker, `measure(thread)` between
    /// the markers; `finish()` on the main thread after both.
    struct SharingWork: @unchecked Sendable {
        var prepare: (Int) throws -> Void = { _ in }
        var measure: (Int) throws -> Void
        var finish: () throws -> Void = {}
    }

    /// Operations per thread unless `--operations` says otherwise.
    static func sharingOperations(_ probe: Probe) -> Int {
        switch probe {
        case .zap16, .zapHuge: 16_384
        default: 1024
        }
    }

    /// Runs the sharing variant of `probe`: a small warm-up without markers, then the measured run.
    static func runSharing(_ probe: Probe, operations: Int) throws {
        // Warm-up: Swift metadata caches and the first arena mappings, as in the single-thread run.
        try runPair(try sharingWork(probe, operations: 64, small: true), markers: false)
        try runPair(try sharingWork(probe, operations: operations, small: false), markers: true)
        print("operations \(operations)")
        let maps = FileHandle(forReadingAtPath: "/proc/self/maps")?.readDataToEndOfFile() ?? Data()
        for line in String(decoding: maps, as: UTF8.self).split(separator: "\n") { print("map \(line)") }
    }

    /// Thread A: prepare, marker, measure, marker, then park until B is done. Thread B (started
    /// only once A is parked): the same. Errors are rethrown on the calling thread.
    static func runPair(_ work: SharingWork, markers: Bool) throws {
        final class Outcome: @unchecked Sendable { var error: (any Error)? }
        let outcome = Outcome()
        let done = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let exited = DispatchSemaphore(value: 0)
        for index in 0..<2 {
            let thread = Thread {
                // Claims the thread's slot and registers it with liburcu outside the markers.
                BenchmarkSupport.synchronizeRCU()
                do {
                    try work.prepare(index)
                    if markers { sharingMarker() }
                    try work.measure(index)
                    if markers { sharingMarker() }
                } catch {
                    outcome.error = error
                }
                done.signal()
                // A keeps its slot while B runs (see above).
                if index == 0 { release.wait() }
                exited.signal()
            }
            thread.stackSize = 1 << 20
            thread.start()
            done.wait()
            if let error = outcome.error { release.signal(); throw error }
        }
        release.signal()
        exited.wait()
        exited.wait()
        try work.finish()
    }

    /// Two mappings of `pages` pages each, 2 MiB aligned, with a gap of the same rounded size
    /// between them: two VMAs that cannot merge and share no page-table page.
    static func twoMappings(_ space: AddressSpace, pages: Int) throws -> [UInt64] {
        let chunk = (pages + 511) / 512 * 512
        let base = try alignedRegion(space, pages: 3 * chunk)
        let length = UInt64(chunk) * 4096
        try space.unmap(address: base + length, length: length)
        if chunk > pages {
            let tail = UInt64(chunk - pages) * 4096
            try space.unmap(address: base + UInt64(pages) * 4096, length: tail)
            try space.unmap(address: base + 2 * length + UInt64(pages) * 4096, length: tail)
        }
        return [base, base + 2 * length]
    }

    static func sharingWork(_ probe: Probe, operations pages: Int, small: Bool) throws -> SharingWork {
        let memory = PhysicalMemory(capacity: 1 << 16, swapSlots: 256)
        let length = UInt64(pages) * 4096
        switch probe {
        case .faultSpeculative, .faultClassic, .faultVMALock:
            let path: AddressSpace.FaultPath =
                probe == .faultSpeculative ? .speculative : (probe == .faultClassic ? .mmapLock : .perVMALock)
            let space = try AddressSpace(configuration: AddressSpace.Configuration(faultPath: path), memory: memory)
            let bases = try twoMappings(space, pages: pages)
            return SharingWork(measure: { try faultPages(space, bases[$0], pages) })
        case .zap16:
            let space = try AddressSpace(memory: memory)
            let subscribers = try NoOpSubscribers(16, on: space)
            let bases = try twoMappings(space, pages: pages)
            for base in bases { try faultPages(space, base, pages) }
            return SharingWork(
                measure: { try space.unmap(address: bases[$0], length: length) },
                finish: { subscribers.detach() })
        case .zapHuge:
            let space = try AddressSpace(memory: memory)
            let huge = (pages + 511) / 512
            let bases = try twoMappings(space, pages: huge * 512)
            for base in bases {
                try space.advise(address: base, length: UInt64(huge) << 21, advice: .hugePage)
                for index in 0..<huge { try space.fault(at: base + UInt64(index) << 21, access: .write) }
            }
            return SharingWork(measure: { try space.unmap(address: bases[$0], length: UInt64(huge) << 21) })
        case .notifier0, .notifier16:
            let space = try AddressSpace(memory: memory)
            let subscribers = try NoOpSubscribers(probe == .notifier16 ? 16 : 0, on: space)
            let windows: [UInt64] = [0x1000_0000, 0x2000_0000]
            return SharingWork(
                measure: { invalidatePairs(space, pages, base: windows[$0], stride: 8192, slots: 1024) },
                finish: { subscribers.detach() })
        case .notifierIntervals:
            let space = try AddressSpace(memory: memory)
            let handler = MinimalIntervalHandler()
            let count = small ? 256 : 2000
            var notifiers: [IntervalNotifier] = []
            for index in 0..<count {
                notifiers.append(try space.insertIntervalNotifier(
                    start: 0x1000_0000 + UInt64(index) * 8192, length: 4096, handler: handler))
            }
            let half = count / 2
            let kept = notifiers
            return SharingWork(
                measure: {
                    invalidatePairs(space, pages, base: 0x1000_0000 + UInt64($0 * half) * 8192, stride: 8192, slots: half)
                },
                finish: { for notifier in kept { notifier.remove() } })
        case .vmaLookup:
            let space = try AddressSpace(memory: memory)
            let count = small ? 256 : 2000
            for index in 0..<count {
                try space.map(length: 4096, placement: .fixed(0x1000_0000 + UInt64(index) * 8192))
            }
            let half = count / 2
            // Drawn before the markers, into buffers (indexing an array of arrays would retain the
            // inner one between the markers).
            let addresses: [UnsafeMutableBufferPointer<UInt64>] = (0..<2).map { thread in
                let buffer = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: pages)
                var state = lookupSeed
                for index in 0..<pages {
                    buffer[index] = nextLookupAddress(
                        &state, base: 0x1000_0000 + UInt64(thread * half) * 8192, stride: 8192, slots: half)
                }
                return buffer
            }
            return SharingWork(
                measure: { thread in
                    precondition(lookupMappings(space, UnsafeBufferPointer(addresses[thread])) == pages)
                },
                finish: { for buffer in addresses { buffer.deallocate() } })
        case .forkCopyOnWrite:
            let parents = try (0..<2).map { _ in try AddressSpace(memory: memory) }
            var bases: [UInt64] = []
            for parent in parents {
                let base = try parent.map(length: length)
                try writePages(parent, base, pages, token: 1)
                bases.append(base)
            }
            return SharingWork(measure: { thread in
                let child = try parents[thread].fork()
                try writePages(child, bases[thread], pages, token: 7)
            })
        case .softDirty:
            let space = try AddressSpace(memory: memory)
            let bases = try twoMappings(space, pages: pages)
            for base in bases { try writePages(space, base, pages, token: 1) }
            return SharingWork(measure: { thread in
                try space.clearSoftDirty(address: bases[thread], length: length)
                try writePages(space, bases[thread], pages, token: 2)
            })
        case .mirrorFault:
            let space = try AddressSpace(memory: memory)
            let bases = try twoMappings(space, pages: pages)
            let mirrors = try bases.map { try SoftwareMirror(space: space, start: $0, length: length) }
            return SharingWork(
                measure: { try mirrors[$0].populate(address: bases[$0], length: length, write: true) },
                // A mirror holds its space weakly: the space lives until the end.
                finish: { for mirror in mirrors { mirror.detach() }; withExtendedLifetime(space) {} })
        case .tlbHit:
            let space = try AddressSpace(configuration: AddressSpace.Configuration(tlb: .perThread), memory: memory)
            let working = 64
            let bases = try twoMappings(space, pages: working)
            for base in bases { try writePages(space, base, working, token: 1) }
            return SharingWork(
                // A thread's first access to a page walks and fills its TLB: twice, as the
                // single-thread probe does.
                prepare: { thread in
                    _ = try readSequential(space, bases[thread], pages: working, working)
                    _ = try readSequential(space, bases[thread], pages: working, working)
                },
                measure: { thread in
                    let sum = try readSequential(space, bases[thread], pages: working, pages)
                    let full = UInt64(pages / working) * UInt64(working * (working + 1) / 2)
                    let rest = UInt64((pages % working) * (pages % working + 1) / 2)
                    precondition(sum == full + rest)
                },
                finish: { space.teardown() })
        }
    }
}

/// The marker perf/sharing finds in valgrind's system-call trace: one getppid call.
@inline(never)
func sharingMarker() {
    _ = getppid()
}
