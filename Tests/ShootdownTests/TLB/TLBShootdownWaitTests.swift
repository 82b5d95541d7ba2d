import CInterop
import Dispatch
import Foundation
import Synchronization
import Testing

@testable import Shootdown

private let p = AddressSpace.pageSize
private let base: UInt64 = 0x5000_0000

/// Runs `body` at the next TLB hit of one given thread. Other tests' threads may reach the point
/// first (it is process-wide): the hook re-arms itself for them and does nothing.
private final class TLBHitHook: @unchecked Sendable {
    private let target: pthread_t
    private let body: () -> Void
    let ran = SharedFlag()

    init(target: pthread_t, _ body: @escaping () -> Void) {
        self.target = target
        self.body = body
    }

    func arm() {
        TestHooks.arm(.tlbHitBeforeAccess) { [self] in
            if pthread_equal(pthread_self(), target) != 0 {
                body()
                ran.set()
            } else {
                arm()
            }
        }
    }
}

/// The two halves of the guarantee a shootdown gives, each made deterministic with the interleaving
/// point inside a TLB hit: an access already in flight when mprotect starts has finished (its
/// store landed) when mprotect returns; a thread outside any access ("lazy") is not waited for and
/// catches up at its next access.
@Suite struct TLBShootdownWaitTests {
    @Test func anAccessInFlightLandsBeforeProtectReturns() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 0)
        let space = try AddressSpace(configuration: AddressSpace.Configuration(tlb: .perThread), memory: memory)
        try space.map(length: 4 * p, placement: .fixed(base))
        try space.write(1, at: base)
        let frame = try #require(space.translate(base)?.frame)
        let protectReturned = SharedFlag()
        let contentWhenProtectReturned = SharedValue()
        let writerFault = SharedFlag()
        let protector = ConcurrentLocked<TestThread?>(nil)
        let writer = TestThread("tlb-writer") {
            do { try space.write(1, at: base) } catch { writerFault.set() }  // fills this thread's TLB
            let hook = TLBHitHook(target: pthread_self()) {
                // Inside the access, the TLB entry found and writable: start mprotect elsewhere and
                // go on once it is waiting for this access (or, were it not to wait, has returned).
                protector.withLock { thread in
                    thread = TestThread("tlb-protect") {
                        try? space.protect(address: base, length: p, protection: .read)
                        contentWhenProtectReturned.store(memory.token(of: frame))
                        protectReturned.set()
                    }
                }
                while space.statistics[.tlbShootdownWaits] == 0 && !protectReturned.isSet { cinterop_cpu_relax() }
            }
            hook.arm()
            var token: UInt64 = 2
            while !hook.ran.isSet && token < 1_000_000 {  // other tests' threads may race for the hook once
                do { try space.write(token, at: base) } catch { writerFault.set() }
                token += 1
            }
            TestHooks.disarm(.tlbHitBeforeAccess)
        }
        writer.join("writer")
        _ = protector.withLock { $0 }?.join("protect")
        #expect(!writerFault.isSet)
        #expect(protectReturned.isSet)
        let landed = memory.token(of: frame)
        #expect(landed >= 2)
        #expect(contentWhenProtectReturned.value == landed,
                "the in-flight store landed after mprotect returned (\(contentWhenProtectReturned.value) then \(landed))")
        #expect(space.statistics[.tlbShootdownWaits] >= 1)
        #expect(throws: MemoryError.segmentationFault) { try space.write(9, at: base) }
        space.teardown()
    }

    @Test func lazyThreadsAreNotWaitedForAndCatchUp() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 0)
        let space = try AddressSpace(configuration: AddressSpace.Configuration(tlb: .perThread), memory: memory)
        try space.map(length: 4 * p, placement: .fixed(base))
        let filled = DispatchSemaphore(value: 0)
        let changed = DispatchSemaphore(value: 0)
        let refused = SharedFlag()
        let lazy = TestThread("tlb-lazy") {
            try? space.write(1, at: base)
            filled.signal()
            changed.wait()  // parked outside any access, holding a writable entry
            do { try space.write(2, at: base) } catch { refused.set() }
        }
        filled.wait()
        let before = space.statistics
        try space.protect(address: base, length: p, protection: .read)
        let stats = space.statistics.since(before)
        #expect(stats[.tlbShootdowns] == 1 && stats[.tlbShootdownWaits] == 0, "\(stats.nonZero)")
        changed.signal()
        lazy.join("lazy")
        #expect(refused.isSet, "a lazy thread wrote through its stale entry after mprotect returned")
        #expect(try space.read(at: base) == 1)
        space.teardown()
    }
}
