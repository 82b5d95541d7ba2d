import CInterop
import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// `PhysicalMemory.shard(blockOffset:)` (the speculative fault's shard, from the TLS block offset)
/// must name the shard
/// `ThreadSlot.current & (shardCount - 1)` names, for every attached thread: slot owners and the
/// overflow threads that share the last slot (more live threads than owned slots).
@Suite(.serialized)
struct SlotMappingTests {
    @Test func shardFromBlockOffsetMatchesSlotForOwnersAndOverflowThreads() {
        let threads = ThreadSlot.count + 16  // at least 17 overflow threads
        let arrived = Atomic<Int>(0)
        let release = Atomic<Bool>(false)
        let mismatches = Atomic<Int>(0)
        let overflow = Atomic<Int>(0)
        let unattachedZero = Atomic<Int>(0)
        var workers: [TestThread] = []
        for _ in 0..<threads {
            workers.append(TestThread("shard-check") {
                // Not attached yet: the offset is 0 (the shared block, last shard).
                if ThreadSlot.blockOffset == 0 { unattachedZero.add(1, ordering: .relaxed) }
                RCU.readLock()
                let offset = ThreadSlot.blockOffset
                let slot = ThreadSlot.current
                RCU.readUnlock()
                if PhysicalMemory.shard(blockOffset: offset) != slot & (PhysicalMemory.shardCount - 1) {
                    mismatches.add(1, ordering: .relaxed)
                }
                if slot == ThreadSlot.shared {
                    overflow.add(1, ordering: .relaxed)
                    if offset != 0 { mismatches.add(1, ordering: .relaxed) }
                } else if offset != (slot + 1) << ThreadSlot.blockShift {
                    mismatches.add(1, ordering: .relaxed)
                }
                arrived.add(1, ordering: .releasing)
                // Stay alive (keep the slot) until every thread has checked.
                while !release.load(ordering: .acquiring) { sched_yield() }
            })
        }
        _ = ConcurrentDontNeedTests.spin { arrived.load(ordering: .acquiring) == threads }
        release.store(true, ordering: .releasing)
        for worker in workers { worker.join("shard-check") }
        #expect(arrived.load(ordering: .relaxed) == threads)
        #expect(mismatches.load(ordering: .relaxed) == 0)
        #expect(overflow.load(ordering: .relaxed) >= 17, "overflow threads: \(overflow.load(ordering: .relaxed))")
        #expect(unattachedZero.load(ordering: .relaxed) == threads)
    }

    /// SlotCounters: one count from every slot owner and from overflow threads sums exactly.
    @Test func slotCountersSumOverOwnersAndSharedBlock() {
        let counters = SlotCounters(width: 128)
        let threads = ThreadSlot.count + 16
        let arrived = Atomic<Int>(0)
        let release = Atomic<Bool>(false)
        var workers: [TestThread] = []
        for _ in 0..<threads {
            workers.append(TestThread("counter") {
                RCU.readLock()
                RCU.readUnlock()
                for _ in 0..<1000 {
                    counters.increment(127)
                    counters.add(0, 2, blockOffset: ThreadSlot.blockOffset)
                }
                arrived.add(1, ordering: .releasing)
                while !release.load(ordering: .acquiring) { sched_yield() }
            })
        }
        _ = ConcurrentDontNeedTests.spin { arrived.load(ordering: .acquiring) == threads }
        release.store(true, ordering: .releasing)
        for worker in workers { worker.join("counter") }
        #expect(counters.sum(127) == Int64(threads * 1000))
        #expect(counters.sum(0) == Int64(threads * 2000))
        for index in 1..<127 { #expect(counters.sum(index) == 0) }
    }

    /// One fixed 1 KiB block: 128 counters fit, 129 trap at creation.
    @Test func slotCountersWiderThan128Trap() async {
        _ = SlotCounters(width: 128)
        await #expect(processExitsWith: .failure) { _ = SlotCounters(width: 129) }
        await #expect(processExitsWith: .success) { _ = SlotCounters(width: 128) }
    }
}
