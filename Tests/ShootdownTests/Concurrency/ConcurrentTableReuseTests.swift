import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// Page-table blocks pass through per-slot caches (``TableAllocator``): writers map, fault and
/// unmap, so tables are allocated from their slots' caches (refilled from the shared list), retired
/// and freed after grace periods (on liburcu's thread, into its cache or the shared list), and
/// allocated again by other threads; lockless walkers keep reaching them. The invariant: a table a
/// walker reached inside an RCU read section is neither freed nor reallocated before that section
/// ends. Each block's descriptor counts its allocations (``TableBlock/generation``, kept with
/// internal checks): a walker reads the count and the state on reaching the leaf table and again
/// after reading its entries, still inside the section; a table freed or reused early (a cache
/// handing out a block before its grace period, or a block in two caches) changes one of them.
@Suite("ConcurrentTableReuse")
struct ConcurrentTableReuseTests {
    static let writers = 2
    static let walkers = 2
    /// Each writer's region: 4 MiB (two PTE tables, and its own PMD table: regions 1 GiB apart).
    static let regionLength: UInt64 = 4 << 20
    static func regionBase(_ writer: Int) -> UInt64 { 0x40_0000_0000 + UInt64(writer) << 30 }

    @Test("a table reached inside a read section is not freed or reallocated before the section ends")
    func tablesAreNotReusedWhileReachable() throws {
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 1 << 14))
        let violations = ConcurrentViolations()
        let rounds = ConcurrentHarness.iterations(400, minimum: 20)
        let writersDone = ConcurrentCountdown(Self.writers)
        nonisolated(unsafe) let reachedCount = UnsafeMutablePointer<Atomic<Int>>.allocate(capacity: 1)
        reachedCount.initialize(to: Atomic(0))
        defer { reachedCount.deallocate() }

        var bodies: [@Sendable () -> Void] = (0..<Self.writers).map { writer in
            {
                let base = Self.regionBase(writer)
                var random = SplitMix64(spreading: 0x7AB1E &+ UInt64(writer))
                for _ in 0..<rounds {
                    do {
                        try space.map(length: Self.regionLength, placement: .fixed(base))
                        // A few pages in each 2 MiB: both PTE tables and the PMD table get allocated.
                        for _ in 0..<8 {
                            let page = random.next() % (Self.regionLength >> 12)
                            try space.write(page &+ 1, at: base &+ page << 12)
                        }
                        try space.unmap(address: base, length: Self.regionLength)
                    } catch {
                        violations.record("writer \(writer): \(error)")
                        break
                    }
                }
                writersDone.arrive()
            }
        }
        for walker in 0..<Self.walkers {
            bodies.append {
                var random = SplitMix64(spreading: 0x3A1C &+ UInt64(walker))
                while !writersDone.isDone {
                    let writer = Int(random.next() % UInt64(Self.writers))
                    let address = Self.regionBase(writer) &+ (random.next() % (Self.regionLength >> 12)) << 12
                    let problem: String? = RCU.withReadSection {
                        guard let leaf = space.pageTable.lookup(address), !leaf.isHuge else { return nil }
                        let table = leaf.table
                        // Relaxed: the allocator's writes to a block it hands out again are what
                        // this detects; a correct allocator never races with this section.
                        let generation = table.generation.pointee.load(ordering: .relaxed)
                        let state = table.state.pointee.load(ordering: .relaxed)
                        if state == TableState.free { return "reached a free table at \(address)" }
                        var sum: UInt64 = 0
                        for index in 0..<TableBlock.entries { sum &+= table.load(index).rawValue }
                        _ = sum
                        if table.generation.pointee.load(ordering: .relaxed) != generation {
                            return "table of \(address) reallocated while reachable"
                        }
                        if table.state.pointee.load(ordering: .relaxed) == TableState.free {
                            return "table of \(address) freed while reachable"
                        }
                        reachedCount.pointee.wrappingAdd(1, ordering: .relaxed)
                        return nil
                    }
                    if let problem { violations.record(problem) }
                }
            }
        }
        guard ConcurrentHarness.run("table-reuse", bodies) else { return }
        violations.expectNone("tables reused while reachable")
        ConcurrentHarness.report("leaf tables reached: \(reachedCount.pointee.load(ordering: .relaxed))")
        RCU.barrier()
        let audit = space.audit()
        #expect(audit.deadTablesReached == 0 && audit.tablesInHoles == 0, "\(audit)")
        space.teardown()
    }

    /// The calling thread's cache never holds more than its capacity, and never hands a block out
    /// twice.
    @Test func slotCacheRefillsInBatchesAndStaysBounded() {
        let allocator = TableAllocator.shared
        var blocks: [TableBlock] = []
        for _ in 0..<(3 * TableAllocator.cacheCapacity) {
            guard let block = allocator.allocate() else {
                Issue.record("no table block")
                return
            }
            #expect(allocator.cachedBlocks <= TableAllocator.cacheCapacity)
            blocks.append(block)
        }
        for block in blocks {
            allocator.free(block)  // never published: no grace period needed
            #expect(allocator.cachedBlocks <= TableAllocator.cacheCapacity)
        }
        #expect(Set(blocks.map(\.address)).count == blocks.count, "a block handed out twice")
    }
}
