import CInterop
import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// A classic subscriber that sleeps in every blockable start whose range reaches `page` (a
/// mirror doing device work in its invalidation), until `stop` is set.
final class ReviewSlowStart: MMUNotifier, @unchecked Sendable {
    let page: UInt64
    let nanoseconds: UInt64
    init(page: UInt64, nanoseconds: UInt64) {
        self.page = page
        self.nanoseconds = nanoseconds
    }
    var callbacks: NotifierCallbacks { .invalidateRange }
    func invalidateRangeStart(_ range: InvalidationRange) -> Bool {
        if range.start <= page && page < range.end && range.isBlockable { cinterop_sleep_ns(nanoseconds) }
        return true
    }
    func invalidateRangeEnd(_ range: InvalidationRange) {}
}

/// Review of 2271cbf: `VMAEdit.touch` enters every VMA after an edit's first one `nested`, and a
/// nested entry skips writer priority. Every multi-VMA zap (MADV_DONTNEED/FREE/PAGEOUT/REMOVE over
/// a range that spans VMAs, migrate, the in-space hole-punch zaps) is such an edit, so the
/// starvation that `guardInstallationIsNotStarvedByZapsOfItsVMA` was written against comes back
/// for zaps whose range starts in the VMA before.
@Suite(.serialized)
struct ReviewNestedZapPriorityTests {
    static let page = AddressSpace.pageSize

    /// X = [base, base + 4 pages) read-only, B = [base + 4, base + 68 pages) read-write: two
    /// VMAs that cannot merge; B's pages written.
    static func twoVMAs() throws -> (PhysicalMemory, AddressSpace, UInt64, VMA) {
        let memory = PhysicalMemory(capacity: 4096, swapSlots: 64)
        let space = try AddressSpace(memory: memory)
        let page = Self.page
        let base = try space.map(length: 68 * page)
        for address in eachPage(base + 4 * page, base + 68 * page) { try space.write(1, at: address) }
        try space.protect(address: base, length: 4 * page, protection: .read)
        #expect(space.mappings().count == 2)
        let b = try #require(space.index.find(containing: base + 4 * page))
        return (memory, space, base, b)
    }

    /// Same shape as `guardInstallationIsNotStarvedByZapsOfItsVMA`, but the second zap's range
    /// starts one VMA lower: zap A is held inside B, the guard installation on B waits for it,
    /// and zap B2 (DONTNEED over X and part of B) must then wait for the installation. On
    /// spec-15 it enters B nested and finishes while the writer is still waiting.
    @Test func zapSpanningTwoVMAsGoesAheadOfAWaitingGuardInstallation() throws {
        let (memory, space, base, b) = try Self.twoVMAs()
        let page = Self.page
        let gate = ConcurrentZapGate(heldPage: base + 4 * page)
        try space.registerNotifier(gate)
        guard let zapA = ConcurrentDontNeedTests.heldZap(space, gate, base + 4 * page, 4 * page, "zap A") else { return }
        let guardDone = Atomic<Bool>(false)
        let installer = TestThread("guard-install") {
            try? space.advise(address: base + 40 * page, length: page, advice: .guardInstall)
            guardDone.store(true, ordering: .releasing)
        }
        guard ConcurrentDontNeedTests.spin(until: { b.exclusiveWaitersCount > 0 }) else {
            Issue.record("the guard installation never waited for zap A")
            gate.opened.store(true, ordering: .releasing)
            zapA.join("zap A")
            installer.join("guard install")
            return
        }
        let sawGuardAtZap = Atomic<Int>(-1)
        let zapB = TestThread("dontneed-spanning") {
            // X (first touch: no writer waits on X) and pages 8..11 of the mapping in B (nested).
            try? space.advise(address: base, length: 12 * page, advice: .dontNeed)
            sawGuardAtZap.store(guardDone.load(ordering: .acquiring) ? 1 : 0, ordering: .releasing)
        }
        let settled = ConcurrentDontNeedTests.spin {
            b.zapsWaitingForWriterCount > 0 || sawGuardAtZap.load(ordering: .acquiring) >= 0
        }
        #expect(settled, "zap B2 neither waited nor finished")
        let wentAhead = sawGuardAtZap.load(ordering: .acquiring) != -1
        #expect(!wentAhead, "a zap spanning X and B went into B ahead of the waiting guard installation")
        gate.opened.store(true, ordering: .releasing)
        guard zapA.join("zap A"), installer.join("guard install"), zapB.join("zap B2") else { return }
        #expect(space.translate(base + 40 * page)?.isGuard == true)
        ConcurrentDontNeedTests.finish(space, memory, gate)
    }

    /// The starvation itself: four threads keep DONTNEED-ing X and the first pages of B (each
    /// spends 200 µs in a blockable start on B, as a mirror would), and a guard installation on
    /// B waits for the zaps of B to drain. With priority it gets in at once; with the nested
    /// bypass the zaps overlap in B and the writer, sampling every 1 ms at most, does not get
    /// in while they run. The zappers give up after 5 s.
    @Test func guardInstallationIsStarvedByZapsSpanningTheVMABefore() throws {
        let (memory, space, base, b) = try Self.twoVMAs()
        _ = b
        let page = Self.page
        let slow = ReviewSlowStart(page: base + 4 * page, nanoseconds: 200_000)
        try space.registerNotifier(slow)
        let stop = Atomic<Bool>(false)
        let zaps = Atomic<Int>(0)
        let zappers = 4
        let left = ConcurrentCountdown(zappers)
        var threads: [TestThread] = []
        for index in 0..<zappers {
            threads.append(TestThread("zapper-\(index)") {
                defer { left.arrive() }
                while !stop.load(ordering: .relaxed) {
                    try? space.advise(address: base, length: 8 * page, advice: .dontNeed)
                    zaps.add(1, ordering: .relaxed)
                }
            })
        }
        // Let the stream start.
        _ = ConcurrentDontNeedTests.spin { zaps.load(ordering: .relaxed) > 100 }
        let guardDone = Atomic<Bool>(false)
        let zapsAtStart = zaps.load(ordering: .relaxed)
        let started = cinterop_monotonic_ns()
        let installer = TestThread("guard-install") {
            try? space.advise(address: base + 40 * page, length: page, advice: .guardInstall)
            guardDone.store(true, ordering: .releasing)
        }
        var waitedNs: UInt64 = 0
        while !guardDone.load(ordering: .acquiring) {
            waitedNs = cinterop_monotonic_ns() - started
            if waitedNs > 5_000_000_000 { break }
            usleep(1000)
        }
        let zapsWhileWaiting = zaps.load(ordering: .relaxed) - zapsAtStart
        let starved = !guardDone.load(ordering: .acquiring)
        stop.store(true, ordering: .relaxed)
        for thread in threads { thread.join("zapper") }
        installer.join("guard install")
        #expect(!starved, "guard installation on B still waiting after 5 s; \(zapsWhileWaiting) zaps of X+B went in meanwhile")
        #expect(space.translate(base + 40 * page)?.isGuard == true)
        space.unregisterNotifier(slow)
        space.teardown()
        RCU.barrier()
        #expect(memory.framesInUse == 0)
    }

    /// Control: the same stream with zaps of B alone (first touch, not nested) lets the
    /// installation in promptly (writer priority).
    @Test func guardInstallationIsNotStarvedByZapsOfBAlone() throws {
        let (memory, space, base, _) = try Self.twoVMAs()
        let page = Self.page
        let slow = ReviewSlowStart(page: base + 4 * page, nanoseconds: 200_000)
        try space.registerNotifier(slow)
        let stop = Atomic<Bool>(false)
        let zaps = Atomic<Int>(0)
        var threads: [TestThread] = []
        for index in 0..<4 {
            threads.append(TestThread("zapper-\(index)") {
                while !stop.load(ordering: .relaxed) {
                    try? space.advise(address: base + 4 * page, length: 4 * page, advice: .dontNeed)
                    zaps.add(1, ordering: .relaxed)
                }
            })
        }
        _ = ConcurrentDontNeedTests.spin { zaps.load(ordering: .relaxed) > 100 }
        let guardDone = Atomic<Bool>(false)
        let started = cinterop_monotonic_ns()
        let installer = TestThread("guard-install") {
            try? space.advise(address: base + 40 * page, length: page, advice: .guardInstall)
            guardDone.store(true, ordering: .releasing)
        }
        while !guardDone.load(ordering: .acquiring) && cinterop_monotonic_ns() - started < 5_000_000_000 { usleep(1000) }
        let done = guardDone.load(ordering: .acquiring)
        stop.store(true, ordering: .relaxed)
        for thread in threads { thread.join("zapper") }
        installer.join("guard install")
        #expect(done, "control: starved even without nesting")
        space.unregisterNotifier(slow)
        space.teardown()
        RCU.barrier()
        #expect(memory.framesInUse == 0)
    }

    /// For the ordered-nesting suggestion (an entry keeps writer priority when it is above every
    /// VMA the edit holds): a DONTNEED over A and B (in address order) held inside A, a hole punch
    /// in B held inside B, a guard installation waiting on each. Released, the DONTNEED waits for
    /// the writer on B (in order), the punch zaps A out of order without waiting for the writer
    /// on A; everything must finish.
    @Test func inOrderZapAndOutOfOrderPunchCrossingWithWaitingWritersFinish() throws {
        let (memory, space, a, b) = try ConcurrentGuardAndHolePunchTests.twoMappingsOfOneObject()
        let page = Self.page
        let base = ConcurrentGuardAndHolePunchTests.base
        let gateA = ConcurrentZapGate(heldPage: base)
        let gateB = ConcurrentZapGate(heldPage: base + 4 * page)
        try space.registerNotifier(gateA)
        try space.registerNotifier(gateB)
        let finished = Atomic<Int>(0)
        let zap = TestThread("dontneed-A-B") {
            try? space.advise(address: base, length: 8 * page, advice: .dontNeed)
            finished.add(1, ordering: .releasing)
        }
        guard ConcurrentDontNeedTests.spin(until: { gateA.entered.load(ordering: .acquiring) }) else {
            Issue.record("the DONTNEED never reached its zap of A")
            return
        }
        let punch = TestThread("remove-B") {
            try? space.advise(address: base + 4 * page, length: 4 * page, advice: .remove)
            finished.add(1, ordering: .releasing)
        }
        guard ConcurrentDontNeedTests.spin(until: { gateB.entered.load(ordering: .acquiring) }) else {
            Issue.record("the punch in B never reached its zap")
            return
        }
        let installA = TestThread("guard-install-A") {
            try? space.advise(address: base, length: 4 * page, advice: .guardInstall)
            finished.add(1, ordering: .releasing)
        }
        let installB = TestThread("guard-install-B") {
            try? space.advise(address: base + 4 * page, length: 4 * page, advice: .guardInstall)
            finished.add(1, ordering: .releasing)
        }
        guard ConcurrentDontNeedTests.spin(until: { a.exclusiveWaitersCount > 0 && b.exclusiveWaitersCount > 0 }) else {
            Issue.record("the guard installations never waited")
            return
        }
        gateA.opened.store(true, ordering: .releasing)
        gateB.opened.store(true, ordering: .releasing)
        let settled = ConcurrentDontNeedTests.spin {
            finished.load(ordering: .acquiring) == 4
                || (a.zapsWaitingForWriterCount > 0 && b.zapsWaitingForWriterCount > 0)
        }
        guard settled, finished.load(ordering: .acquiring) == 4 else {
            Issue.record("zaps wait for writers that wait for them: deadlock")
            return
        }
        guard zap.join("zap"), punch.join("punch"), installA.join("guard A"), installB.join("guard B") else { return }
        space.unregisterNotifier(gateA)
        ConcurrentDontNeedTests.finish(space, memory, gateB)
    }
}
