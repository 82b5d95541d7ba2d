import Shootdown
import ShootdownVerification
import Synchronization
import Testing

/// A mirror that is wrong on purpose: it ignores the invalidations `ignores` accepts (it still
/// advances the notifier's sequence, so its commits look correct), and otherwise behaves like
/// ``SoftwareMirror``. The torture oracle must catch it.
final class LeakyMirror: TortureMirror, IntervalNotifierHandler, @unchecked Sendable {
    // @unchecked: `notifier` is written once, in `init`, before the object is shared.
    let name: String
    weak let space: AddressSpace?
    private let table = Mutex<[UInt64: MirrorPage]>([:])
    private let ignores: @Sendable (InvalidationRange) -> Bool
    private var notifier: IntervalNotifier!

    init(name: String, space: AddressSpace, arena: Range<UInt64>, ignores: @escaping @Sendable (InvalidationRange) -> Bool)
        throws
    {
        self.name = name
        self.space = space
        self.ignores = ignores
        notifier = try space.insertIntervalNotifier(
            start: arena.lowerBound, length: UInt64(arena.count), handler: self)
    }

    func populate(address: UInt64, length: UInt64, write: Bool) throws(MemoryError) {
        guard let space else { throw .addressSpaceDead }
        let notifier = self.notifier!
        try space.mirror(address: address, length: length, write: write, notifier: notifier) { pages, sequence in
            table.withLock { table -> MirrorCommit in
                if notifier.readRetry(sequence) { return .retry }
                for page in pages { table[page.address] = page }
                return .committed
            }
        }
    }

    func translations(start: UInt64, end: UInt64) -> [MirrorPage] {
        table.withLock { $0.values.filter { $0.address >= start && $0.address < end } }
    }

    func detach() {
        notifier.remove()
        table.withLock { $0.removeAll() }
    }

    func invalidate(_ notifier: IntervalNotifier, range: InvalidationRange, currentSequence: UInt64) -> Bool {
        let apply = { (table: inout [UInt64: MirrorPage]) in
            notifier.setSequence(currentSequence)
            if range.event != .release && self.ignores(range) { return }
            for (address, page) in table where address >= range.start && address < range.end {
                if range.event != .release && range.onlyDowngradesToReadOnly {
                    table[address]?.writable = false
                } else {
                    table.removeValue(forKey: address)
                    _ = page
                }
            }
        }
        if range.isBlockable {
            table.withLock { apply(&$0) }
            return true
        }
        return table.withLockIfAvailable { apply(&$0) } != nil
    }
}

@Suite struct TortureHarnessTests {
    static func makeSpace() throws -> AddressSpace {
        try AddressSpace(
            configuration: AddressSpace.Configuration(capabilities: [.ipcLock]),
            memory: PhysicalMemory(capacity: 1 << 15, swapSlots: 1 << 14))
    }

    /// Every kind at the same weight: a short run draws each of them many times.
    static let uniformMix = Dictionary(uniqueKeysWithValues: TortureOperation.allCases.map { ($0, 1) })

    /// A short clean run on two threads, against two software mirrors: every operation kind ran,
    /// the oracle compared translations, and it found nothing; every frame and swap slot came back.
    @Test func cleanRunReportsNoViolation() throws {
        let space = try Self.makeSpace()
        let arena = TortureHarness.arena(threads: 2, regionPages: 512)
        let mirrors = try (0..<2).map { _ in
            try SoftwareMirror(space: space, start: arena.lowerBound, length: UInt64(arena.count))
        }
        let report = try TortureHarness.run(TortureHarness.Configuration(
            space: space, threads: 2, seed: 7, operations: 4_000, mix: Self.uniformMix, mirrors: mirrors,
            regionPages: 512))
        #expect(report.violations.isEmpty, "\(report.violations)")
        #expect(report.violationCount == 0)
        #expect(report.operations >= 4_000)
        for kind in TortureOperation.allCases {
            #expect(report.count(of: kind) > 0, "\(kind) never ran")
        }
        #expect(report.translationsChecked > 0)
        #expect(report.classicInvalidations > 0)
        #expect(report.framesInUseAfterTeardown == 0)
        #expect(report.swapSlotsInUseAfterTeardown == 0)
        #expect(space.isTornDown)
    }

    /// A mirror that ignores one kind of invalidation is caught, and only it: the software mirror
    /// in the same run stays clean. One thread, so the run is deterministic.
    @Test(arguments: [
        ("clear", [TortureOperation.mirrorPopulate: 4, .access: 2, .adviseDiscard: 2, .map: 1]),
        ("unmap", [TortureOperation.mirrorPopulate: 4, .access: 2, .unmap: 1, .map: 2]),
        ("protectionVMA", [TortureOperation.mirrorPopulate: 4, .access: 2, .protect: 2, .map: 1]),
        ("softDirty", [TortureOperation.mirrorPopulate: 4, .mirrorWrite: 2, .softDirty: 2, .map: 1]),
        ("migrate", [TortureOperation.mirrorPopulate: 4, .access: 2, .migrate: 2, .map: 1]),
    ])
    func findsAMirrorThatIgnoresAnInvalidation(_ event: String, _ mix: [TortureOperation: Int]) throws {
        let space = try Self.makeSpace()
        let arena = TortureHarness.arena(threads: 1, regionPages: 512)
        let ignored = try #require(InvalidationEvent.allCases.first { "\($0)" == event })
        let leaky = try LeakyMirror(name: "leaky", space: space, arena: arena) { $0.event == ignored }
        let good = try SoftwareMirror(space: space, start: arena.lowerBound, length: UInt64(arena.count))
        let report = try TortureHarness.run(TortureHarness.Configuration(
            space: space, threads: 1, seed: 3, operations: 3_000, mix: mix, mirrors: [leaky, good], regionPages: 512))
        #expect(report.violationCount > 0, "the oracle missed a mirror ignoring \(event)")
        #expect(!report.violations.isEmpty)
        #expect(report.violations.allSatisfy { $0.detail.hasPrefix("leaky ") }, "\(report.violations.filter { !$0.detail.hasPrefix("leaky ") }.prefix(3))")
        #expect(report.violations.allSatisfy { $0.seed == 3 && $0.thread == 0 && $0.step > 0 })
        #expect(report.framesInUseAfterTeardown == 0)
    }

    /// Bad configurations throw instead of running.
    @Test func rejectsBadConfigurations() throws {
        let space = try Self.makeSpace()
        #expect(throws: MemoryError.invalidArgument) {
            try TortureHarness.run(TortureHarness.Configuration(space: space))  // no budget
        }
        #expect(throws: MemoryError.invalidArgument) {
            try TortureHarness.run(TortureHarness.Configuration(space: space, operations: 10, regionPages: 100))
        }
        #expect(throws: MemoryError.invalidArgument) {
            try TortureHarness.run(TortureHarness.Configuration(space: space, threads: 0, operations: 10))
        }
        for seconds in [Double.nan, .infinity, -1, 1e300] {
            #expect(throws: MemoryError.invalidArgument) {
                try TortureHarness.run(TortureHarness.Configuration(space: space, seconds: seconds))
            }
        }
        #expect(throws: MemoryError.invalidArgument) {
            try TortureHarness.run(TortureHarness.Configuration(
                space: space, threads: 4096, operations: 10, arenaStart: UInt64.max & ~((2 << 20) - 1)))
        }
        try space.map(length: 4096, placement: .fixed(TortureHarness.defaultArenaStart))
        #expect(throws: MemoryError.alreadyExists) {
            try TortureHarness.run(TortureHarness.Configuration(space: space, operations: 10))
        }
        space.teardown()
    }
}
