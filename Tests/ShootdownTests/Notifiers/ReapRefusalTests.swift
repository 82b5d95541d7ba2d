import Synchronization
import Testing

@testable import Shootdown

private let p = NotifierTestConstants.page
private let base = NotifierTestConstants.base

/// The non-blockable refusal contract (docs/protocols.md, "Non-blockable invalidations"), driven through the OOM reaper.
@Suite struct ReapRefusalTests {
    private func range(_ space: AddressSpace, _ start: UInt64, _ end: UInt64) -> InvalidationRange {
        InvalidationRange(
            space: space.id, start: start, end: end, event: .unmap, flags: [],
            vma: space.expectedVMASnapshot(containing: start))
    }

    @Test func aRefusalStillCallsEveryStartAndTheEngineCallsEveryEnd() throws {
        let log = NotifierCallLog()
        let memory = PhysicalMemory(capacity: 4096, swapSlots: 64)
        let space = try AddressSpace(memory: memory)
        let first = RecordingNotifier("first", callbacks: .invalidateRange, log: log)
        // A subscriber that may refuse must not implement end.
        let refuser = RecordingNotifier("refuser", callbacks: [.invalidateRangeStart], log: log)
        refuser.refusesNonBlockable.store(true, ordering: .releasing)
        let third = RecordingNotifier("third", callbacks: .invalidateRange, log: log)
        for notifier in [first, refuser, third] { try space.registerNotifier(notifier) }
        try space.map(length: 8 * p, placement: .fixed(base))
        for index in 0..<8 { try space.write(UInt64(index) + 1, at: base + UInt64(index) * p) }
        let r = range(space, base, base + 8 * p)
        let attempt: [NotifierCall] = [
            .start("first", r), .start("refuser", r), .start("third", r), .end("first", r), .end("third", r),
        ]
        log.drain()

        let refused = try space.reap(attempts: 2)
        #expect(refused.attempts == 2)
        #expect(refused.pagesReaped == 0)
        #expect(refused.skipped == [base...(base + 8 * p - 1)])
        #expect(log.drain() == attempt + attempt)
        // The range was left untouched.
        for index in 0..<8 {
            #expect(space.translate(base + UInt64(index) * p)?.isPresent == true)
            #expect(try space.read(at: base + UInt64(index) * p) == UInt64(index) + 1)
        }
        #expect(memory.framesInUse == 8)
        #expect(space.statistics[.invalidationsRefused] == 2)
        #expect(space.statistics[.notifierContractViolations] == 0)

        // Once the refuser accepts, a retry reaps.
        refuser.refusesNonBlockable.store(false, ordering: .releasing)
        let retried = try space.reap()
        #expect(retried.attempts == 1 && retried.skipped.isEmpty && retried.pagesReaped == 8)
        #expect(log.drain() == attempt)
        for index in 0..<8 { #expect(space.translate(base + UInt64(index) * p) == nil) }
        #expect(memory.framesInUse == 0)
        #expect(space.mappingCount == 1)  // the VMA stays; its pages are gone
        #expect(try space.read(at: base) == 0)
    }

    @Test func onlyTheRefusedVMAIsSkippedAndRetriedWithinOneReap() throws {
        let log = NotifierCallLog()
        let memory = PhysicalMemory(capacity: 4096, swapSlots: 64)
        let space = try AddressSpace(memory: memory)
        let refuser = RecordingNotifier("refuser", callbacks: [.invalidateRangeStart], log: log)
        refuser.refusalAddress.store(base + 32 * p, ordering: .releasing)
        refuser.refusesNonBlockable.store(true, ordering: .releasing)
        try space.registerNotifier(refuser)
        try space.map(length: 4 * p, placement: .fixed(base))
        try space.map(length: 4 * p, protection: .read, placement: .fixed(base + 32 * p))
        try space.write(1, at: base)
        _ = try space.read(at: base + 32 * p)
        log.drain()
        let result = try space.reap(attempts: 3)
        #expect(result.attempts == 3)
        #expect(result.pagesReaped == 1)
        #expect(result.skipped == [(base + 32 * p)...(base + 36 * p - 1)])
        #expect(log.startRanges(of: "refuser") == [
            range(space, base, base + 4 * p), range(space, base + 32 * p, base + 36 * p),
            range(space, base + 32 * p, base + 36 * p), range(space, base + 32 * p, base + 36 * p),
        ])
        #expect(space.translate(base) == nil)
        #expect(space.translate(base + 32 * p)?.isPresent == true)
    }

    @Test func anIntervalHandlerMayRefuseANonBlockableRange() throws {
        let log = NotifierCallLog()
        let memory = PhysicalMemory(capacity: 4096, swapSlots: 64)
        let space = try AddressSpace(memory: memory)
        let classic = RecordingNotifier("rec", callbacks: .invalidateRange, log: log)
        try space.registerNotifier(classic)
        let handler = RecordingIntervalHandler("itv", log: log)
        handler.refusesNonBlockable.store(true, ordering: .releasing)
        try space.map(length: 8 * p, placement: .fixed(base))
        for index in 0..<8 { try space.write(UInt64(index) + 1, at: base + UInt64(index) * p) }
        let notifier = try space.insertIntervalNotifier(start: base + 2 * p, length: 2 * p, handler: handler)
        let sequence = notifier.readBegin()
        let r = range(space, base, base + 8 * p)
        log.drain()

        let refused = try space.reap(attempts: 1)
        #expect(refused.skipped == [base...(base + 8 * p - 1)] && refused.pagesReaped == 0)
        // Interval notifiers go first; a refusal there returns before the classic list.
        let calls = log.drain()
        #expect(calls.count == 1)
        #expect(calls.first?.range == r)
        #expect(space.translate(base + 3 * p)?.isPresent == true)
        #expect(memory.framesInUse == 8)
        // The epoch was closed: readers do not wait, and nothing was invalidated.
        #expect(space.intervalState!.sequence.load(ordering: .acquiring) & 1 == 0)
        #expect(notifier.readBegin() == sequence)
        #expect(!notifier.readRetry(sequence))

        handler.refusesNonBlockable.store(false, ordering: .releasing)
        let reaped = try space.reap()
        #expect(reaped.pagesReaped == 8 && reaped.skipped.isEmpty)
        let accepted = log.drain()
        #expect(accepted.count == 3)
        #expect(accepted.first?.subscriber == "itv")
        #expect(Array(accepted.dropFirst()) == [.start("rec", r), .end("rec", r)])
        #expect(notifier.readRetry(sequence))
    }

    @Test func aClassicRefusalClosesTheIntervalEpochToo() throws {
        let log = NotifierCallLog()
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 4096, swapSlots: 64))
        let refuser = RecordingNotifier("refuser", callbacks: [.invalidateRangeStart], log: log)
        refuser.refusesNonBlockable.store(true, ordering: .releasing)
        try space.registerNotifier(refuser)
        let handler = RecordingIntervalHandler("itv", log: log)
        try space.map(length: 8 * p, placement: .fixed(base))
        try space.write(1, at: base)
        let notifier = try space.insertIntervalNotifier(start: base, length: 8 * p, handler: handler)
        let sequence = notifier.readBegin()
        let result = try space.reap(attempts: 2)
        #expect(result.skipped.count == 1)
        #expect(log.intervalRanges(of: "itv").count == 2)
        #expect(log.startRanges(of: "refuser").count == 2)
        // The interval was told (so its readers retry), and the epoch is closed again.
        #expect(notifier.readRetry(sequence))
        #expect(space.intervalState!.sequence.load(ordering: .acquiring) & 1 == 0)
        let fresh = notifier.readBegin()
        #expect(!notifier.readRetry(fresh))
        #expect(space.translate(base)?.isPresent == true)
    }

    @Test func reapWouldBlockWhileAnotherThreadHoldsTheMmapLockForWriting() throws {
        let log = NotifierCallLog()
        let memory = PhysicalMemory(capacity: 4096, swapSlots: 64)
        let space = try AddressSpace(memory: memory)
        let blocker = RecordingNotifier("blocker", callbacks: .invalidateRange, log: log)
        try space.registerNotifier(blocker)
        try space.map(length: 8 * p, placement: .fixed(base))
        try space.map(length: 8 * p, placement: .fixed(base + 64 * p))
        for index in 0..<8 { try space.write(1, at: base + UInt64(index) * p) }
        try space.write(1, at: base + 64 * p)

        blocker.startGate.arm()
        let unmapper = TestThread { try? space.unmap(address: base + 64 * p, length: 8 * p) }
        blocker.startGate.waitUntilEntered()
        // munmap holds the mmap lock for writing and sits in a start callback: the reaper must not
        // wait for it. (Nothing here may wait for a notifier grace period: a reader is blocked.)
        #expect(throws: MemoryError.wouldBlock) { try space.reap() }
        #expect(space.translate(base)?.isPresent == true)
        blocker.startGate.open()
        unmapper.join()

        let result = try space.reap()
        #expect(result.pagesReaped == 8)
        #expect(memory.framesInUse == 0)
        #expect(pairingProblems(in: log.all, of: "blocker") == [])
    }
}
