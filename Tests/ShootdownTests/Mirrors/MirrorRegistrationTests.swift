import Synchronization
import Testing

@testable import Shootdown

private let p = AddressSpace.pageSize

/// A minimal registration cache, the shape an RDMA driver builds on interval notifiers: a table of
/// page → frame behind one lock that the handler also takes.
private final class RegistrationCache: IntervalNotifierHandler, Sendable {
    let table = Mutex<[UInt64: UInt64]>([:])

    func invalidate(_ notifier: IntervalNotifier, range: InvalidationRange, currentSequence: UInt64) -> Bool {
        table.withLock { table in
            notifier.setSequence(currentSequence)
            table = table.filter { !(range.start..<range.end).contains($0.key) }
        }
        return true
    }

    func register(_ space: AddressSpace, _ notifier: IntervalNotifier, _ start: UInt64, _ end: UInt64, write: Bool)
        throws(MemoryError) -> MirrorOutcome
    {
        try space.mirror(address: start, length: end - start, write: write, notifier: notifier) { pages, sequence in
            table.withLock { table -> MirrorCommit in
                if notifier.readRetry(sequence) { return .retry }
                for page in pages { table[page.address] = page.frame }
                return .committed
            }
        }
    }
}

/// Registration is linear in the range: faults that the registration itself causes (copy-on-write
/// breaks invalidate the very range being registered) cost one retry, not one per page.
@Suite struct MirrorRegistrationTests {
    @Test func aWriteRegistrationAfterForkRetriesOnceNotOncePerPage() throws {
        let pages: UInt64 = 16_384
        let memory = PhysicalMemory(capacity: 3 * Int(pages) + 4096, swapSlots: 8)
        let space = try AddressSpace(memory: memory)
        let base = try space.map(length: pages * p)
        try space.advise(address: base, length: pages * p, advice: .populateWrite)
        let child = try space.fork()  // every page is now shared copy-on-write
        let cache = RegistrationCache()
        let notifier = try space.insertIntervalNotifier(start: base, length: pages * p, handler: cache)

        let outcome = try cache.register(space, notifier, base, base + pages * p, write: true)

        guard case .committed(let retries) = outcome else {
            Issue.record("registration ended \(outcome)")
            return
        }
        #expect(retries <= 1, "self-inflicted collisions must cost one retry, not one per page")
        #expect(space.statistics[.copyOnWriteFaults] == Int64(pages))  // each page copied once
        #expect(cache.table.withLock { $0.count } == Int(pages))
        for page in [base, base + (pages / 2) * p, base + (pages - 1) * p] {
            #expect(cache.table.withLock { $0[page] } == space.translate(page)?.number)
            #expect(space.translate(page)?.isWritable == true)
        }
        notifier.remove()
        child.teardown()
        space.teardown()
        #expect(memory.framesInUse == 0)
    }
}
