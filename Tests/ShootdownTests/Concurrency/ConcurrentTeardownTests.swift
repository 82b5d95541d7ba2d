import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// `teardown()` while other threads still fault, access, invalidate and mirror the space: every
/// operation that starts after `teardown()` returned fails cleanly (`segmentationFault` for faults
/// and accesses, `addressSpaceDead` for everything else, the mirror included), nothing touches freed
/// tables (AddressSanitizer runs these too), the mirror ends empty, and every frame and swap slot
/// comes back.
@Suite("ConcurrentTeardown")
struct ConcurrentTeardownTests {
    static let page = AddressSpace.pageSize
    static let pages: UInt64 = 64

    @Test(arguments: AddressSpace.FaultPath.allCases)
    func teardownWhileInUse(path: AddressSpace.FaultPath) throws {
        let rounds = ConcurrentHarness.iterations(12, minimum: 2)
        for round in 0..<rounds {
            try Self.round(round, path)
        }
    }

    /// What every operation worker `index` starts after `teardown()` has returned must throw.
    static func errorAfterTeardown(worker index: Int) -> MemoryError {
        switch index {
        case 0, 1: .segmentationFault  // faults and accesses
        case 2: .addressSpaceDead  // madvise, mprotect, migrate, munmap + mmap
        // The mirror: its table was emptied by the `release` invalidation (and refuses commits
        // since), so a read or populate walks `faultRange`, which checks liveness under the mmap
        // read lock before looking at any VMA, hence never `badAddress`.
        default: .addressSpaceDead
        }
    }

    static func round(_ round: Int, _ path: AddressSpace.FaultPath) throws {
        let memory = PhysicalMemory(capacity: 1 << 12, swapSlots: 1 << 10)
        let space = try AddressSpace(configuration: .init(faultPath: path), memory: memory)
        let base: UInt64 = 0x90_0000_0000 - 16 * page  // straddles a 2 MiB boundary
        let end = base + pages * page
        try space.map(length: end - base, placement: .fixed(base))
        let mirror = try SoftwareMirror(space: space, start: base, length: end - base)
        let violations = ConcurrentViolations()
        let workers = 4
        // Each worker signals once it has done some work, so teardown lands mid-run; after it
        // sees the space dead, it goes on for a bounded number of operations.
        let warmedUp = DispatchSemaphore(value: 0)
        let afterDeath = ConcurrentHarness.iterations(200)
        let liveOperations = Atomic<Int>(0)
        /// Set once `teardown()` has returned: operations that start later must all fail.
        let tornDown = Atomic<Bool>(false)

        let worker: @Sendable (Int) -> Void = { index in
            var random = SplitMix64(spreading: UInt64(round) << 8 | UInt64(index))
            var operations = 0
            var deadOperations = 0
            while deadOperations < afterDeath && operations < 1_000_000 {
                operations += 1
                if operations == 50 { warmedUp.signal() }
                let wasDead = tornDown.load(ordering: .acquiring)
                if wasDead { deadOperations += 1 }
                let first = random.below(pages)
                let count = UInt64(random.int(1...Int(min(8, pages - first))))
                let address = base + first * page
                do {
                    switch index {
                    case 0, 1:
                        switch random.below(4) {
                        case 0: try space.fault(at: address, access: .write)
                        case 1: try space.write(UInt64(operations), at: address)
                        case 2: _ = try space.read(at: address)
                        default: try space.fault(at: address, access: .read)
                        }
                    case 2:
                        switch random.below(5) {
                        case 0: try space.advise(address: address, length: count * page, advice: .dontNeed)
                        case 1: try space.advise(address: address, length: count * page, advice: .pageOut)
                        case 2:
                            try space.protect(address: address, length: count * page, protection: .read)
                            try space.protect(address: address, length: count * page, protection: .readWrite)
                        case 3: _ = try space.migrate(address: address, length: count * page)
                        default:
                            try space.unmap(address: address, length: count * page)
                            try space.map(length: count * page, placement: .fixed(address))
                        }
                    default:
                        if random.chance(50) {
                            _ = try mirror.read(at: address)
                        } else {
                            try mirror.populate(address: address, length: count * page, write: random.chance(50))
                        }
                    }
                    if wasDead {
                        violations.record("worker \(index): operation \(operations) succeeded after teardown returned")
                    }
                    if !wasDead { liveOperations.add(1, ordering: .relaxed) }
                } catch let error as MemoryError where wasDead {
                    if error != Self.errorAfterTeardown(worker: index) {
                        violations.record("worker \(index): operation \(operations) after teardown threw \(error)")
                    }
                } catch MemoryError.addressSpaceDead {
                } catch MemoryError.segmentationFault {
                    // A fault or access: unmapped, read-only at the moment, or the space died.
                } catch MemoryError.noMemory {
                    // advise/protect/migrate over the momentary hole of unmap + map.
                } catch MemoryError.badAddress {
                    // The mirror met a hole or a read-only window.
                } catch {
                    violations.record("worker \(index): \(error)")
                }
            }
            if operations < 50 { warmedUp.signal() }
        }

        let killer: @Sendable () -> Void = {
            for _ in 0..<workers { warmedUp.wait() }
            space.teardown()
            tornDown.store(true, ordering: .releasing)
        }

        var bodies: [@Sendable () -> Void] = [killer]
        for index in 0..<workers { bodies.append { worker(index) } }
        guard ConcurrentHarness.run("teardown-\(round)", bodies) else { return }
        violations.expectNone("teardown while in use (round \(round))")
        #expect(liveOperations.load(ordering: .relaxed) > 0)
        #expect(space.isTornDown)
        #expect(space.translate(base) == nil)
        #expect(mirror.count == 0)
        mirror.detach()
        RCU.barrier()
        #expect(memory.framesInUse == 0)
        #expect(memory.swap.slotsInUse == 0)
        #expect(throws: MemoryError.addressSpaceDead) { try space.map(length: page) }
        #expect(throws: MemoryError.segmentationFault) { try space.fault(at: base, access: .read) }
    }
}
