import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// Huge mappings under concurrency: writers keep storing tokens into their own pages of a
/// huge-page-allowed region (through the lockless access model) and read them back, while a
/// churner collapses the region into 2 MiB mappings, splits them again (mprotect of part of a
/// block, `MADV_NOHUGEPAGE` on part of it), migrates pages and faults.
///
/// Checks: no write is ever lost (each page reads back the last token its writer stored, across
/// collapses, splits and migrations); right after an mprotect returns, no writable entry remains
/// in its range; at the end the audit is clean and every frame comes back at teardown.
@Suite("ConcurrentHugePages")
struct ConcurrentHugePageTests {
    static let page = AddressSpace.pageSize
    static let huge = AddressSpace.hugePageSize
    static let blocks: UInt64 = 2
    static let base: UInt64 = 0x70_0000_0000  // 2 MiB aligned
    static let writers = 2

    @Test(arguments: AddressSpace.FaultPath.allCases)
    func writesSurviveCollapseAndSplit(path: AddressSpace.FaultPath) throws {
        let memory = PhysicalMemory(capacity: 1 << 14)
        let space = try AddressSpace(configuration: .init(faultPath: path), memory: memory)
        let end = Self.base + Self.blocks * Self.huge
        try space.map(length: end - Self.base, placement: .fixed(Self.base), options: [.hugePage])
        let pagesPerBlock = Int(Self.huge / Self.page)
        // Writer w owns every page whose index ≡ w (mod writers) among the first 64 of each block.
        let owned: [[UInt64]] = (0..<Self.writers).map { writer in
            (0..<Int(Self.blocks)).flatMap { block in
                stride(from: writer, to: 64, by: Self.writers).map {
                    Self.base + UInt64(block * pagesPerBlock + $0) * Self.page
                }
            }
        }
        for pages in owned { for address in pages { try space.write(1, at: address) } }

        let violations = ConcurrentViolations()
        let writeIterations = ConcurrentHarness.iterations(60_000)
        let churnIterations = ConcurrentHarness.iterations(1_500)
        let writersLeft = ConcurrentCountdown(Self.writers)
        let collapsed = Atomic<Int>(0)

        let writer: @Sendable (Int) -> Void = { index in
            var random = SplitMix64(spreading: 0x4A_0000 &+ UInt64(index))
            defer { writersLeft.arrive() }
            var last = [UInt64: UInt64]()
            for address in owned[index] { last[address] = 1 }
            for iteration in 0..<writeIterations {
                let address = owned[index][random.index(below: owned[index].count)]
                let token = UInt64(index + 1) << 48 | UInt64(iteration + 2)
                do {
                    if random.chance(30) {
                        let seen = try space.read(at: address)
                        if seen != last[address] {
                            violations.record("page \(address.hex): read \(seen.hex), last wrote \(last[address]!.hex)")
                        }
                        continue
                    }
                    do {
                        try space.write(token, at: address)
                    } catch MemoryError.segmentationFault {
                        continue  // inside the churner's read-only window: nothing written
                    }
                    last[address] = token
                    let seen = try space.read(at: address)
                    if seen != token {
                        violations.record("page \(address.hex): read \(seen.hex) right after writing \(token.hex)")
                    }
                } catch {
                    violations.record("writer \(index) at \(address.hex): \(error)")
                }
            }
        }

        let churner: @Sendable () -> Void = {
            var random = SplitMix64(spreading: 0x4B)
            var operations = 0
            while operations < churnIterations || !writersLeft.isDone {
                operations += 1
                if operations > 1_000_000 { break }
                let block = Self.base + random.below(Self.blocks) * Self.huge
                let first = UInt64(random.index(below: pagesPerBlock - 1))
                let count = UInt64(random.int(1...min(96, pagesPerBlock - Int(first))))
                let low = block + first * Self.page
                let high = low + count * Self.page
                do {
                    switch random.below(10) {
                    case 0..<4:
                        // Fill the block's holes so it can collapse, then collapse it.
                        try space.advise(address: block, length: Self.huge, advice: .populateRead)
                        collapsed.add(try space.collapse(address: block, length: Self.huge), ordering: .relaxed)
                    case 4, 5:
                        // Part of a block read-only (splits the huge mapping), then writable again.
                        try space.protect(address: low, length: high - low, protection: .read)
                        ConcurrentPages.expectProtected(space, low, high, .read, after: "protect(read)", violations)
                        try space.protect(address: low, length: high - low, protection: .readWrite)
                    case 6:
                        try space.advise(address: low, length: high - low, advice: .noHugePage)
                        try space.advise(address: Self.base, length: end - Self.base, advice: .hugePage)
                    case 7:
                        _ = try space.migrate(address: low, length: high - low)
                    default:
                        // Faults that may install a huge mapping in an empty block part.
                        try space.fault(at: low, access: random.chance(50) ? .write : .read)
                    }
                } catch {
                    violations.record("churner on [\(low.hex), \(high.hex)): \(error)")
                }
            }
        }

        var bodies: [@Sendable () -> Void] = []
        for index in 0..<Self.writers { bodies.append { writer(index) } }
        bodies.append(churner)
        guard ConcurrentHarness.run("huge", bodies) else { return }

        violations.expectNone("huge pages")
        ConcurrentHarness.report("huge: collapsed=\(collapsed.load(ordering: .relaxed)) \(space.statistics.nonZero)")
        let audit = space.audit()
        #expect(audit.entriesOutsideVMAs == 0)
        #expect(audit.entriesExceedingProtection == 0)
        #expect(audit.deadTablesReached == 0 && audit.tablesInHoles == 0, "\(audit)")
        space.teardown()
        RCU.barrier()
        #expect(memory.framesInUse == 0)
    }
}
