import Testing

@testable import Shootdown

private let p = NotifierTestConstants.page
private let base = NotifierTestConstants.base

/// Drops a scope without ending it (its deinit must trap).
private func dropWithoutEnding(_ scope: consuming InvalidationScope) {}

/// Start and end are paired by construction: the scope is non-copyable, `end()` consumes it, and
/// dropping it without `end()` traps.
@Suite struct InvalidationScopePairingTests {
    @Test func droppingAScopeWithoutEndTraps() async {
        await #expect(processExitsWith: .failure) {
            let space = try! AddressSpace(memory: PhysicalMemory(capacity: 512, swapSlots: 8))
            let scope = space.beginInvalidation(0x10000, 0x11000, .clear)
            dropWithoutEnding(scope)
        }
    }

    @Test func theSameStepsWithEndExitCleanly() async {
        // Control for the exit tests above: the trap comes from the dropped scope, nothing else.
        await #expect(processExitsWith: .success) {
            let space = try! AddressSpace(memory: PhysicalMemory(capacity: 512, swapSlots: 8))
            let scope = space.beginInvalidation(0x10000, 0x11000, .clear)
            scope.end()
        }
    }

    @Test func droppingAScopeWithSubscribersTrapsBeforeAnyEnd() async {
        await #expect(processExitsWith: .failure) {
            let log = NotifierCallLog()
            let space = try! AddressSpace(memory: PhysicalMemory(capacity: 512, swapSlots: 8))
            try! space.registerNotifier(RecordingNotifier("rec", log: log))
            let scope = space.beginInvalidation(0x10000, 0x11000, .unmap)
            dropWithoutEnding(scope)
        }
    }

    @Test func endCallsEachEndOnceWithTheRangeTheScopeBeganWith() throws {
        let log = NotifierCallLog()
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 512, swapSlots: 8))
        let first = RecordingNotifier("first", callbacks: .invalidateRange, log: log)
        let startOnly = RecordingNotifier("startOnly", callbacks: [.invalidateRangeStart], log: log)
        let endOnly = RecordingNotifier("endOnly", callbacks: [.invalidateRangeEnd], log: log)
        for notifier in [first, startOnly, endOnly] { try space.registerNotifier(notifier) }
        let owner = InvalidationOwner(rawValue: 7)
        let scope = space.beginInvalidation(base, base + 4 * p, .migrate, owner: owner)
        let range = InvalidationRange(space: space.id, start: base, end: base + 4 * p, event: .migrate, owner: owner)
        #expect(log.all == [.start("first", range), .start("startOnly", range)])
        scope.end()
        #expect(log.all == [
            .start("first", range), .start("startOnly", range), .end("first", range), .end("endOnly", range),
        ])
        #expect(space.statistics[.invalidationsMigrate] == 1)
    }

    @Test func scopesWithoutSubscribersEndSilently() throws {
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 512, swapSlots: 8))
        let scope = space.beginInvalidation(base, base + p, .exclusive)
        #expect(scope.subscriptions == nil)
        scope.end()
        #expect(space.statistics[.invalidationsExclusive] == 1)
    }
}
