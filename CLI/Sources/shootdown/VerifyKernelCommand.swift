import ArgumentParser
import Foundation
import Shootdown
import ShootdownVerification

/// `shootdown verify-kernel`: the live kernel oracle. Random memory syscalls run on a real child
/// process of this machine's kernel and on the engine, compared after every operation (outcome,
/// mappings with their smaps flags, page residency, touched contents). Prints the kernel version,
/// the engine configuration derived from the child, the coverage table and every divergence with a
/// shrunk reproducer; exits 1 on any mismatch.
struct VerifyKernel: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify-kernel",
        abstract: "Compare the engine with this machine's kernel on random memory syscalls.",
        discussion: """
            Seeds S, S+1, ... S+K-1 each run --ops operations (seeds run in parallel, --jobs at a \
            time). A divergence is shrunk to the shortest operation list that still shows it, printed \
            as Swift KernelOp literals. Ctrl-C stops after the current operation and reports.
            """)

    @Option(help: "Operations per seed.") var ops = 20_000
    @Option(help: "First seed.") var seed: UInt64 = 1
    @Option(help: "Number of seeds.") var seeds = 1
    @Option(help: "Seeds run at once (default: one per CPU).") var jobs = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "Replays the shrinker may spend per divergence (0: no shrinking).") var shrinkReplays = 200
    @Flag(help: "One JSON object.") var json = false

    func validate() throws {
        guard ops > 0, seeds > 0, jobs > 0, shrinkReplays >= 0 else {
            throw ValidationError("--ops, --seeds and --jobs must be positive, --shrink-replays not negative")
        }
    }

    func run() throws {
        installInterruptHandler()
        progressEnabled = !json
        let probe = try OracleSession()
        let facts = probe.facts
        let configuration = probe.configuration
        probe.close()

        let started = nowNanoseconds()
        let results = Results()
        let seedList = (0..<seeds).map { seed &+ UInt64($0) }
        let ops = self.ops
        let shrinkReplays = self.shrinkReplays
        let workers = min(jobs, seeds)
        DispatchQueue.concurrentPerform(iterations: workers) { worker in
            for seed in seedList.enumerated().filter({ $0.offset % workers == worker }).map(\.element) where !interrupted {
                var options = Oracle.RunOptions(seed: seed, operations: ops)
                options.shrink = shrinkReplays > 0
                options.shrinkReplays = shrinkReplays
                options.shouldStop = { interrupted }
                do {
                    let report = try Oracle.run(options)
                    progress(
                        "seed \(seed): \(report.operations) operations, \(report.sessions) sessions, "
                            + "\(report.divergences.count) kinds of divergence, \(report.nanoseconds / 1_000_000) ms")
                    results.add(report)
                } catch {
                    progress("seed \(seed): the oracle failed: \(error)")
                    results.fail("seed \(seed): \(error)")
                }
            }
        }
        let elapsed = nowNanoseconds() - started
        let (coverage, divergences, failures, operations) = results.snapshot()
        if interrupted { progress("interrupted: reporting what ran") }
        if json {
            print(Self.json(facts, configuration, coverage, divergences, failures, operations, elapsed))
        } else {
            print(Self.text(facts, configuration, coverage, divergences, failures, operations, elapsed))
        }
        if !divergences.isEmpty || !failures.isEmpty { throw ExitCode(1) }
    }

    /// Reports of all seeds, merged (first divergence of each signature across seeds).
    final class Results: @unchecked Sendable {
        private let lock = NSLock()
        private var coverage = OracleCoverage()
        private var divergences: [String: Divergence] = [:]
        private var failures: [String] = []
        private var operations = 0

        func add(_ report: Oracle.Report) {
            lock.withLock {
                coverage.merge(report.coverage)
                operations += report.operations
                for divergence in report.divergences {
                    let known = divergences[divergence.signature]
                    if known == nil || divergence.reproducer.count < known!.reproducer.count {
                        divergences[divergence.signature] = divergence
                    }
                }
            }
        }

        func fail(_ message: String) { lock.withLock { failures.append(message) } }

        func snapshot() -> (OracleCoverage, [Divergence], [String], Int) {
            lock.withLock {
                (coverage, divergences.values.sorted { $0.signature < $1.signature }, failures, operations)
            }
        }
    }

    static func configurationLines(_ configuration: AddressSpace.Configuration) -> [(String, String)] {
        [
            ("mmapBase", hex(configuration.mmapBase)), ("mmapMinAddress", hex(configuration.mmapMinAddress)),
            ("hintMinAddress", hex(configuration.hintMinAddress)), ("maxMapCount", "\(configuration.maxMapCount)"),
            ("lockedMemoryLimit", configuration.lockedMemoryLimit.map { "\($0)" } ?? "unlimited"),
            ("capabilities", configuration.capabilities.isEmpty ? "none" : "\(configuration.capabilities.rawValue)"),
            ("stackLimit", "\(configuration.stackLimit)"),
            ("programBreakStart", configuration.programBreakStart.map(hex) ?? "none"),
        ]
    }

    static func text(
        _ facts: LinuxFacts, _ configuration: AddressSpace.Configuration, _ coverage: OracleCoverage,
        _ divergences: [Divergence], _ failures: [String], _ operations: Int, _ elapsed: UInt64
    ) -> String {
        var lines = ["kernel    Linux \(facts.kernelRelease) (child uid \(facts.uid), THP \(facts.transparentHugePages ?? "absent"))"]
        lines.append("engine    " + configurationLines(configuration).map { "\($0.0)=\($0.1)" }.joined(separator: " "))
        lines.append(
            "run       \(operations) operations in \(String(format: "%.1f", Double(elapsed) / 1e9)) s, "
                + "\(coverage.totalMismatches) mismatching, \(divergences.count) kinds of divergence")
        lines.append("")
        lines.append(coverage.table)
        for failure in failures { lines.append("\nFAILED: " + failure) }
        for divergence in divergences { lines.append("\n" + divergence.report) }
        return lines.joined(separator: "\n")
    }

    static func json(
        _ facts: LinuxFacts, _ configuration: AddressSpace.Configuration, _ coverage: OracleCoverage,
        _ divergences: [Divergence], _ failures: [String], _ operations: Int, _ elapsed: UInt64
    ) -> String {
        let document = Document(
            kernel: facts.kernelRelease,
            configuration: Dictionary(uniqueKeysWithValues: configurationLines(configuration)),
            operations: operations, seconds: Double(elapsed) / 1e9,
            coverage: coverage.rows.map { key, row in
                Document.Row(
                    operation: key, calls: row.calls, successes: row.successes, mismatches: row.mismatches,
                    errors: Dictionary(uniqueKeysWithValues: row.errors.map { (OracleCoverage.errorName($0.key), $0.value) }))
            }.sorted { $0.operation < $1.operation },
            divergences: divergences.map { divergence in
                Document.Entry(
                    signature: divergence.signature, seed: divergence.seed, operation: divergence.step.op,
                    linux: divergence.step.linux.description, engine: divergence.step.engine.description,
                    differences: divergence.step.differences.map(\.description), reproducer: divergence.reproducer,
                    literal: divergence.reproducer.swiftLiteral)
            },
            failures: failures)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        guard let data = try? encoder.encode(document) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }

    struct Document: Encodable {
        struct Row: Encodable {
            var operation: String
            var calls: Int
            var successes: Int
            var mismatches: Int
            var errors: [String: Int]
        }
        struct Entry: Encodable {
            var signature: String
            var seed: UInt64?
            var operation: KernelOp
            var linux: String
            var engine: String
            var differences: [String]
            var reproducer: [KernelOp]
            var literal: String
        }
        var kernel: String
        var configuration: [String: String]
        var operations: Int
        var seconds: Double
        var coverage: [Row]
        var divergences: [Entry]
        var failures: [String]
    }
}

private func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
