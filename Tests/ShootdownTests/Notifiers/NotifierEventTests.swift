import Testing

@testable import Shootdown

/// A space with a recording classic subscriber ("rec", probing the space from inside its
/// callbacks) and a recording interval handler ("itv") over a large window around the mappings.
private final class EventFixture {
    let memory: PhysicalMemory
    let space: AddressSpace
    let log = NotifierCallLog()
    let recorder: RecordingNotifier
    let intervalHandler: RecordingIntervalHandler
    let interval: IntervalNotifier
    static let windowStart = NotifierTestConstants.base
    static let windowEnd = NotifierTestConstants.base + (1 << 30)

    init(capacity: Int = 8192, configuration: AddressSpace.Configuration = .init()) throws {
        memory = PhysicalMemory(capacity: capacity, swapSlots: 1024)
        space = try AddressSpace(configuration: configuration, memory: memory)
        recorder = RecordingNotifier("rec", log: log, probing: space)
        try space.registerNotifier(recorder)
        intervalHandler = RecordingIntervalHandler("itv", log: log)
        interval = try space.insertIntervalNotifier(
            start: Self.windowStart, length: Self.windowEnd - Self.windowStart, handler: intervalHandler)
    }

    /// Runs `body` and returns the calls it caused, without the interval handler's (checked here
    /// against the classic starts: same ranges, each right before the classic start).
    func record(
        sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void
    ) throws -> [NotifierCall] {
        log.drain()
        let observationsBefore = recorder.observations.count
        try body()
        let calls = log.drain()
        #expect(pairingProblems(in: calls, of: "rec") == [], sourceLocation: sourceLocation)
        for observation in recorder.observations.dropFirst(observationsBefore) {
            #expect(!observation.insideRCUReadSection, "\(observation.range)", sourceLocation: sourceLocation)
            #expect(!observation.splitLockHeld, "\(observation.range)", sourceLocation: sourceLocation)
        }
        var expectedIntervalCall: InvalidationRange? = nil
        var intervalCalls = 0
        for call in calls {
            switch call {
            case .interval("itv", let range, let sequence):
                #expect(expectedIntervalCall == nil, sourceLocation: sourceLocation)
                #expect(sequence & 1 == 1, "interval sequences are odd", sourceLocation: sourceLocation)
                expectedIntervalCall = range
                intervalCalls += 1
            case .start("rec", let range):
                #expect(range.space == space.id, sourceLocation: sourceLocation)
                if range.intersects(Self.windowStart, Self.windowEnd) {
                    #expect(expectedIntervalCall == range, "interval handler first, same range", sourceLocation: sourceLocation)
                } else {
                    #expect(expectedIntervalCall == nil, sourceLocation: sourceLocation)
                }
                expectedIntervalCall = nil
            default:
                break
            }
        }
        #expect(expectedIntervalCall == nil, "interval call without classic start", sourceLocation: sourceLocation)
        #expect(space.statistics[.notifierContractViolations] == 0, sourceLocation: sourceLocation)
        return calls.filter { $0.subscriber != "itv" }
    }

    func range(
        _ start: UInt64, _ end: UInt64, _ event: InvalidationEvent, flags: InvalidationFlags = .blockable,
        vma: VMASnapshot? = nil, owner: InvalidationOwner = .none
    ) -> InvalidationRange {
        InvalidationRange(space: space.id, start: start, end: end, event: event, flags: flags, vma: vma, owner: owner)
    }

    /// `[start(range), end(range)]` for "rec".
    func pair(_ range: InvalidationRange) -> [NotifierCall] { [.start("rec", range), .end("rec", range)] }

    func writePages(_ start: UInt64, count: Int, firstToken: UInt64 = 1) throws {
        for index in 0..<count {
            try space.write(firstToken + UInt64(index), at: start + UInt64(index) * NotifierTestConstants.page)
        }
    }
}

private let p = NotifierTestConstants.page
private let base = NotifierTestConstants.base
private let huge = NotifierTestConstants.huge

@Suite struct NotifierEventTests {
    @Test func munmapSendsOneUnmapPairOverTheRange() throws {
        let f = try EventFixture()
        try f.space.map(length: 16 * p, placement: .fixed(base))
        try f.writePages(base, count: 16)
        let calls = try f.record { try f.space.unmap(address: base + 4 * p, length: 8 * p) }
        #expect(calls == f.pair(f.range(base + 4 * p, base + 12 * p, .unmap)))
        let observations = f.recorder.observations.suffix(2)
        // Start: pages still mapped. End: entries gone, frames not yet freed.
        #expect(observations.first?.firstPage?.isPresent == true)
        #expect(observations.last?.firstPage == nil)
        #expect(observations.last?.framesInUse == 16)
        #expect(f.memory.framesInUse == 8)
        #expect(f.recorder.observations.allSatisfy { !$0.splitLockHeld && !$0.insideRCUReadSection })

        // A hole-only munmap invalidates nothing.
        #expect(try f.record { try f.space.unmap(address: base + 4 * p, length: 8 * p) } == [])
        // One munmap spanning two VMAs and a hole: still one pair over the whole range.
        try f.space.map(length: 4 * p, protection: .read, placement: .fixed(base + 20 * p))
        let spanning = try f.record { try f.space.unmap(address: base, length: 24 * p) }
        #expect(spanning == f.pair(f.range(base, base + 24 * p, .unmap)))
        #expect(f.memory.framesInUse == 0)
    }

    @Test func fixedMapOverExistingPagesSendsUnmap() throws {
        let f = try EventFixture()
        try f.space.map(length: 8 * p, placement: .fixed(base))
        try f.writePages(base, count: 8)
        let calls = try f.record { try f.space.map(length: 4 * p, placement: .fixed(base + 2 * p)) }
        #expect(calls == f.pair(f.range(base + 2 * p, base + 6 * p, .unmap)))
        #expect(f.memory.framesInUse == 4)
        #expect(try f.space.read(at: base + 2 * p) == 0)
        #expect(try f.space.read(at: base + 7 * p) == 8)
        // Over nothing: no invalidation.
        #expect(try f.record { try f.space.map(length: 4 * p, placement: .fixed(base + 64 * p)) } == [])
    }

    @Test func remapMoveSendsUnmapOfTheOldRange() throws {
        let f = try EventFixture()
        try f.space.map(length: 8 * p, placement: .fixed(base))
        try f.writePages(base, count: 8, firstToken: 100)
        try f.space.map(length: p, placement: .fixed(base + 8 * p), options: [.shared])  // blocks growth
        let oldVMA = f.space.expectedVMASnapshot(containing: base)
        var target: UInt64 = 0
        let calls = try f.record {
            target = try f.space.remap(address: base, oldLength: 8 * p, newLength: 16 * p, move: .mayMove)
        }
        #expect(target != base)
        let starts = calls.compactMap { $0.isStart ? $0.range : nil }
        #expect(!starts.isEmpty)
        #expect(calls.allSatisfy { $0.range?.event == .unmap })
        #expect(starts.allSatisfy { $0.start == base && $0.end == base + 8 * p && $0.isBlockable })
        #expect(starts.first == f.range(base, base + 8 * p, .unmap, vma: oldVMA))
        for index in 0..<8 { #expect(try f.space.read(at: target + UInt64(index) * p) == 100 + UInt64(index)) }
        #expect(f.space.translate(base) == nil)

        // Shrinking in place unmaps the tail.
        let shrink = try f.record { try f.space.remap(address: target, oldLength: 16 * p, newLength: 4 * p) }
        #expect(shrink == f.pair(f.range(target + 4 * p, target + 16 * p, .unmap)))
        #expect(f.memory.framesInUse == 4)
    }

    @Test func madviseDontNeedAndPageOutSendClearWithTheVMA() throws {
        let f = try EventFixture()
        try f.space.map(length: 16 * p, placement: .fixed(base))
        try f.writePages(base, count: 16)
        let vma = f.space.expectedVMASnapshot(containing: base)
        #expect(vma?.start == base && vma?.end == base + 16 * p)

        let dontNeed = try f.record { try f.space.advise(address: base + 2 * p, length: 4 * p, advice: .dontNeed) }
        #expect(dontNeed == f.pair(f.range(base + 2 * p, base + 6 * p, .clear, vma: vma)))
        #expect(f.space.translate(base + 2 * p) == nil)
        #expect(f.memory.framesInUse == 12)

        let pageOut = try f.record { try f.space.advise(address: base + 8 * p, length: 4 * p, advice: .pageOut) }
        #expect(pageOut == f.pair(f.range(base + 8 * p, base + 12 * p, .clear, vma: vma)))
        #expect(f.space.translate(base + 8 * p)?.isSwap == true)
        #expect(f.memory.framesInUse == 8)

        // Across two VMAs: one pair per VMA part, each with its VMA.
        try f.space.map(length: 8 * p, protection: .read, placement: .fixed(base + 16 * p))
        let second = f.space.expectedVMASnapshot(containing: base + 16 * p)
        let spanning = try f.record { try f.space.advise(address: base + 12 * p, length: 8 * p, advice: .dontNeed) }
        #expect(spanning
            == f.pair(f.range(base + 12 * p, base + 16 * p, .clear, vma: vma))
            + f.pair(f.range(base + 16 * p, base + 20 * p, .clear, vma: second)))
    }

    @Test func mprotectSendsProtectionVMAPerPartWithTheNewProtection() throws {
        let f = try EventFixture()
        try f.space.map(length: 16 * p, placement: .fixed(base))
        try f.space.map(length: 16 * p, protection: [.read, .write, .exec], placement: .fixed(base + 16 * p))
        try f.writePages(base, count: 32)
        #expect(f.space.mappingCount == 2)
        let flags = f.space.mappings()[0].flags
        let calls = try f.record { try f.space.protect(address: base + 8 * p, length: 16 * p, protection: .read) }
        let first = VMASnapshot(start: base + 8 * p, end: base + 16 * p, protection: .read, flags: flags)
        let second = VMASnapshot(start: base + 16 * p, end: base + 24 * p, protection: .read, flags: flags)
        #expect(calls
            == f.pair(f.range(base + 8 * p, base + 16 * p, .protectionVMA, vma: first))
            + f.pair(f.range(base + 16 * p, base + 24 * p, .protectionVMA, vma: second)))
        #expect(calls.allSatisfy { $0.range?.onlyDowngradesToReadOnly == true })
        #expect(f.space.translate(base + 8 * p)?.isWritable == false)
        #expect(f.space.translate(base + 23 * p)?.isWritable == false)
        #expect(f.space.translate(base + 7 * p)?.isWritable == true)
        #expect(f.space.mappingCount == 3)  // the two read-only parts merged afterwards

        // To PROT_NONE: not a downgrade to read-only.
        let none = try f.record { try f.space.protect(address: base, length: 4 * p, protection: .none) }
        #expect(none.count == 2)
        #expect(none.first?.range?.event == .protectionVMA)
        #expect(none.first?.range?.vma?.protection == Protection.none)
        #expect(none.first?.range?.onlyDowngradesToReadOnly == false)
    }

    @Test func forkWriteProtectsEachPrivateVMAWithProtectionPage() throws {
        let f = try EventFixture()
        try f.space.map(length: 8 * p, placement: .fixed(base))
        try f.space.map(length: 4 * p, placement: .fixed(base + 64 * p), options: [.shared])
        try f.space.map(length: 4 * p, placement: .fixed(base + 128 * p))
        try f.writePages(base, count: 8)
        try f.writePages(base + 64 * p, count: 4)
        try f.writePages(base + 128 * p, count: 4)
        let first = f.space.expectedVMASnapshot(containing: base)
        let third = f.space.expectedVMASnapshot(containing: base + 128 * p)
        var child: AddressSpace? = nil
        let calls = try f.record { child = try f.space.fork() }
        #expect(calls
            == f.pair(f.range(base, base + 8 * p, .protectionPage, vma: first))
            + f.pair(f.range(base + 128 * p, base + 132 * p, .protectionPage, vma: third)))
        #expect(calls.allSatisfy { $0.range?.onlyDowngradesToReadOnly == true })
        #expect(f.space.translate(base)?.isWritable == false)
        #expect(f.space.translate(base + 64 * p)?.isWritable == true)  // shared: untouched
        child?.teardown()
    }

    @Test func copyOnWriteSendsOnePageClearWithSecondaryTLBFlushInside() throws {
        let f = try EventFixture()
        try f.space.map(length: 8 * p, placement: .fixed(base))
        try f.writePages(base, count: 8, firstToken: 10)
        let child = try f.space.fork()
        let tlb = RecordingNotifier("tlb", callbacks: [.invalidateSecondaryTLBs], log: f.log)
        try f.space.registerNotifier(tlb)
        let vma = f.space.expectedVMASnapshot(containing: base)
        let shared = f.space.translate(base + 3 * p)!.number
        #expect(f.memory.refcount(shared) == 2 && f.memory.mapcount(shared) == 2)

        let calls = try f.record { try f.space.write(99, at: base + 3 * p) }
        let range = f.range(base + 3 * p, base + 4 * p, .clear, vma: vma)
        #expect(calls == [
            .start("rec", range), .secondaryTLB("tlb", start: base + 3 * p, end: base + 4 * p), .end("rec", range),
        ])
        // The parent has a private copy; the child keeps the original.
        let copy = f.space.translate(base + 3 * p)!
        #expect(copy.number != shared && copy.isWritable)
        #expect(try child.read(at: base + 3 * p) == 13)
        #expect(try f.space.read(at: base + 3 * p) == 99)
        #expect(f.memory.refcount(shared) == 1 && f.memory.mapcount(shared) == 1)
        #expect(f.memory.refcount(copy.number) == 1 && f.memory.mapcount(copy.number) == 1)

        // The child's page is now exclusive: its write reuses the frame, no invalidation in the parent.
        #expect(try f.record { try child.write(7, at: base + 3 * p) } == [])
        #expect(child.translate(base + 3 * p)?.number == shared)
        child.teardown()
    }

    @Test func clearSoftDirtySendsSoftDirty() throws {
        let f = try EventFixture()
        try f.space.map(length: 8 * p, placement: .fixed(base))
        try f.writePages(base, count: 8)
        let calls = try f.record { try f.space.clearSoftDirty() }
        #expect(calls == f.pair(f.range(base, base + 8 * p, .softDirty)))
        #expect(calls.first?.range?.onlyDowngradesToReadOnly == true)
        let partial = try f.record { try f.space.clearSoftDirty(address: base + 2 * p, length: 2 * p) }
        #expect(partial == f.pair(f.range(base + 2 * p, base + 4 * p, .softDirty)))
    }

    @Test func migrateSendsMigrateWithTheOwner() throws {
        let f = try EventFixture()
        try f.space.map(length: 8 * p, placement: .fixed(base))
        try f.writePages(base, count: 8)
        let vma = f.space.expectedVMASnapshot(containing: base)
        let owner = InvalidationOwner(rawValue: 42)
        var moved = 0
        let calls = try f.record { moved = try f.space.migrate(address: base + 2 * p, length: 4 * p, owner: owner) }
        #expect(moved == 4)
        #expect(calls == f.pair(f.range(base + 2 * p, base + 6 * p, .migrate, vma: vma, owner: owner)))
        let anonymous = try f.record { _ = try f.space.migrate(address: base, length: p) }
        #expect(anonymous == f.pair(f.range(base, base + p, .migrate, vma: vma, owner: .none)))
    }

    @Test func reclaimSendsClear() throws {
        let f = try EventFixture()
        try f.space.map(length: 8 * p, placement: .fixed(base))
        try f.writePages(base, count: 8)
        let vma = f.space.expectedVMASnapshot(containing: base)
        _ = try f.space.age(address: base, length: 8 * p)  // everything old: one pass suffices
        var evicted = 0
        let calls = try f.record { evicted = try f.space.reclaim(pages: 8) }
        #expect(evicted == 8)
        #expect(calls == f.pair(f.range(base, base + 8 * p, .clear, vma: vma)))
    }

    @Test func collapseSendsClearOverTheHugeBlock() throws {
        let f = try EventFixture()
        try f.space.map(length: huge, placement: .fixed(base))
        try f.writePages(base, count: 512)
        try f.space.advise(address: base, length: huge, advice: .hugePage)
        let vma = f.space.expectedVMASnapshot(containing: base)
        #expect(vma?.flags.contains(.hugePage) == true)
        var collapsed = 0
        let calls = try f.record { collapsed = try f.space.collapse(address: base, length: huge) }
        #expect(collapsed == 1)
        #expect(calls == f.pair(f.range(base, base + huge, .clear, vma: vma)))
        #expect(f.space.audit().hugeMappings == 1)
    }

    @Test func partialUnmapOfAHugeMappingSplitsWithClearThenUnmaps() throws {
        let f = try EventFixture()
        try f.space.map(length: huge, placement: .fixed(base), options: [.hugePage])
        try f.space.write(1, at: base)
        #expect(f.space.audit().hugeMappings == 1)
        let vma = f.space.expectedVMASnapshot(containing: base)
        let calls = try f.record { try f.space.unmap(address: base + 4 * p, length: p) }
        // The split's invalidation carries the VMA the huge mapping belongs to.
        #expect(calls == f.pair(f.range(base, base + huge, .clear, vma: vma))
            + f.pair(f.range(base + 4 * p, base + 5 * p, .unmap)))
        #expect(f.space.audit().hugeMappings == 0)
        #expect(try f.space.read(at: base) == 1)
    }

    @Test func forkSplitsPrivateHugeMappingsFirst() throws {
        let f = try EventFixture()
        try f.space.map(length: huge, placement: .fixed(base), options: [.hugePage])
        try f.space.write(5, at: base + 7 * p)
        let vma = f.space.expectedVMASnapshot(containing: base)
        var child: AddressSpace? = nil
        let calls = try f.record { child = try f.space.fork() }
        #expect(calls
            == f.pair(f.range(base, base + huge, .clear, vma: vma))
            + f.pair(f.range(base, base + huge, .protectionPage, vma: vma)))
        #expect(try child?.read(at: base + 7 * p) == 5)
        child?.teardown()
    }

    @Test func reapSendsNonBlockableUnmapPerVMA() throws {
        let f = try EventFixture()
        try f.space.map(length: 8 * p, placement: .fixed(base))
        try f.writePages(base, count: 8)
        let vma = f.space.expectedVMASnapshot(containing: base)
        var result = ReapResult()
        let calls = try f.record { result = try f.space.reap() }
        #expect(calls == f.pair(f.range(base, base + 8 * p, .unmap, flags: [], vma: vma)))
        #expect(result.pagesReaped == 8 && result.skipped.isEmpty)
    }

    @Test func teardownReleasesIntervalsOnceAndClassicSubscribers() throws {
        let f = try EventFixture()
        try f.space.map(length: 8 * p, placement: .fixed(base))
        try f.writePages(base, count: 8)
        let farHandler = RecordingIntervalHandler("far", log: f.log)
        _ = try f.space.insertIntervalNotifier(start: 0x7000_0000_0000, length: 4 * p, handler: farHandler)
        f.log.drain()
        f.space.teardown()
        let calls = f.log.drain()
        let release = f.range(0, AddressSpace.userLimit, .release)
        // Exactly one release each, first, and nothing after it: teardown removes every interval
        // notifier once released, so the zap that follows (exit_mmap's unmap_vmas) reaches none.
        let near = calls.filter { $0.subscriber == "itv" }.map(\.range)
        #expect(near == [release])
        #expect(f.space.intervalNotifierCount == 0)
        #expect(calls.filter { $0.subscriber == "far" }.map(\.range) == [release])
        #expect(calls.filter { $0.subscriber == "rec" } == [.release("rec", space: f.space.id)])
        // Interval notifiers are released before the classic subscribers.
        #expect(calls.first?.subscriber != "rec")
        #expect(f.memory.framesInUse == 0)
        #expect(f.space.notifiers.isEmpty)
        #expect(f.space.statistics[.invalidationsRelease] >= 1)
    }

    @Test func eventsUnderSingleLockAndRWLockListKnobs() throws {
        // The knobs change locking, not what subscribers see.
        for configuration in [
            AddressSpace.Configuration(faultPath: .mmapLock, notifierList: .rwlock, pageTableLocking: .single),
            AddressSpace.Configuration(notifierList: .rwlock),
        ] {
            let f = try EventFixture(configuration: configuration)
            try f.space.map(length: 8 * p, placement: .fixed(base))
            try f.writePages(base, count: 8)
            let vma = f.space.expectedVMASnapshot(containing: base)
            let calls = try f.record {
                try f.space.advise(address: base, length: 2 * p, advice: .dontNeed)
                try f.space.protect(address: base, length: 8 * p, protection: .read)
                try f.space.unmap(address: base, length: 8 * p)
            }
            let readOnly = VMASnapshot(start: base, end: base + 8 * p, protection: .read, flags: vma!.flags)
            #expect(calls
                == f.pair(f.range(base, base + 2 * p, .clear, vma: vma))
                + f.pair(f.range(base, base + 8 * p, .protectionVMA, vma: readOnly))
                + f.pair(f.range(base, base + 8 * p, .unmap)))
        }
    }
}
