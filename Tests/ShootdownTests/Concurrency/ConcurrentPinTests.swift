import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// Long-term pins under concurrent fork, migration, reclaim, page-out and munmap: while a range is
/// pinned none of its frames moves or is freed, and what the device writes through the pin is
/// what the CPU reads.
@Suite("ConcurrentPin")
struct ConcurrentPinTests {
    static let page = AddressSpace.pageSize
    /// Region A: always mapped; each pinner owns a slice of it.
    static let stablePages: UInt64 = 64
    /// Region B, right after A: unmapped and remapped under the pins.
    static let churnPages: UInt64 = 64
    static let base: UInt64 = 0x20_0000_0000 - 32 * page

    @Test func pinnedFramesStayPutAndDeviceWritesReachTheCPU() throws {
        let memory = PhysicalMemory(capacity: 1 << 14, swapSlots: 1 << 12)
        let space = try AddressSpace(memory: memory)
        let page = Self.page
        let base = Self.base
        let churnStart = base + Self.stablePages * page
        let end = churnStart + Self.churnPages * page
        try space.map(length: end - base, placement: .fixed(base))
        for (offset, address) in eachPage(base, end).enumerated() { try space.write(UInt64(offset + 1), at: address) }
        let violations = ConcurrentViolations()

        let pinners = 2
        let churners = 2
        let pinIterations = ConcurrentHarness.iterations(3_000)
        let churnIterations = ConcurrentHarness.iterations(1_500)
        let pinnersLeft = ConcurrentCountdown(pinners)
        let pinned = Atomic<Int>(0)
        let orphaned = Atomic<Int>(0)
        let slice = Self.stablePages / UInt64(pinners)

        let pinner: @Sendable (Int) -> Void = { index in
            var random = SplitMix64(spreading: 0x9199 &+ UInt64(index))
            defer { pinnersLeft.arrive() }
            let sliceStart = base + UInt64(index) * slice * page
            for iteration in 0..<pinIterations {
                // A range of this pinner's slice of A, sometimes reaching into B (which churns).
                let first = random.below(slice)
                let stable = UInt64(random.int(1...Int(min(8, slice - first))))
                let address = sliceStart + first * page
                let intoChurn = index == pinners - 1 && first + stable == slice && random.chance(50)
                let length = (stable + (intoChurn ? UInt64(random.int(1...8)) : 0)) * page
                let range: PinnedRange
                do {
                    range = try space.pin(address: address, length: length, write: true)
                } catch MemoryError.badAddress {
                    continue  // B's part is unmapped right now
                } catch {
                    violations.record("pinner \(index): pin [\(address.hex), +\(length.hex)) threw \(error)")
                    continue
                }
                pinned.add(range.pageCount, ordering: .relaxed)
                var frames: [UInt64] = []
                for page in eachPage(address, address + length) {
                    frames.append((try? range.frame(at: page)) ?? 0)
                }
                let token = UInt64(index + 1) << 56 | UInt64(iteration) << 8
                for (offset, page) in eachPage(address, address + length).enumerated() {
                    try? range.write(token | UInt64(offset), at: page)
                }
                // Let the churners act on the pinned pages for a while.
                for _ in 0..<random.int(0...20) { sched_yield() }
                for (offset, page) in eachPage(address, address + length).enumerated() {
                    let frame = frames[offset]
                    let written = token | UInt64(offset)
                    if memory.pinCount(frame) == 0 || memory.refcount(frame) == 0 {
                        violations.record("pinned frame \(frame) of \(page.hex) lost its pin or was freed")
                    }
                    if (try? range.read(at: page)) != written {
                        violations.record("pinned frame \(frame) of \(page.hex) lost the device's write")
                    }
                    if page < churnStart {
                        // A: never unmapped, so the CPU still maps the pinned frame and reads the
                        // device's write (nobody else writes this slice).
                        let entry = space.translate(page)
                        if entry?.number != frame {
                            violations.record("A page \(page.hex) moved from pinned frame \(frame) to \(String(describing: entry))")
                        }
                        let cpu = (try? space.read(at: page)) ?? 0
                        if cpu != written { violations.record("CPU read \(cpu.hex) at \(page.hex), device wrote \(written.hex)") }
                        // And the other way round.
                        try? space.write(written ^ 1, at: page)
                        if (try? range.read(at: page)) != written ^ 1 {
                            violations.record("device does not see the CPU's write at \(page.hex)")
                        }
                    } else if space.translate(page)?.number != frame {
                        orphaned.add(1, ordering: .relaxed)  // B was unmapped meanwhile: the frame lives on
                    }
                }
                try? space.unpin(range)
            }
        }

        let churner: @Sendable (Int) -> Void = { index in
            var random = SplitMix64(spreading: 0xF0F0 &+ UInt64(index))
            var operations = 0
            while operations < churnIterations || (!pinnersLeft.isDone && operations < 10 * churnIterations) {
                operations += 1
                do {
                    if index == 0 {
                        // Structure: munmap and remap B, fork (copies pinned pages), under the mmap
                        // write lock.
                        switch random.below(4) {
                        case 0:
                            let low = churnStart + random.below(Self.churnPages) * page
                            try space.unmap(address: low, length: UInt64(random.int(1...16)) * page)
                        case 1:
                            try space.map(length: Self.churnPages * page, placement: .fixed(churnStart))
                        default:
                            let child = try space.fork()
                            // The child's copies of pinned pages are its own: writing them leaves
                            // the parent (and the device) alone.
                            let address = base + random.below(Self.stablePages) * page
                            try? child.write(0xDEAD, at: address)
                            child.teardown()
                        }
                    } else {
                        // Pages: migration, reclaim, page-out, DONTNEED of B, aging, soft-dirty
                        // re-arming (write-protects pinned pages: the next CPU write must reuse the
                        // pinned frame).
                        let first = random.below(Self.stablePages + Self.churnPages)
                        let count = UInt64(random.int(1...Int(min(16, Self.stablePages + Self.churnPages - first))))
                        let low = base + first * page
                        switch random.below(6) {
                        case 5: try space.clearSoftDirty(address: low, length: count * page)
                        case 0: _ = try space.migrate(address: low, length: count * page)
                        case 1: _ = try space.reclaim(pages: Int(count))
                        case 2: try space.advise(address: low, length: count * page, advice: .pageOut)
                        case 3: _ = try space.age(address: low, length: count * page)
                        default:
                            if low >= churnStart { try space.advise(address: low, length: count * page, advice: .dontNeed) }
                        }
                    }
                } catch MemoryError.noMemory {
                    // over a hole in B
                } catch {
                    violations.record("churner \(index): \(error)")
                }
            }
        }

        var bodies: [@Sendable () -> Void] = []
        for index in 0..<pinners { bodies.append { pinner(index) } }
        for index in 0..<churners { bodies.append { churner(index) } }
        guard ConcurrentHarness.run("pin", bodies) else { return }

        violations.expectNone("pins under churn")
        ConcurrentHarness.report("pin: pinned=\(pinned.load(ordering: .relaxed)) orphaned=\(orphaned.load(ordering: .relaxed)) \(space.statistics.nonZero)")
        #expect(pinned.load(ordering: .relaxed) > 0)
        for page in eachPage(base, end) {
            if let frame = space.translate(page)?.number { #expect(memory.pinCount(frame) == 0) }
        }
        let audit = space.audit()
        #expect(audit.entriesOutsideVMAs == 0 && audit.entriesExceedingProtection == 0)
        #expect(audit.deadTablesReached == 0 && audit.tablesInHoles == 0, "\(audit)")
        space.teardown()
        RCU.barrier()
        #expect(memory.framesInUse == 0)
        #expect(memory.swap.slotsInUse == 0)
    }
}
