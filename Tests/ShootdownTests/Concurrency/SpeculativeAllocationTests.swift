import CInterop
import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// A first version of the speculative fault's inline allocation took frames only from the
/// calling thread's own free list and aborted when it was empty (found by an outside review). A
/// thread whose list is empty (any thread that has not allocated from this memory yet, or whose
/// frames went elsewhere) then took the classic path, which needs the mmap lock: while an munmap
/// holds the mmap write lock (here: in a notifier start that blocks), such a write fault waited
/// for it, where the speculative path refills the list locklessly
/// (`ConcurrentSleepableRCUTests.blockedNotifierDelaysNeitherFaultsNorReclamation` failed too).
@Suite(.serialized)
struct SpeculativeAllocationTests {
    @Test func writeFaultOnAFreshThreadDoesNotWaitForABlockedMunmap() throws {
        let memory = PhysicalMemory(capacity: 1 << 12)
        let space = try AddressSpace(memory: memory)
        let page = AddressSpace.pageSize
        let victim = try space.map(length: 16 * page, placement: .fixed(0x40_0000_0000))
        let stable = try space.map(length: 16 * page, placement: .fixed(0x40_0000_0000 + (1 << 30)))
        try space.write(7, at: stable)  // the PTE table of `stable` exists; this thread's list refilled
        #expect(memory.framesFree > 1000)
        let blocker = ConcurrentBlockingNotifier(blockOn: victim)
        try space.registerNotifier(blocker)
        let unmapper = TestThread("blocked-unmap") { try? space.unmap(address: victim, length: 16 * page) }
        blocker.entered.wait()  // the munmap holds the mmap write lock inside its start

        let outcome = Atomic<UInt8>(0xFF)
        let direct = TestThread("speculative-probe") {
            outcome.store(space.speculativeFault(stable + 2 * page, .write).rawValue, ordering: .releasing)
        }
        direct.join("probe")
        let faulter = TestThread("fresh-faulter") { try? space.write(9, at: stable + page) }
        let finishedWhileBlocked = faulter.join(within: 3)
        blocker.release.signal()
        unmapper.join("unmap")
        if !finishedWhileBlocked { faulter.join("faulter") }
        #expect(
            outcome.load(ordering: .acquiring) == SpeculativeOutcome.handled.rawValue,
            "speculative write fault on a fresh thread: outcome \(outcome.load(ordering: .acquiring)) (abortNoMemory = \(SpeculativeOutcome.abortNoMemory.rawValue)) with \(memory.framesFree) frames free")
        #expect(finishedWhileBlocked, "a write fault on a thread with an empty free list waited for the mmap write lock")
        #expect(try space.read(at: stable + page) == 9)
        space.unregisterNotifier(blocker)
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    /// Memory at capacity (no never-used block left), frames freed by one thread and faulted in by
    /// another, one at a time: the faulting thread's own list is empty at every fault, so every
    /// speculative write fault aborts (`abortNoMemory`) and the classic path, under the mmap
    /// lock, steals the one frame. Before a02ddbc the speculative path stole it itself.
    @Test func crossThreadFreesAtCapacitySendEveryFaultToTheClassicPath() throws {
        let memory = PhysicalMemory(capacity: 1024)
        let space = try AddressSpace(memory: memory)
        let page = AddressSpace.pageSize
        let filler = try space.map(length: 1024 * page)
        for address in eachPage(filler, filler + 1024 * page) { try space.write(1, at: address) }
        #expect(memory.framesFree == 0)
        let target = try space.map(length: 64 * page)
        let rounds = 63
        let freed = DispatchSemaphore(value: 0)
        let faulted = DispatchSemaphore(value: 0)
        let failures = Atomic<Int>(0)
        let faulter = TestThread("faulter") {
            // A read fault creates the PTE table (zero page, no frame).
            if (try? space.read(at: target)) != 0 { failures.add(1, ordering: .relaxed) }
            faulted.signal()
            for index in 1...rounds {
                freed.wait()
                do { try space.write(UInt64(index), at: target + UInt64(index) * page) } catch {
                    failures.add(1, ordering: .relaxed)
                }
                faulted.signal()
            }
        }
        faulted.wait()
        let before = space.statistics
        for index in 1...rounds {
            try space.advise(address: filler + UInt64(index) * page, length: page, advice: .dontNeed)
            freed.signal()
            faulted.wait()
        }
        faulter.join("faulter")
        let after = space.statistics
        let speculative = after[.speculativeFaults] - before[.speculativeFaults]
        let noMemory = after[.speculativeAbortNoMemory] - before[.speculativeAbortNoMemory]
        #expect(failures.load(ordering: .relaxed) == 0)
        #expect(
            speculative == Int64(rounds),
            "\(rounds) write faults with a frame free: \(speculative) speculative, \(noMemory) aborted for no memory")
        space.teardown()
        #expect(memory.framesInUse == 0)
    }
}
