import Foundation
import Synchronization
import Testing

@testable import Shootdown

private let p = NotifierTestConstants.page
private let base = NotifierTestConstants.base

/// A space with 64 mapped, written pages at `base`.
private func makeSpace(capacity: Int = 4096) throws -> AddressSpace {
    let space = try AddressSpace(memory: PhysicalMemory(capacity: capacity, swapSlots: 64))
    try space.map(length: 64 * p, placement: .fixed(base))
    for index in 0..<64 { try space.write(UInt64(index) + 1, at: base + UInt64(index) * p) }
    return space
}

private extension IntervalNotifier {
    var currentSequence: UInt64 { sequence.load(ordering: .acquiring) }
}

private extension AddressSpace {
    var collisionSequence: UInt64 { intervalState!.sequence.load(ordering: .acquiring) }
    var readWaits: Int64 { statistics[.intervalReadWaits] }
}

/// The collision-retry protocol of interval notifiers (docs/protocols.md, "Interval notifiers").
@Suite struct IntervalNotifierTests {
    @Test func readBeginReadRetryCheckRetryAndSetSequence() throws {
        let log = NotifierCallLog()
        let space = try makeSpace()
        let handler = RecordingIntervalHandler("i", log: log)
        let notifier = try space.insertIntervalNotifier(start: base, length: 4 * p, handler: handler)
        #expect(notifier.start == base && notifier.end == base + 4 * p)
        #expect(space.collisionSequence & 1 == 0)  // idle: even

        let first = notifier.readBegin()
        #expect(first & 1 == 1)  // notifier sequences are always odd
        #expect(first != space.collisionSequence)
        #expect(notifier.readBegin() == first)  // nothing happened: same sequence
        #expect(!notifier.readRetry(first))
        #expect(!notifier.checkRetry(first))
        #expect(handler.commitWouldSucceed(notifier, first))

        // An invalidation hitting the interval: the handler records the epoch's sequence.
        try space.advise(address: base + p, length: p, advice: .dontNeed)
        let received = log.all.compactMap { call -> UInt64? in
            if case .interval(_, _, let sequence) = call { sequence } else { nil }
        }
        #expect(received.count == 1)
        #expect(received.first.map { $0 & 1 == 1 } == true)
        #expect(notifier.currentSequence == received.first)
        #expect(notifier.readRetry(first))
        #expect(notifier.checkRetry(first))
        #expect(!handler.commitWouldSucceed(notifier, first))
        // The epoch closed (sequence even again, one past the handler's), so readBegin does not wait.
        #expect(space.collisionSequence == received.first! + 1)
        let second = notifier.readBegin()
        #expect(second == received.first)
        #expect(!notifier.readRetry(second))

        // setSequence is what readRetry compares against.
        notifier.setSequence(second + 2)
        #expect(notifier.readRetry(second))
        #expect(notifier.checkRetry(second))
        #expect(space.statistics[.intervalCollisions] >= 2)
        #expect(space.statistics[.intervalInvalidations] == 1)
    }

    @Test func aHandlerThatDoesNotSetTheSequenceLeavesReadersBlind() throws {
        // The protocol obliges handlers to call setSequence; without it nothing marks the collision.
        let log = NotifierCallLog()
        let space = try makeSpace()
        let careless = RecordingIntervalHandler("careless", log: log, setsSequence: false)
        let notifier = try space.insertIntervalNotifier(start: base, length: 4 * p, handler: careless)
        let sequence = notifier.readBegin()
        try space.advise(address: base, length: p, advice: .dontNeed)
        #expect(log.intervalRanges(of: "careless").count == 1)
        #expect(!notifier.readRetry(sequence))
    }

    @Test func onlyIntersectingIntervalsAreCalled() throws {
        let log = NotifierCallLog()
        let space = try makeSpace()
        let low = try space.insertIntervalNotifier(start: base, length: 4 * p, handler: RecordingIntervalHandler("low", log: log))
        let adjacent = try space.insertIntervalNotifier(
            start: base + 4 * p, length: 4 * p, handler: RecordingIntervalHandler("adjacent", log: log))
        let far = try space.insertIntervalNotifier(
            start: base + 32 * p, length: 4 * p, handler: RecordingIntervalHandler("far", log: log))
        let unmapped = try space.insertIntervalNotifier(
            start: base + 1024 * p, length: 4 * p, handler: RecordingIntervalHandler("unmapped", log: log))
        #expect(space.intervalNotifierCount == 4)
        let sequences = [low, adjacent, far, unmapped].map { $0.readBegin() }

        try space.advise(address: base, length: 4 * p, advice: .dontNeed)  // [base, base+4p): end is exclusive
        #expect(log.all.map(\.subscriber) == ["low"])
        log.drain()
        try space.advise(address: base + 3 * p, length: 2 * p, advice: .dontNeed)
        #expect(log.all.map(\.subscriber) == ["low", "adjacent"])  // in order of interval start
        log.drain()
        // A munmap over mapped and unmapped addresses reaches intervals on unmapped addresses too.
        try space.map(length: 4 * p, placement: .fixed(base + 1026 * p))
        try space.unmap(address: base + 1020 * p, length: 16 * p)
        #expect(log.all.map(\.subscriber) == ["unmapped"])
        #expect(!far.readRetry(sequences[2]))
        #expect(low.readRetry(sequences[0]) && adjacent.readRetry(sequences[1]) && unmapped.readRetry(sequences[3]))
    }

    @Test func readBeginWaitsWhileAnEpochThatInvalidatedTheIntervalIsOpen() throws {
        let log = NotifierCallLog()
        let space = try makeSpace()
        let firstHandler = RecordingIntervalHandler("first", log: log)
        let blockingHandler = RecordingIntervalHandler("blocking", log: log)
        let outsideHandler = RecordingIntervalHandler("outside", log: log)
        let first = try space.insertIntervalNotifier(start: base, length: 2 * p, handler: firstHandler)
        _ = try space.insertIntervalNotifier(start: base + 8 * p, length: 2 * p, handler: blockingHandler)
        let outside = try space.insertIntervalNotifier(start: base + 32 * p, length: 2 * p, handler: outsideHandler)
        let before = first.readBegin()
        let outsideBefore = outside.readBegin()

        // The invalidation reaches `first`, then blocks in the second handler: the epoch stays open.
        blockingHandler.gate.arm()
        let invalidator = TestThread { try? space.advise(address: base, length: 16 * p, advice: .dontNeed) }
        blockingHandler.gate.waitUntilEntered()
        let epoch = space.collisionSequence
        #expect(epoch & 1 == 1)
        #expect(first.currentSequence == epoch)
        #expect(first.checkRetry(before))

        // An interval this epoch did not invalidate reads without waiting.
        let outsideReader = TestThread { _ = outside.readBegin() }
        #expect(outsideReader.join(within: 30))
        #expect(outside.readBegin() == outsideBefore)

        // One it did invalidate waits until the epoch closes.
        let waitsBefore = space.readWaits
        let returned = SharedFlag()
        let observed = SharedValue()
        let reader = TestThread {
            observed.store(first.readBegin())
            returned.set()
        }
        #expect(spinUntil { space.readWaits == waitsBefore + 1 || returned.isSet })  // the reader is at the wait
        #expect(!returned.isSet)  // and cannot pass it: the epoch is held open
        blockingHandler.gate.open()
        invalidator.join()
        reader.join()
        #expect(returned.isSet)
        let sequence = observed.value
        #expect(sequence == epoch)
        #expect(space.collisionSequence == epoch + 1)  // closed
        #expect(!first.readRetry(sequence))  // valid against the page tables after the epoch
        #expect(first.readRetry(before))
        #expect(space.translate(base)?.isPresent != true)
    }

    @Test func insertDuringAnOpenEpochIsDeferredUntilItCloses() throws {
        let log = NotifierCallLog()
        let space = try makeSpace()
        let blockingHandler = RecordingIntervalHandler("blocking", log: log)
        _ = try space.insertIntervalNotifier(start: base, length: 2 * p, handler: blockingHandler)
        blockingHandler.gate.arm()
        let invalidator = TestThread { try? space.advise(address: base, length: 16 * p, advice: .dontNeed) }
        blockingHandler.gate.waitUntilEntered()
        let epoch = space.collisionSequence
        #expect(epoch & 1 == 1)

        // Inside the range being invalidated, but the tree is frozen: deferred.
        let lateHandler = RecordingIntervalHandler("late", log: log)
        let late = try space.insertIntervalNotifier(start: base + 8 * p, length: 2 * p, handler: lateHandler)
        #expect(space.intervalNotifierCount == 1)
        #expect(space.intervalState!.notifiers.contains { $0 === late })
        #expect(late.currentSequence == epoch)

        // Its first readBegin must wait for the epoch: the page tables are in flux.
        let waitsBefore = space.readWaits
        let returned = SharedFlag()
        let observed = SharedValue()
        let reader = TestThread {
            observed.store(late.readBegin())
            returned.set()
        }
        #expect(spinUntil { space.readWaits == waitsBefore + 1 || returned.isSet })
        #expect(!returned.isSet)
        blockingHandler.gate.open()
        invalidator.join()
        reader.join()
        let sequence = observed.value
        #expect(sequence == epoch)
        #expect(space.intervalNotifierCount == 2)  // applied when the epoch closed
        #expect(log.intervalRanges(of: "late").isEmpty)  // it was not in the tree during that epoch
        #expect(!late.readRetry(sequence))

        // Now in the tree: the next invalidation of its interval reaches it and makes that
        // sequence stale.
        try space.advise(address: base + 9 * p, length: p, advice: .dontNeed)
        #expect(log.intervalRanges(of: "late").count == 1)
        #expect(late.readRetry(sequence))
        #expect(late.checkRetry(sequence))
    }

    @Test func insertWhileAnInvalidationThatHitNothingIsInFlightOpensAnEpoch() throws {
        let log = NotifierCallLog()
        let space = try makeSpace()
        // An interval far away, so the space has interval state and inserts need no mmap lock.
        _ = try space.insertIntervalNotifier(start: base + 1024 * p, length: p, handler: RecordingIntervalHandler("far", log: log))
        let blocker = RecordingNotifier("blocker", callbacks: .invalidateRange, log: log)
        try space.registerNotifier(blocker)
        blocker.startGate.arm()
        let invalidator = TestThread { try? space.advise(address: base, length: 16 * p, advice: .dontNeed) }
        blocker.startGate.waitUntilEntered()
        // In flight, hit no interval: partially excluded, sequence still even.
        let idle = space.collisionSequence
        #expect(idle & 1 == 0)

        // The new interval might be covered by it: the sequence goes odd, the insert is immediate.
        let newHandler = RecordingIntervalHandler("new", log: log)
        let fresh = try space.insertIntervalNotifier(start: base + 4 * p, length: 2 * p, handler: newHandler)
        #expect(space.intervalNotifierCount == 2)
        #expect(space.collisionSequence == idle | 1)
        #expect(fresh.currentSequence == idle | 1)

        let waitsBefore = space.readWaits
        let returned = SharedFlag()
        let observed = SharedValue()
        let reader = TestThread {
            observed.store(fresh.readBegin())
            returned.set()
        }
        #expect(spinUntil { space.readWaits == waitsBefore + 1 || returned.isSet })
        #expect(!returned.isSet)
        blocker.startGate.open()
        invalidator.join()
        reader.join()
        #expect(observed.value == idle | 1)
        #expect(space.collisionSequence == idle + 2)  // the invalidation's end closed the epoch
        #expect(log.intervalRanges(of: "new").isEmpty)
        #expect(!fresh.readRetry(idle | 1))
    }

    @Test func removeDuringAnOpenEpochWaitsForItToClose() throws {
        let log = NotifierCallLog()
        let space = try makeSpace()
        let doomedHandler = RecordingIntervalHandler("doomed", log: log)
        let blockingHandler = RecordingIntervalHandler("blocking", log: log)
        let doomed = try space.insertIntervalNotifier(start: base, length: 2 * p, handler: doomedHandler)
        _ = try space.insertIntervalNotifier(start: base + 8 * p, length: 2 * p, handler: blockingHandler)
        blockingHandler.gate.arm()
        let invalidator = TestThread { try? space.advise(address: base, length: 16 * p, advice: .dontNeed) }
        blockingHandler.gate.waitUntilEntered()
        #expect(log.intervalRanges(of: "doomed").count == 1)

        let removed = SharedFlag()
        let remover = TestThread {
            doomed.remove()
            removed.set()
        }
        // The remover queued the removal and waits for the epoch.
        #expect(spinUntil { space.intervalState!.lock.withLock { doomed.isDeferred } || removed.isSet })
        #expect(!removed.isSet)
        #expect(space.intervalNotifierCount == 2)
        blockingHandler.gate.open()
        invalidator.join()
        remover.join()
        #expect(removed.isSet)
        #expect(space.intervalNotifierCount == 1)

        // Gone: no more callbacks. Removing again is harmless.
        try space.advise(address: base, length: 2 * p, advice: .dontNeed)
        #expect(log.intervalRanges(of: "doomed").count == 1)
        doomed.remove()
        doomed.remove()
        #expect(space.intervalNotifierCount == 1)
    }

    @Test func removingAPendingInsertCancelsItWithoutWaiting() throws {
        let log = NotifierCallLog()
        let space = try makeSpace()
        let blockingHandler = RecordingIntervalHandler("blocking", log: log)
        _ = try space.insertIntervalNotifier(start: base, length: 2 * p, handler: blockingHandler)
        blockingHandler.gate.arm()
        let invalidator = TestThread { try? space.advise(address: base, length: 16 * p, advice: .dontNeed) }
        blockingHandler.gate.waitUntilEntered()
        let pending = try space.insertIntervalNotifier(start: base + 4 * p, length: p, handler: RecordingIntervalHandler("pending", log: log))
        let remover = TestThread { pending.remove() }
        #expect(remover.join(within: 30))  // did not wait for the epoch
        blockingHandler.gate.open()
        invalidator.join()
        #expect(space.intervalNotifierCount == 1)
        #expect(!space.intervalState!.notifiers.contains { $0 === pending })
        try space.advise(address: base + 4 * p, length: p, advice: .dontNeed)
        #expect(log.intervalRanges(of: "pending").isEmpty)
    }

    @Test func concurrentInvalidationsKeepTheEpochOpenUntilTheLastEnds() throws {
        let log = NotifierCallLog()
        let space = try makeSpace()
        let blockingHandler = RecordingIntervalHandler("blocking", log: log)
        // Another VMA: two zaps of one VMA serialise on its writer lock.
        try space.map(length: 4 * p, protection: .read, placement: .fixed(base + 128 * p))
        let other = try space.insertIntervalNotifier(start: base + 128 * p, length: 2 * p, handler: RecordingIntervalHandler("other", log: log))
        _ = try space.insertIntervalNotifier(start: base, length: 2 * p, handler: blockingHandler)
        blockingHandler.gate.arm()
        let slow = TestThread { try? space.advise(address: base, length: 2 * p, advice: .dontNeed) }
        blockingHandler.gate.waitUntilEntered()
        let epoch = space.collisionSequence
        // A second invalidation (hitting `other`) starts and ends while the first is open.
        try space.advise(address: base + 128 * p, length: p, advice: .dontNeed)
        #expect(other.currentSequence == epoch)
        #expect(space.collisionSequence == epoch)  // still open: the slow one has not ended
        blockingHandler.gate.open()
        slow.join()
        #expect(space.collisionSequence == epoch + 1)
    }

    @Test func hundredThousandIntervalsInsertAndRemoveWithALogarithmicTree() throws {
        final class CountingHandler: IntervalNotifierHandler, @unchecked Sendable {
            let hits = Mutex<[UInt64]>([])
            func invalidate(_ notifier: IntervalNotifier, range: InvalidationRange, currentSequence: UInt64) -> Bool {
                notifier.setSequence(currentSequence)
                hits.withLock { $0.append(notifier.start) }
                return true
            }
        }
        let count = 100_000
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 512, swapSlots: 8))
        try space.map(length: UInt64(count) * p, placement: .fixed(base))
        let handler = CountingHandler()
        var generator = SplitMix64(seed: 0x1D7E_5EED)
        var order = Array(0..<count)
        order.shuffle(using: &generator)
        var notifiers = [IntervalNotifier?](repeating: nil, count: count)
        for index in order {
            notifiers[index] = try space.insertIntervalNotifier(start: base + UInt64(index) * p, length: p, handler: handler)
        }
        #expect(space.intervalNotifierCount == count)
        let tree = space.intervalState!.tree
        // B+tree of fanout 16, nodes at least half full after splits: height ≤ 1 + ⌈log₈ n⌉, and at
        // least ⌈log₁₆ n⌉.
        let bound = 1 + Int((log(Double(count)) / log(8)).rounded(.up))
        #expect(tree.height <= bound)
        #expect(tree.height >= Int((log(Double(count)) / log(16)).rounded(.up)))

        // A 4 KiB invalidation reaches exactly the interval on that page.
        for probe in [0, 1, 4_242, count - 1] {
            try space.advise(address: base + UInt64(probe) * p, length: p, advice: .dontNeed)
        }
        #expect(handler.hits.withLock { $0 } == [0, 1, 4_242, count - 1].map { base + UInt64($0) * p })

        order.shuffle(using: &generator)
        for index in order.prefix(count / 2) { notifiers[index]!.remove() }
        #expect(space.intervalNotifierCount == count / 2)
        #expect(tree.height <= bound)
        for index in order.dropFirst(count / 2) { notifiers[index]!.remove() }
        #expect(space.intervalNotifierCount == 0)
        #expect(tree.height == 0)
    }
}

/// The interval tree on its own, against brute force.
@Suite struct IntervalTreeTests {
    @Test func queriesMatchBruteForceThroughInsertsAndRemoves() {
        let tree = IntervalTree(capacity: 4)
        var generator = SplitMix64(seed: 42)
        var live: [Int32: (UInt64, UInt64)] = [:]
        let dummy = UnsafeMutableRawPointer(bitPattern: 0x1000)!
        func check() {
            for _ in 0..<200 {
                let start = UInt64.random(in: 0..<10_000, using: &generator)
                let last = start + UInt64.random(in: 0..<500, using: &generator)
                var found: [Int32] = []
                tree.forEachIntersecting(start, last) { node, _ in
                    found.append(node)
                    return true
                }
                let expected = live.filter { $0.value.0 <= last && start <= $0.value.1 }.map(\.key)
                #expect(Set(found) == Set(expected))
                #expect(found.count == expected.count)
                let starts = found.map { live[$0]!.0 }
                #expect(starts == starts.sorted())  // in order of start
                #expect(tree.intersects(start, last) == !expected.isEmpty)
            }
        }
        for _ in 0..<2_000 {
            let start = UInt64.random(in: 0..<10_000, using: &generator)
            let last = start + UInt64.random(in: 0..<300, using: &generator)
            live[tree.insert(start: start, last: last, value: dummy)] = (start, last)
        }
        #expect(tree.count == 2_000)
        check()
        for node in live.keys.shuffled(using: &generator).prefix(1_500) {
            #expect(tree.interval(node) == live[node]!)
            tree.remove(node)
            live[node] = nil
        }
        #expect(tree.count == 500)
        check()
        // Freed nodes are reused.
        for _ in 0..<1_000 {
            let start = UInt64.random(in: 0..<10_000, using: &generator)
            live[tree.insert(start: start, last: start, value: dummy)] = (start, start)
        }
        check()
        #expect(tree.height <= 1 + Int((log(1502.0) / log(8)).rounded(.up)))  // fanout-16 B+tree
    }

    @Test func sortedInsertionStaysBalanced() {
        let tree = IntervalTree()
        let dummy = UnsafeMutableRawPointer(bitPattern: 0x1000)!
        var nodes: [Int32] = []
        for index in 0..<(1 << 16) {
            nodes.append(tree.insert(start: UInt64(index), last: UInt64(index), value: dummy))
        }
        #expect(tree.height <= 1 + 16 / 3)  // 1 + ⌈log₈ 2¹⁶⌉: sorted inserts still split in half
        for node in nodes { tree.remove(node) }
        #expect(tree.count == 0 && tree.height == 0)
    }
}
