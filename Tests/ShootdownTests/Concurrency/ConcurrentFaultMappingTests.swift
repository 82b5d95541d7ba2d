import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// Faulting threads against a thread that maps, unmaps and re-maps the same ranges.
///
/// Layout (pages of 4 KiB from `base`):
/// - a stable region that is never unmapped; each faulter owns some of its pages and checks that a
///   token it writes reads back (the churn next door splits and merges the stable VMA);
/// - a churn region right after it (merges with the stable VMA when mapped);
/// - a second churn region alone in its own 2 MiB, so unmapping it empties and frees its PTE table
///   while faulters race to refill it.
@Suite("ConcurrentFaultMapping")
struct ConcurrentFaultMappingTests {
    static let page = AddressSpace.pageSize
    static let base: UInt64 = 0x10_0000_0000
    static let stablePages: UInt64 = 16
    static let churnPages: UInt64 = 256
    static var stable: ClosedRange<UInt64> { base...(base + stablePages * page - 1) }
    /// The two churn regions `[start, end)`.
    static var churn: [(UInt64, UInt64)] {
        let adjacent = base + stablePages * page
        let alone = base + 4 * AddressSpace.hugePageSize
        return [(adjacent, adjacent + churnPages * page), (alone, alone + churnPages * page)]
    }

    @Test(arguments: AddressSpace.FaultPath.allCases)
    func faultsAgainstMapUnmap(path: AddressSpace.FaultPath) throws {
        let memory = PhysicalMemory(capacity: 1 << 14)
        let space = try AddressSpace(configuration: .init(faultPath: path), memory: memory)
        let page = Self.page
        try space.map(length: Self.stablePages * page, placement: .fixed(Self.base))
        for (start, end) in Self.churn { try space.map(length: end - start, placement: .fixed(start)) }

        let violations = ConcurrentViolations()
        let faulters = 3
        let faultIterations = ConcurrentHarness.iterations(60_000)
        let faultersLeft = ConcurrentCountdown(faulters)
        let segfaults = Atomic<Int>(0)
        let faultsDone = Atomic<Int>(0)
        let mapperOps = Atomic<Int>(0)

        let faulter: @Sendable (Int) -> Void = { index in
            var random = SplitMix64(spreading: UInt64(index) &+ 1)
            defer { faultersLeft.arrive() }
            // Stable pages owned by this faulter: index, index + faulters, ...
            let owned = stride(from: UInt64(index), to: Self.stablePages, by: faulters).map {
                Self.base + $0 * page
            }
            var last: [UInt64: UInt64] = [:]
            for iteration in 0..<faultIterations {
                let roll = random.below(100)
                if roll < 20 {
                    // Stable region: must always succeed and read back.
                    let address = owned[random.index(below: owned.count)]
                    let token = UInt64(index + 1) << 48 | UInt64(iteration + 1)
                    do {
                        if let expected = last[address], random.chance(50) {
                            let seen = try space.read(at: address)
                            if seen != expected {
                                violations.record("stable \(address.hex): read \(seen.hex), wrote \(expected.hex)")
                            }
                        }
                        try space.write(token, at: address)
                        last[address] = token
                        let seen = try space.read(at: address)
                        if seen != token {
                            violations.record("stable \(address.hex): read \(seen.hex) right after writing \(token.hex)")
                        }
                    } catch {
                        violations.record("stable \(address.hex): \(error)")
                    }
                    continue
                }
                let (start, end) = Self.churn[random.index(below: 2)]
                let pages = Int((end - start) / page)
                let slot: Int
                if roll < 60 {
                    // This faulter's share of the region (disjoint from the others').
                    let share = pages / faulters
                    slot = index * share + random.index(below: share)
                } else {
                    slot = random.index(below: pages)  // anywhere (overlapping)
                }
                let address = start + UInt64(slot) * page + random.below(page)
                do {
                    try space.fault(at: address, access: .write)
                    faultsDone.add(1, ordering: .relaxed)
                } catch MemoryError.segmentationFault {
                    segfaults.add(1, ordering: .relaxed)
                } catch {
                    violations.record("fault at \(address.hex) threw \(error), expected success or segmentationFault")
                }
            }
        }

        let mapper: @Sendable () -> Void = {
            var random = SplitMix64(spreading: 0xC0FFEE)
            var operations = 0
            while !faultersLeft.isDone && operations < 1_000_000 {
                operations += 1
                let (start, end) = Self.churn[random.index(below: 2)]
                let pages = Int((end - start) / page)
                let first = random.index(below: pages)
                let count = random.chance(20) ? pages - first : random.int(1...(pages - first))
                let low = start + UInt64(first) * page
                let high = low + UInt64(count) * page
                do {
                    switch random.below(5) {
                    case 0, 1:
                        try space.unmap(address: low, length: high - low)
                        ConcurrentPages.expectNoEntries(space, low, high, after: "unmap", violations)
                    case 2, 3:
                        try space.map(length: high - low, placement: .fixed(low))
                    default:
                        do {
                            try space.map(length: high - low, placement: .fixedNoReplace(low))
                        } catch MemoryError.alreadyExists {}
                    }
                } catch {
                    violations.record("mapper [\(low.hex), \(high.hex)): \(error)")
                }
            }
            mapperOps.store(operations, ordering: .relaxed)
        }

        let finished = ConcurrentHarness.run(
            "fault-map", (0..<faulters).map { index in { faulter(index) } } + [mapper])
        guard finished else { return }

        violations.expectNone("faults against map/unmap (\(path))")
        ConcurrentHarness.report("\(path): mapperOps=\(mapperOps.load(ordering: .relaxed)) faults=\(faultsDone.load(ordering: .relaxed)) segv=\(segfaults.load(ordering: .relaxed)) stats=\(space.statistics.nonZero)")
        #expect(mapperOps.load(ordering: .relaxed) > 0)
        #expect(faultsDone.load(ordering: .relaxed) + segfaults.load(ordering: .relaxed) > 0)
        let audit = space.audit()
        #expect(audit.entriesOutsideVMAs == 0)
        #expect(audit.deadTablesReached == 0 && audit.tablesInHoles == 0, "\(audit)")
        #expect(audit.entriesExceedingProtection == 0)
        #expect(audit.unmergedNeighbours == 0)
        // Write faults only (no zero page, no forks): one frame per present entry, none leaked.
        #expect(memory.framesInUse == audit.presentPages)

        space.teardown()
        RCU.barrier()
        #expect(memory.framesInUse == 0)
        #expect(memory.swap.slotsInUse == 0)
    }
}
