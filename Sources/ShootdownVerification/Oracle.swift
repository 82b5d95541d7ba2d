/// Runs generated operations on a kernel child and the engine, and reports every way they differ.
public enum Oracle {
    /// Settings of a run.
    public struct RunOptions: Sendable {
        public var seed: UInt64
        public var operations: Int
        public var session = OracleOptions()
        public var capabilities = EngineCapabilities.current
        /// A fresh session (new child, new engine space) after this many operations, so state
        /// (sealed ranges, locked memory) does not pile up.
        public var sessionLength = 1500
        /// Shrink each divergence whose signature is new in this run (and that `shouldShrink`
        /// accepts).
        public var shrink = true
        /// Replays the shrinker may spend on one divergence.
        public var shrinkReplays = 250
        /// Stop at the first divergence instead of continuing in a fresh session.
        public var stopAtFirstDivergence = false
        /// Asked before every operation: true ends the run early (the report covers what ran).
        public var shouldStop: (@Sendable () -> Bool)? = nil
        /// Told every operation before it runs, with its index in its session (0 starts a new
        /// session): a journal that survives the engine crashing the process.
        public var willRun: (@Sendable (_ op: KernelOp, _ indexInSession: Int) -> Void)? = nil
        /// Told the report so far after every session.
        public var sessionEnded: (@Sendable (Report) -> Void)? = nil

        public init(seed: UInt64, operations: Int) {
            self.seed = seed
            self.operations = operations
        }
    }

    /// What a run did and found.
    public struct Report: Sendable {
        public var seed: UInt64
        public var operations = 0
        public var sessions = 0
        public var coverage = OracleCoverage()
        /// The first divergence of each signature.
        public var divergences: [Divergence] = []
        /// Divergences whose signature was already reported.
        public var repeats = 0
        /// Residency left uncompared on THP-unsettled pages: pages scanned, and pages where the
        /// two sides differed (``OracleSession/unsettledPagesScanned``).
        public var unsettledPagesScanned = 0
        public var unsettledPagesDiffering = 0
        /// Pages of shared memory Linux's own reclaim dropped and the engine followed
        /// (``OracleSession/hostReclaimsFollowed``).
        public var hostReclaimsFollowed = 0
        public var nanoseconds: UInt64 = 0
    }

    /// Runs `options.operations` generated operations. `shouldShrink` decides whether a new
    /// divergence is worth shrinking (a known one need not be).
    public static func run(_ options: RunOptions, shouldShrink: (Divergence) -> Bool = { _ in true })
        throws(OracleError) -> Report
    {
        let clock = ContinuousClock()
        let started = clock.now
        var report = Report(seed: options.seed)
        var generator = OracleGenerator(seed: options.seed, capabilities: options.capabilities)
        var signatures: Set<String> = []
        func stopping() -> Bool { options.shouldStop?() ?? false }
        while report.operations < options.operations && !stopping() {
            let session = try OracleSession(options: options.session)
            defer { session.close() }
            report.sessions += 1
            var operations: [KernelOp] = []
            while report.operations < options.operations && operations.count < options.sessionLength && !stopping() {
                let view = OracleGenerator.View(
                    layout: session.layout, facts: session.facts, mappings: session.currentMappings,
                    processCount: session.processCount)
                let op = generator.next(view)
                options.willRun?(op, operations.count)
                operations.append(op)
                let step = try session.step(op)
                report.operations += 1
                report.coverage.record(step)
                if step.differences.isEmpty { continue }
                var divergence = Divergence(
                    seed: options.seed, operations: operations, step: step, reproducer: operations,
                    reproducerStep: step)
                if signatures.insert(divergence.signature).inserted {
                    session.close()
                    if options.shrink && shouldShrink(divergence) {
                        divergence = try shrink(divergence, options: options.session, replays: options.shrinkReplays)
                    }
                    report.divergences.append(divergence)
                } else {
                    report.repeats += 1
                }
                break
            }
            report.unsettledPagesScanned += session.unsettledPagesScanned
            report.unsettledPagesDiffering += session.unsettledPagesDiffering
            report.hostReclaimsFollowed += session.hostReclaimsFollowed
            options.sessionEnded?(report)
            if options.stopAtFirstDivergence && !report.divergences.isEmpty { break }
        }
        let elapsed = clock.now - started
        report.nanoseconds = UInt64(elapsed.components.seconds) * 1_000_000_000
            + UInt64(elapsed.components.attoseconds / 1_000_000_000)
        return report
    }

    /// The result of replaying a list of operations.
    public struct Replay: Sendable {
        /// The steps run (up to and including the first that diverged).
        public var steps: [OracleStep]
        /// The first step that diverged, if any.
        public var divergence: OracleStep? { steps.last.flatMap { $0.differences.isEmpty ? nil : $0 } }
    }

    /// Replays `operations` on a fresh session, stopping at the first divergence.
    public static func replay(_ operations: [KernelOp], options: OracleOptions = OracleOptions())
        throws(OracleError) -> Replay
    {
        let session = try OracleSession(options: options)
        defer { session.close() }
        var steps: [OracleStep] = []
        for op in operations {
            let step = try session.step(op)
            steps.append(step)
            if !step.differences.isEmpty { break }
        }
        return Replay(steps: steps)
    }

    /// Shrinks `divergence.operations` (``Shrinker``): the shortest list found, within `replays`
    /// replays on fresh sessions, whose first divergence has the same signature.
    public static func shrink(_ divergence: Divergence, options: OracleOptions, replays: Int) throws(OracleError)
        -> Divergence
    {
        let signature = divergence.signature
        var lastStep = divergence.step
        let best = try Shrinker.minimize(divergence.operations, budget: replays) {
            (candidate: [KernelOp]) throws(OracleError) -> [KernelOp]? in
            let result = try replay(candidate, options: options)
            guard let step = result.divergence, Divergence.signature(step) == signature else { return nil }
            lastStep = step
            return Array(candidate.prefix(result.steps.count))
        }
        var shrunk = divergence
        shrunk.reproducer = best
        if best.count < divergence.operations.count { shrunk.reproducerStep = lastStep }
        return shrunk
    }
}
