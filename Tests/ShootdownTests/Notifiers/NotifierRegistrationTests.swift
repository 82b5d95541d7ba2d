import Synchronization
import Testing

@testable import Shootdown

private let p = NotifierTestConstants.page
private let base = NotifierTestConstants.base

@Suite struct NotifierRegistrationTests {
    @Test func doubleRegistrationIsRefused() throws {
        let log = NotifierCallLog()
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 512, swapSlots: 8))
        let notifier = RecordingNotifier("rec", log: log)
        try space.registerNotifier(notifier)
        #expect(throws: MemoryError.invalidArgument) { try space.registerNotifier(notifier) }
        #expect(space.notifiers.count == 1)
        try space.map(length: 4 * p, placement: .fixed(base))
        try space.unmap(address: base, length: 4 * p)
        #expect(log.startRanges(of: "rec").count == 1)  // called once, not once per attempt
    }

    @Test func unregisterReturnsFalseForUnknownSubscribers() throws {
        let log = NotifierCallLog()
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 512, swapSlots: 8))
        let known = RecordingNotifier("known", log: log)
        let unknown = RecordingNotifier("unknown", log: log)
        #expect(!space.unregisterNotifier(unknown))  // no subscriptions at all yet
        try space.registerNotifier(known)
        #expect(!space.unregisterNotifier(unknown))
        #expect(space.unregisterNotifier(known))
        #expect(!space.unregisterNotifier(known))
        #expect(log.calls(of: "unknown").isEmpty)
        #expect(log.calls(of: "known") == [.release("known", space: space.id)])  // release on unregister, once
    }

    @Test func noCallbacksAfterUnregister() throws {
        let log = NotifierCallLog()
        let memory = PhysicalMemory(capacity: 4096, swapSlots: 64)
        let space = try AddressSpace(memory: memory)
        let notifier = RecordingNotifier(
            "rec", callbacks: [.invalidateRange, .young, .release], log: log)
        try space.registerNotifier(notifier)
        try space.map(length: 8 * p, placement: .fixed(base))
        for index in 0..<8 { try space.write(1, at: base + UInt64(index) * p) }
        try space.advise(address: base, length: p, advice: .dontNeed)
        #expect(log.startRanges(of: "rec").count == 1)
        #expect(space.unregisterNotifier(notifier))
        log.drain()
        #expect(space.notifiers.isEmpty)

        _ = try space.age(address: base, length: 8 * p)
        _ = space.testYoung(at: base + p)
        try space.protect(address: base, length: 8 * p, protection: .read)
        let child = try space.fork()
        try space.advise(address: base, length: 2 * p, advice: .dontNeed)
        _ = try space.reap()
        try space.unmap(address: base, length: 8 * p)
        space.teardown()
        child.teardown()
        #expect(log.all == [])
    }

    @Test func unregisterWhileInvalidationsRunStopsCallbacksWhenItReturns() throws {
        let log = NotifierCallLog()
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 8192, swapSlots: 64))
        try space.map(length: 64 * p, placement: .fixed(base))
        let stop = SharedFlag()
        let rounds = SharedValue()
        let churn = TestThread {
            var round: UInt64 = 0
            while !stop.isSet {
                let page = base + (round % 64) * p
                try? space.write(round, at: page)
                try? space.advise(address: page, length: p, advice: .dontNeed)
                round += 1
                rounds.increment()
            }
        }
        for round in 0..<50 {
            let notifier = RecordingNotifier("rec\(round)", callbacks: .invalidateRange, log: log)
            try space.registerNotifier(notifier)
            // Wait until it has seen something, so registration overlaps live invalidations.
            #expect(spinUntil { !log.calls(of: "rec\(round)").isEmpty })
            #expect(space.unregisterNotifier(notifier))
            let seen = log.calls(of: "rec\(round)").count
            // Let the churn run a few more invalidations: none may reach the subscriber.
            let now = rounds.value
            #expect(spinUntil { rounds.value >= now + 3 })
            #expect(log.calls(of: "rec\(round)").count == seen)
            log.drain()
        }
        stop.set()
        churn.join()
        for round in 0..<50 { #expect(log.calls(of: "rec\(round)").isEmpty) }
    }

    @Test func zeroSubscribersCostNothingAndSeeNothing() throws {
        let memory = PhysicalMemory(capacity: 4096, swapSlots: 64)
        let space = try AddressSpace(memory: memory)
        #expect(space.notifiers.isEmpty)
        #expect(space.subscriptionsPointer == nil)
        #expect(space.intervalNotifierCount == 0)
        try space.map(length: 8 * p, placement: .fixed(base))
        for index in 0..<8 { try space.write(1, at: base + UInt64(index) * p) }
        try space.protect(address: base, length: 4 * p, protection: .read)
        let child = try space.fork()
        try space.write(2, at: base + 5 * p)
        _ = try space.reclaim(pages: 2)
        try space.unmap(address: base, length: 8 * p)
        #expect(space.subscriptionsPointer == nil)  // the list was never allocated
        #expect(space.notifiers.isEmpty)
        #expect(space.statistics[.invalidationsUnmap] >= 1)  // invalidations still counted
        child.teardown()
        space.teardown()
        #expect(memory.framesInUse == 0)
    }
}
