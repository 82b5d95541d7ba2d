import CInterop
import Shootdown
import Testing
@testable import ShootdownVerification

/// The live kernel oracle: random memory syscalls on a real process and on the engine, compared
/// after every operation.
@Suite struct KernelOracleTests {
    /// The bounded run: `operations` operations for each seed (about 20 000 in all).
    static let seeds: [UInt64] = [1, 2, 3, 4, 5, 6, 7, 8]
    static let operations = 2_500

    @Test(arguments: seeds)
    func randomOperationsMatchTheKernel(seed: UInt64) throws {
        var options = Oracle.RunOptions(seed: seed, operations: Self.operations)
        options.shrinkReplays = 120
        // Known divergences need no shrinking (their reproducer is in the list).
        let report = try Oracle.run(options) { KnownDivergence.matching($0.signature) == nil }
        print(
            "oracle seed \(seed): \(report.operations) operations in \(report.nanoseconds / 1_000_000) ms, "
                + "\(report.sessions) sessions, \(report.divergences.count) divergence kinds, \(report.repeats) repeats")
        #expect(report.operations == Self.operations)
        for divergence in report.divergences {
            if let known = KnownDivergence.matching(divergence.signature) {
                withKnownIssue(Comment(rawValue: "\(known.owner): \(known.note)")) {
                    Issue.record(Comment(rawValue: divergence.report))
                }
            } else if try !Self.reproduces(divergence) {
                // The engine is deterministic: a session that does not diverge again when replayed
                // operation for operation met something Linux does not repeat (the child runs on
                // one CPU, so the per-CPU LRU batches are no longer such a thing; see
                // docs/kernel-oracle.md). Reported, but it does not fail the run.
                withKnownIssue("did not reproduce on two replays: Linux-side nondeterminism", isIntermittent: true) {
                    Issue.record(Comment(rawValue: divergence.report))
                }
            } else {
                Issue.record(Comment(rawValue: divergence.report))
            }
        }
    }

    /// Whether replaying the divergence's session (every operation up to the one that diverged)
    /// on a fresh session diverges again with the same signature, in one of two tries.
    static func reproduces(_ divergence: Divergence) throws -> Bool {
        for _ in 0..<2 {
            let replay = try Oracle.replay(divergence.operations)
            if let step = replay.divergence, Divergence.signature(step) == divergence.signature { return true }
        }
        return false
    }

    /// Each known divergence's reproducer still diverges the way it says; once the engine matches
    /// Linux here, this fails ("known issue not recorded") and the entry must go.
    @Test(arguments: KnownDivergence.all)
    func knownDivergenceReproduces(_ known: KnownDivergence) throws {
        let replay = try Oracle.replay(known.reproducer)
        guard let step = replay.divergence else {
            withKnownIssue(Comment(rawValue: "\(known.owner): \(known.note)")) {}
            return
        }
        let signature = Divergence.signature(step)
        let divergence = Divergence(
            seed: nil, operations: Array(known.reproducer.prefix(replay.steps.count)), step: step,
            reproducer: known.reproducer, reproducerStep: step)
        if known.matches(signature) {
            withKnownIssue(Comment(rawValue: "\(known.owner): \(known.note)")) {
                Issue.record(Comment(rawValue: divergence.report))
            }
        } else {
            Issue.record(Comment(rawValue: "the reproducer now diverges differently:\n" + divergence.report))
        }
    }

    /// The oracle catches a deliberately miswired engine, and shrinks the noise around it away.
    @Test func catchesAMiswiredEngineAndShrinksToTheCause() throws {
        var options = OracleOptions()
        // The engine believes hints are raised to 128 KiB; the kernel raises them to its own floor.
        options.engineAdjustment = { $0.hintMinAddress = 0x20000 }
        let noise: [KernelOp] = [
            .mmap(.absolute(0), length: 0x4000, protection: 3, flags: 0x22), .write(.window(-0x4000), value: 5),
            .mprotect(.window(-0x4000), length: 0x1000, protection: 1), .read(.window(-0x3000)),
        ]
        let cause = KernelOp.mmap(.absolute(0x2000), length: 0x1000, protection: 3, flags: 0x22)
        let operations = noise + [cause] + noise
        let replay = try Oracle.replay(operations, options: options)
        let step = try #require(replay.divergence)
        #expect(step.op == cause)
        let divergence = Divergence(
            seed: nil, operations: Array(operations.prefix(replay.steps.count)), step: step,
            reproducer: operations, reproducerStep: step)
        #expect(divergence.signature == "mmap outcome: both success, different values")
        let shrunk = try Oracle.shrink(divergence, options: options, replays: 40)
        #expect(shrunk.reproducer == [cause])
        // Correctly wired, the same operations agree.
        #expect(try Oracle.replay(operations).divergence == nil)
    }

    /// mincore may run on from the window into the child's own memory (it only reads); the pages
    /// of the initial mappings, which the engine's mirror does not have, are not compared, the
    /// window's are.
    @Test func mincoreIntoTheChildsOwnMappingsComparesTheWindowOnly() throws {
        let session = try OracleSession()
        defer { session.close() }
        _ = try session.step(.mmap(.absolute(0), length: 0x4000, protection: 3, flags: 0x22))
        _ = try session.step(.write(.window(-0x4000), value: 1))
        let step = try session.step(.mincore(.window(-0x4000), length: 0x40_0000))
        guard case .residency(let pages) = step.linux else {
            Issue.record("mincore failed: \(step.linux)")
            return
        }
        #expect(pages.prefix(4) == [true, false, false, false])
        #expect(pages.dropFirst(4).contains(true))  // the child's own pages
        #expect(step.differences.isEmpty)
    }

    /// A content difference is caught too: the engine forgets what a page held.
    @Test func catchesLostContents() throws {
        let session = try OracleSession()
        defer { session.close() }
        _ = try session.step(.mmap(.absolute(0), length: 0x2000, protection: 3, flags: 0x22))
        _ = try session.step(.write(.window(-0x2000), value: 0x1234))
        // Behind the oracle's back, the engine drops the page.
        try session.processes[0].engine.space.advise(address: session.layout.windowTop - 0x2000, length: 0x1000, advice: .dontNeed)
        let step = try session.step(.read(.window(-0x2000)))
        #expect(step.differences.contains(.outcome(linux: .loaded(0x1234), engine: .loaded(0))))
    }

    /// Linux's reclaim drops a clean page of shared memory that nothing maps at any moment (this
    /// machine's DAMON `pageout` scheme does it about a minute after a region goes cold), so the
    /// oracle follows it instead of reporting "engine resident, Linux not" (seeds 28, 39, 43, 61,
    /// 75, 87, 99 and 100 of the 1M-operation run, none of which replayed). Here the drop is made
    /// deterministic: the Linux child pages the page out behind the oracle's back while it is
    /// mapped once, and the session's `MADV_DONTNEED` then unmaps the engine's copy.
    @Test func hostReclaimOfAnUnmappedSharedPageIsFollowed() throws {
        let session = try OracleSession()
        defer { session.close() }
        _ = try session.step(.mmap(.absolute(0), length: 0x2000, protection: 3, flags: 0x21))
        _ = try session.step(.read(.window(-0x2000)))
        let page = session.layout.windowTop - 0x2000
        let linux = session.processes[0].linux
        #expect(try linux.syscall(.madvise, [page, 0x1000, 21]) == 0)  // MADV_PAGEOUT, Linux only
        try #require(try linux.mincore(address: page, length: 0x1000).vector == [0])
        let step = try session.step(.madvise(.window(-0x2000), length: 0x1000, advice: 4))  // MADV_DONTNEED
        #expect(step.differences.isEmpty, "\(step.differences)")
        #expect(session.hostReclaimsFollowed == 1)
        // A page the engine still maps is not followed: the difference stands.
        _ = try session.step(.read(.window(-0x1000)))
        #expect(try linux.syscall(.madvise, [page + 0x1000, 0x1000, 21]) == 0)
        let kept = try session.step(.mincore(.window(-0x2000), length: 0x2000))
        #expect(kept.differences.contains { $0.category == "residency" || $0.category == "outcome" })
        #expect(session.hostReclaimsFollowed == 1)
    }

    /// A page that an operation drops itself is never put down to the host's reclaim: inside the
    /// range of a page-out the engine must match Linux on its own (review: following there would
    /// hide a page-out bug). Here the engine is made to miss the page-out: behind the oracle's
    /// back it unmaps the page first, so its page-out finds nothing mapped and keeps the page,
    /// while Linux drops it. The difference must stand.
    @Test func hostReclaimIsNotFollowedInsideAPageOut() throws {
        let session = try OracleSession()
        defer { session.close() }
        _ = try session.step(.mmap(.absolute(0), length: 0x2000, protection: 3, flags: 0x21))
        _ = try session.step(.read(.window(-0x2000)))
        let page = session.layout.windowTop - 0x2000
        try session.processes[0].engine.space.advise(address: page, length: 0x1000, advice: .dontNeed)  // engine only
        let step = try session.step(.madvise(.window(-0x2000), length: 0x1000, advice: 21))  // MADV_PAGEOUT
        try #require(try session.processes[0].linux.mincore(address: page, length: 0x1000).vector == [0])
        #expect(step.differences.contains { $0.category == "residency" }, "\(step.differences)")
        #expect(session.hostReclaimsFollowed == 0)
    }
}
