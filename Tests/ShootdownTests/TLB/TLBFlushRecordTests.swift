import Foundation
import Synchronization
import Testing

@testable import Shootdown

private let p = AddressSpace.pageSize
private let base: UInt64 = 0x6000_0000

/// An outside review's finding on the software TLBs' flush record (docs/tlb.md). The test failed on
/// the engine as reviewed: a store to an unmapped page landed in a frame another mapping reused.
@Suite struct TLBFlushRecordTests {
    /// The flush record named its generation by 23 bits only, and an initiator stored
    /// its record *after* its bump with nothing that stops it from being overtaken: an initiator
    /// that is delayed between the two (preempted) while 2^23 - 1 other shootdowns happen stores
    /// a record whose 23 bits equal those of the newest generation. A slot exactly one generation
    /// behind then takes that stale record for the newest one and flushes the stale initiator's
    /// range instead of the newest change's: the translation the newest change removed (here a
    /// munmap) survives in its TLB, and the thread keeps loading and storing a frame that was
    /// freed and reused by another mapping. docs/tlb.md argues the bits cannot wrap "while a
    /// catch-up reads it", but the record can be written late by its initiator, which nobody waits
    /// for.
    ///
    /// Interleaving (one thread plays every role; the closure runs at the new interleaving point
    /// between the bump and the record store of initiator X):
    /// 1. X bumps the generation to g0 and stalls before storing record(g0, Q).
    /// 2. 2^23 - 1 other shootdowns (of Q) bring the generation to G = g0 + 2^23 - 1.
    /// 3. The thread catches up to G and fills a writable entry for P (a write, then a hit).
    /// 4. munmap(P): its shootdown bumps to G + 1 and records (G + 1, P); the thread is outside any
    ///    access, so it is not waited for (correct: it is lazy). P's frame is freed; another thread
    ///    maps R, which reuses it, and stores 0xBBBB (this thread makes no access until step 6).
    /// 5. X resumes and stores record(g0, Q): g0 and G + 1 agree in their low 23 bits.
    /// 6. The thread's next access at P is exactly one generation behind, reads X's record as the
    ///    record of G + 1, flushes Q only, and hits P's stale entry.
    ///
    /// Expected: the store to P and the load from P are segmentation faults and R keeps 0xBBBB.
    /// Takes about 2^23 direct shootdowns of an otherwise idle space (a few seconds in debug).
    @Test func aDelayedFlushRecordAliasedTheNewestGenerationAndLostItsFlush() throws {
        let memory = PhysicalMemory(capacity: 64, swapSlots: 0)
        let space = try AddressSpace(configuration: AddressSpace.Configuration(tlb: .perThread), memory: memory)
        #expect(space.tlb != nil)
        let pageP = base
        let pageQ = base + 64 * p
        try space.map(length: p, placement: .fixed(pageP))

        let outcome = ConcurrentLocked<[String]>([])
        // A thread of its own: it gets a TLB slot, and its slot is the only one in the mask (so
        // the many direct shootdowns below skip membarrier).
        let thread = TestThread("tlb-record-alias") {
            func note(_ text: String) { outcome.withLock { $0.append(text) } }
            guard let tlb = space.tlb else { return note("no TLB") }
            do {
                try space.write(0xAAAA, at: pageP)
                _ = try space.read(at: pageP)
                let span: UInt64 = 1 << 23  // the bits the old record kept
                let ran = SharedFlag()
                let target = pthread_self()
                let hook = RecordHook(target: target) {
                    // X has bumped to g0 and not stored its record yet.
                    let g0 = tlb.currentGeneration
                    while tlb.currentGeneration < g0 + span - 1 {
                        tlb.shootDown(pageQ, pageQ + p, counters: space.counters)
                    }
                    do {
                        try space.write(0xAAAA, at: pageP)  // catch up to G (full flush), miss, fill writable
                        _ = try space.read(at: pageP)  // a hit
                        let caughtUp = tlb.currentGeneration
                        try space.unmap(address: pageP, length: p)
                        if tlb.currentGeneration != caughtUp + 1 {
                            note("setup: munmap bumped \(tlb.currentGeneration - caughtUp) times, not once")
                        }
                        if (tlb.currentGeneration - g0) % span != 0 { note("setup: generations do not alias") }
                        // R is mapped and written by another thread: an access of this thread
                        // now would catch up with the correct record (G + 1, P) and flush P.
                        let helper = TestThread("tlb-record-alias-R") {
                            do {
                                try space.map(length: p, placement: .fixed(base + 128 * p))
                                try space.write(0xBBBB, at: base + 128 * p)
                            } catch {
                                outcome.withLock { $0.append("setup: R: \(error)") }
                            }
                        }
                        _ = helper.join("mapping R")
                    } catch {
                        note("setup: \(error)")
                    }
                    ran.set()
                }
                hook.arm()
                tlb.shootDown(pageQ, pageQ + p, counters: space.counters)  // initiator X
                TestHooks.disarm(.tlbShootdownBeforeRecord)
                guard ran.isSet else {
                    note("setup: the interleaving point was not reached")
                    return
                }
                do {
                    try space.write(0xDEAD, at: pageP)
                    note("a store to the unmapped page P succeeded (through a stale TLB entry)")
                } catch {}
                let content = try space.read(at: base + 128 * p)
                if content != 0xBBBB {
                    note("the new mapping R now holds \(String(content, radix: 16)) instead of bbbb: a stale store landed in its frame")
                }
                do {
                    let stale = try space.read(at: pageP)
                    note("a load from the unmapped page P returned \(String(stale, radix: 16)) (through a stale TLB entry)")
                } catch {}
            } catch {
                note("unexpected error: \(error)")
            }
        }
        #expect(thread.join("record alias scenario"))
        let notes = outcome.withLock { $0 }
        #expect(notes.isEmpty, "\(notes)")
        space.teardown()
    }
}

/// Runs `body` when one given thread reaches the point between a shootdown's bump and its record
/// store. Other threads reaching it first (the point is process-wide) re-arm it and go on.
private final class RecordHook: @unchecked Sendable {
    private let target: pthread_t
    private let body: () -> Void

    init(target: pthread_t, _ body: @escaping () -> Void) {
        self.target = target
        self.body = body
    }

    func arm() {
        TestHooks.arm(.tlbShootdownBeforeRecord) { [self] in
            if pthread_equal(pthread_self(), target) != 0 { body() } else { arm() }
        }
    }
}
