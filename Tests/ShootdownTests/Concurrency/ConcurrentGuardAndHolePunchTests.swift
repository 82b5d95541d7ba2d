import CInterop
import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// Guard installation and MADV_REMOVE both run under the mmap read lock and hold VMAs: the guard
/// installation a VMA exclusively (it sets the VMA's `maybeGuard` flag), the hole punch the
/// shared zap section of the VMA it was called on and, to unmap the punched pages from the other
/// mappings of the object, the zap sections of those too. Two mappings of one object in one
/// space (a shared mapping and its `mremap` duplicate) let the two cross.
@Suite(.serialized)
struct ConcurrentGuardAndHolePunchTests {
    static let page = AddressSpace.pageSize
    static let base: UInt64 = 0x4000_0000

    /// A space with a 4-page shared mapping at `base` (A, every page written) and its duplicate
    /// right above it (B, the same object pages): two VMAs, which cannot merge.
    static func twoMappingsOfOneObject() throws -> (PhysicalMemory, AddressSpace, VMA, VMA) {
        let memory = PhysicalMemory(capacity: 4096, swapSlots: 64)
        let space = try AddressSpace(memory: memory)
        let page = Self.page
        try space.map(length: 4 * page, placement: .fixed(base), options: .shared)
        for index in 0..<4 { try space.write(UInt64(index + 1), at: base + UInt64(index) * page) }
        _ = try space.remap(
            address: base, oldLength: 0, newLength: 4 * page, flags: [.mayMove, .fixed], newAddress: base + 4 * page)
        let a = try #require(space.index.find(containing: base))
        let b = try #require(space.index.find(containing: base + 4 * page))
        #expect(a !== b && a.sharedObject === b.sharedObject)
        return (memory, space, a, b)
    }

    /// The guard installation over A and B kept A exclusively until it was done with B, and waited
    /// for B's zaps while holding it. A hole punch in B, inside B's zap section, then zaps A (the
    /// other mapping of the punched pages) and waits for A: each waited for the other for good.
    /// Here the punch is held inside B's zap (a subscriber's start) until the installation waits;
    /// if it waits for B, A must be free at that moment. (Before the fix A was still held: the
    /// test records that and leaves both threads parked rather than let them deadlock.)
    @Test func guardInstallOverTwoMappingsOfAnObjectDeadlockedWithAHolePunchInTheSecond() throws {
        let (memory, space, a, b) = try Self.twoMappingsOfOneObject()
        let page = Self.page
        let base = Self.base
        let gate = ConcurrentZapGate(heldPage: base + 4 * page)
        try space.registerNotifier(gate)
        let punch = TestThread("remove-B") {
            try? space.advise(address: base + 4 * page, length: 4 * page, advice: .remove)
        }
        guard ConcurrentDontNeedTests.spin(until: { gate.entered.load(ordering: .acquiring) }) else {
            Issue.record("the hole punch never reached its zap of B")
            return
        }
        let installer = TestThread("guard-install-A-B") {
            try? space.advise(address: base, length: 8 * page, advice: .guardInstall)
        }
        // The installation waits: for A, if the punch already entered A's zap section (it enters
        // every section it needs up front, in address order), or for B after it finished A.
        // (Never blocking on a VMA the installation holds: that is the bug this test looks for.)
        var waitsForB = false
        let waits = ConcurrentDontNeedTests.spin {
            waitsForB = b.exclusiveWaitersIfUnlocked > 0
            return waitsForB || a.exclusiveWaitersIfUnlocked > 0
        }
        guard waits else {
            Issue.record("the guard installation never waited for the hole punch")
            return
        }
        // Waiting for B's zap, it must not hold A, which the punch may still have to zap.
        if waitsForB {
            guard a.tryLockExclusively() else {
                Issue.record("the guard installation holds A while it waits for B's zaps: the hole punch in B deadlocks on A")
                return  // the two threads stay parked (gate closed); the space is left alone
            }
            a.unlockExclusively()
        }
        gate.opened.store(true, ordering: .releasing)
        guard punch.join("remove"), installer.join("guard install") else { return }
        // Every page of both mappings ends as a guard marker: B's were punched, then guarded; A's
        // were guarded, and the punch's zap of A kept the markers.
        for index in 0..<8 {
            #expect(space.translate(base + UInt64(index) * page)?.isGuard == true, "page \(index)")
        }
        ConcurrentDontNeedTests.finish(space, memory, gate)
    }

    /// Two hole punches, one in A and one in B, each held inside its own zap; then a guard
    /// installation on A alone waits for the punch in A, and one on B alone for the punch in B.
    /// Released, each punch zaps the other mapping. The punch in B used to enter A's zap section
    /// only then, from inside B's, and a zap yields to a writer waiting on the VMA: punch B waited
    /// for installer A, which waited for punch A to leave A, which waited (entering B) for
    /// installer B, which waited for punch B to leave B. A punch now enters every section it needs
    /// up front, in address order, so a punch inside a section never waits to enter a lower one.
    /// (Before the fix both punches were seen waiting for the writers: the test records that and
    /// leaves the four threads parked.)
    @Test func holePunchesInTwoMappingsOfAnObjectDeadlockedThroughWaitingGuardInstallations() throws {
        let page = Self.page
        try Self.expectCrossingWithWaitingWritersFinishes(
            first: ("remove A", 0, 4 * page, .remove), second: ("remove B", 4 * page, 4 * page, .remove))
    }

    /// In a fresh `twoMappingsOfOneObject` space: starts `first` (an advice over a range given by
    /// its offset from `base` and its length) and holds it inside its zap of A's first page, then
    /// `second`, held inside its zap of B's first page; then a guard installation on A alone and
    /// one on B alone, and waits until both wait. Released, all four must finish, and every page
    /// of both mappings ends as a guard marker. If both VMAs instead have a zap waiting for their
    /// waiting writer, that is the ring of waits: recorded, and the four threads stay parked (the
    /// space is left alone) instead of hanging the test.
    static func expectCrossingWithWaitingWritersFinishes(
        first: (name: String, offset: UInt64, length: UInt64, advice: AddressSpace.Advice),
        second: (name: String, offset: UInt64, length: UInt64, advice: AddressSpace.Advice),
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let (memory, space, a, b) = try twoMappingsOfOneObject()
        let gates = [ConcurrentZapGate(heldPage: base), ConcurrentZapGate(heldPage: base + 4 * page)]
        for gate in gates { try space.registerNotifier(gate) }
        let finished = Atomic<Int>(0)
        var threads: [(String, TestThread)] = []
        for (operation, gate) in zip([first, second], gates) {
            threads.append((operation.name, TestThread(operation.name) {
                try? space.advise(address: base + operation.offset, length: operation.length, advice: operation.advice)
                finished.add(1, ordering: .releasing)
            }))
            guard ConcurrentDontNeedTests.spin(until: { gate.entered.load(ordering: .acquiring) }) else {
                Issue.record("\(operation.name) never reached its held zap", sourceLocation: sourceLocation)
                return
            }
        }
        for (name, offset) in [("guard A", UInt64(0)), ("guard B", 4 * page)] {
            threads.append((name, TestThread(name) {
                try? space.advise(address: base + offset, length: 4 * page, advice: .guardInstall)
                finished.add(1, ordering: .releasing)
            }))
        }
        guard ConcurrentDontNeedTests.spin(until: { a.exclusiveWaitersCount > 0 && b.exclusiveWaitersCount > 0 }) else {
            Issue.record("the guard installations never waited", sourceLocation: sourceLocation)
            return
        }
        for gate in gates { gate.opened.store(true, ordering: .releasing) }
        let settled = ConcurrentDontNeedTests.spin {
            finished.load(ordering: .acquiring) == 4
                || (a.zapsWaitingForWriterCount > 0 && b.zapsWaitingForWriterCount > 0)
        }
        guard settled, finished.load(ordering: .acquiring) == 4 else {
            Issue.record("zaps wait for guard installations that wait for them: deadlock", sourceLocation: sourceLocation)
            return  // the four threads stay parked; the space is left alone
        }
        for (name, thread) in threads { guard thread.join(name, sourceLocation: sourceLocation) else { return } }
        for index in 0..<8 {
            #expect(space.translate(base + UInt64(index) * page)?.isGuard == true, "page \(index)", sourceLocation: sourceLocation)
        }
        space.unregisterNotifier(gates[0])
        ConcurrentDontNeedTests.finish(space, memory, gates[1], sourceLocation: sourceLocation)
    }
}
