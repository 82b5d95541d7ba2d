import Testing

@testable import Shootdown

private let p = NotifierTestConstants.page
private let base = NotifierTestConstants.base

/// Aging: `age` test-and-clears accessed bits and OR-combines subscribers' answers; `testYoung`
/// clears nothing and stops at the first subscriber that says yes.
@Suite struct AgingTests {
    private func makeSpace() throws -> AddressSpace {
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 2048, swapSlots: 64))
        try space.map(length: 16 * p, placement: .fixed(base))
        for index in 0..<8 { try space.write(UInt64(index) + 1, at: pageAddress(index)) }
        return space
    }

    @Test func ageCountsAndClearsYoungPages() throws {
        let space = try makeSpace()
        #expect(try space.age(address: base, length: 16 * p) == 8)  // pages 8..<16 are not present
        #expect(try space.age(address: base, length: 16 * p) == 0)
        for index in 0..<8 { #expect(space.translate(pageAddress(index))?.isAccessed == false) }
        _ = try space.read(at: pageAddress(1))
        _ = try space.read(at: pageAddress(6))
        try space.write(9, at: pageAddress(3))
        #expect(space.testYoung(at: pageAddress(1)))
        #expect(!space.testYoung(at: pageAddress(2)))
        #expect(try space.age(address: base, length: 4 * p) == 2)  // only the range asked
        #expect(try space.age(address: base, length: 16 * p) == 1)
        #expect(throws: MemoryError.invalidArgument) { _ = try space.age(address: base + 1, length: p) }
    }

    @Test func ageOrCombinesEverySubscribersAnswer() throws {
        let log = NotifierCallLog()
        let space = try makeSpace()
        _ = try space.age(address: base, length: 16 * p)
        let first = RecordingNotifier("first", callbacks: .young, log: log)
        let second = RecordingNotifier("second", callbacks: .young, log: log)
        let notYoung = RecordingNotifier("notYoung", callbacks: [.invalidateRange], log: log)
        for notifier in [first, second, notYoung] { try space.registerNotifier(notifier) }
        first.youngPages.withLock { $0 = [pageAddress(1), pageAddress(4)] }
        second.youngPages.withLock { $0 = [pageAddress(4), pageAddress(5)] }
        _ = try space.read(at: pageAddress(6))  // the CPU's own accessed bit

        #expect(try space.age(address: base, length: 16 * p) == 4)  // pages 1, 4, 5, 6
        // Every subscriber is asked about every present page, in registration order, even after
        // one already said yes (OR, not short-circuit), with the flushing variant.
        var expected: [NotifierCall] = []
        for index in 0..<8 {
            expected.append(.clearFlushYoung("first", start: pageAddress(index), end: pageAddress(index) + p))
            expected.append(.clearFlushYoung("second", start: pageAddress(index), end: pageAddress(index) + p))
        }
        #expect(log.all == expected)
        #expect(first.youngPages.withLock { $0.isEmpty } && second.youngPages.withLock { $0.isEmpty })
        #expect(try space.age(address: base, length: 16 * p) == 0)

        // Without flush: clearYoung.
        log.drain()
        second.youngPages.withLock { $0 = [pageAddress(2)] }
        #expect(try space.age(address: base, length: 8 * p, flush: false) == 1)
        #expect(log.all.allSatisfy { if case .clearYoung = $0 { true } else { false } })
        #expect(log.all.count == 16)
    }

    @Test func testYoungStopsAtTheFirstYesAndClearsNothing() throws {
        let log = NotifierCallLog()
        let space = try makeSpace()
        _ = try space.age(address: base, length: 16 * p)
        let first = RecordingNotifier("first", callbacks: [.testYoung], log: log)
        let second = RecordingNotifier("second", callbacks: [.testYoung], log: log)
        try space.registerNotifier(first)
        try space.registerNotifier(second)
        first.youngPages.withLock { $0 = [pageAddress(1)] }
        second.youngPages.withLock { $0 = [pageAddress(2)] }

        #expect(space.testYoung(at: pageAddress(1) + 100))  // any address in the page
        #expect(log.drain() == [.testYoung("first", address: pageAddress(1))])
        #expect(space.testYoung(at: pageAddress(2)))
        #expect(log.drain() == [.testYoung("first", address: pageAddress(2)), .testYoung("second", address: pageAddress(2))])
        #expect(!space.testYoung(at: pageAddress(3)))
        #expect(log.drain().count == 2)
        #expect(space.testYoung(at: pageAddress(1)))  // nothing was cleared
        log.drain()
        // The CPU's accessed bit answers first: subscribers are not asked.
        _ = try space.read(at: pageAddress(3))
        #expect(space.testYoung(at: pageAddress(3)))
        #expect(log.drain() == [])
    }

    @Test func hugeMappingsAgeAsOneBlock() throws {
        let log = NotifierCallLog()
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 4096, swapSlots: 64))
        let huge = NotifierTestConstants.huge
        try space.map(length: huge, placement: .fixed(base), options: [.hugePage])
        try space.write(1, at: base)
        let subscriber = RecordingNotifier("young", callbacks: .young, log: log)
        try space.registerNotifier(subscriber)
        #expect(try space.age(address: base, length: huge) == 512)
        #expect(log.drain() == [.clearFlushYoung("young", start: base, end: base + huge)])
        #expect(try space.age(address: base, length: huge) == 0)
        subscriber.youngPages.withLock { $0 = [base + 7 * p] }
        #expect(try space.age(address: base + 4 * p, length: 8 * p) == 512)
    }

    @Test func aSoftwareMirrorReportsDeviceAccesses() throws {
        let space = try makeSpace()
        let mirror = try SoftwareMirror(space: space, start: base, length: 16 * p)
        try mirror.populate(address: base, length: 8 * p, write: false)
        _ = try space.age(address: base, length: 16 * p)
        _ = try mirror.read(at: pageAddress(2))
        #expect(space.translate(pageAddress(2))?.isAccessed == false)
        #expect(space.testYoung(at: pageAddress(2)))
        #expect(try space.age(address: base, length: 16 * p) == 1)
        #expect(!space.testYoung(at: pageAddress(2)))  // aging cleared the mirror's bit too
        mirror.detach()
    }
}
