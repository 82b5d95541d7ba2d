import ArgumentParser
import Foundation
import Shootdown
import ShootdownVerification

/// `shootdown verify-kernel`: the live kernel oracle. Random memory syscalls run on a real child
/// process of this machine's kernel and on the engine, compared after every operation (outcome,
/// mappings with their smaps flags, page residency, touched contents). Prints the kernel version,
/// the engine configuration derived from the child, the coverage table and every divergence with a
/// shrunk reproducer; exits 1 on any mismatch.
///
/// Each seed runs in a worker process (this command again, with `--worker`), so an engine that
/// crashes takes one seed down, not the run: the worker journals every operation before it runs,
/// and the crashing session's operations are reported as the reproducer.
struct VerifyKernel: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify-kernel",
        abstract: "Compare the engine with this machine's kernel on random memory syscalls.",
        discussion: """
            Seeds S, S+1, ... S+K-1 each run --ops operations, --jobs at a time. A divergence is \
            shrunk to the shortest operation list that still shows it, printed as Swift KernelOp \
            literals. Ctrl-C stops after the current operation and reports what ran.
            """)

    @Option(help: "Operations per seed.") var ops = 20_000
    @Option(help: "First seed.") var seed: UInt64 = 1
    @Option(help: "Number of seeds.") var seeds = 1
    @Option(help: "Seeds run at once (default: one per CPU).") var jobs = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "Replays the shrinker may spend per divergence (0: no shrinking).") var shrinkReplays = 150
    @Option(help: "Compare every page's residency every N operations (1: after each; a divergence found at a periodic check began in the N operations before it).")
    var fullCheckInterval = 16
    @Flag(help: "One JSON object.") var json = false
    @Flag(help: .hidden) var worker = false
    @Option(help: .hidden) var journal: String?
    @Option(help: .hidden) var progressFile: String?
    @Option(help: .hidden) var cpu: UInt32?

    func validate() throws {
        guard ops > 0, seeds > 0, jobs > 0, fullCheckInterval > 0, shrinkReplays >= 0 else {
            throw ValidationError(
                "--ops, --seeds, --jobs and --full-check-interval must be positive, --shrink-replays not negative")
        }
    }

    func run() throws {
        installInterruptHandler()
        if worker {
            try runWorker()
            return
        }
        progressEnabled = !json
        let probe = try OracleSession()
        let facts = probe.facts
        let configuration = probe.configuration
        probe.close()

        let started = nowNanoseconds()
        let merged = Merged()
        let seedList = (0..<seeds).map { seed &+ UInt64($0) }
        let workers = min(jobs, seeds)
        DispatchQueue.concurrentPerform(iterations: workers) { slot in
            for (index, seed) in seedList.enumerated() where index % workers == slot && !interrupted {
                for report in runSeed(seed, cpu: UInt32(slot)) { merged.add(report) }
            }
        }
        let elapsed = nowNanoseconds() - started
        if interrupted { progress("interrupted: reporting what ran") }
        let result = merged.snapshot()
        print(json ? Self.json(facts, configuration, result, elapsed) : Self.text(facts, configuration, result, elapsed))
        if !result.divergences.isEmpty || !result.failures.isEmpty || result.crashCount > 0 { throw ExitCode(1) }
    }

    // MARK: - Worker

    /// One seed in this process: the report as JSON on stdout, the journal in `journal`.
    private func runWorker() throws {
        var options = Oracle.RunOptions(seed: seed, operations: ops)
        options.shrink = shrinkReplays > 0
        options.shrinkReplays = shrinkReplays
        options.shouldStop = { interrupted }
        // Each worker's children on a CPU of their own (while there are enough): see
        // `LinuxProcess.Options.cpu`.
        options.session.process.cpu = cpu
        options.session.fullContentCheckInterval = fullCheckInterval
        if let journal {
            let writer = try Journal(path: journal)
            options.willRun = { op, index in writer.write(op, startsSession: index == 0) }
        }
        if let progressFile {
            // What ran so far, after every session: survives a crash in the next one.
            options.sessionEnded = { report in
                guard let data = try? JSONEncoder().encode(WorkerReport(report)) else { return }
                try? data.write(to: URL(fileURLWithPath: progressFile), options: .atomic)
            }
        }
        let report = try Oracle.run(options)
        FileHandle.standardOutput.write(try JSONEncoder().encode(WorkerReport(report)))
    }

    /// The operations of the current session, one JSON object per line (rewritten at each new
    /// session).
    final class Journal: @unchecked Sendable {
        private let handle: FileHandle
        private let encoder = JSONEncoder()

        init(path: String) throws {
            FileManager.default.createFile(atPath: path, contents: nil)
            guard let handle = FileHandle(forWritingAtPath: path) else {
                throw ValidationError("cannot write the journal \(path)")
            }
            self.handle = handle
        }

        func write(_ op: KernelOp, startsSession: Bool) {
            if startsSession {
                try? handle.truncate(atOffset: 0)
                try? handle.seek(toOffset: 0)
            }
            guard let line = try? encoder.encode(op) else { return }
            handle.write(line + Data("\n".utf8))
        }

        static func read(_ path: String) -> [KernelOp] {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
            return text.split(separator: "\n").compactMap { try? JSONDecoder().decode(KernelOp.self, from: Data($0.utf8)) }
        }
    }

    /// Runs one seed in worker processes. When the engine crashes a worker, what it reported
    /// before the crashing session counts, the crash is a failure (with that session's operations
    /// from the journal), and the seed goes on in a new worker with a stream derived from the seed
    /// and the number of crashes, for the operations left.
    private func runSeed(_ seed: UInt64, cpu: UInt32) -> [WorkerReport] {
        var reports: [WorkerReport] = []
        var remaining = ops
        var crashes: UInt64 = 0
        while remaining > 0 && !interrupted && crashes < 100 {
            var derived = SplitMix64(seed: seed ^ (crashes &* 0x9E37_79B9_7F4A_7C15))
            let stream = crashes == 0 ? seed : derived.next()
            let (report, crash) = runWorkerProcess(stream, operations: remaining, label: seed, cpu: cpu)
            reports.append(report)
            guard let crash else { break }
            crashes += 1
            remaining -= max(1, report.operations + crash.operations.count)
        }
        return reports
    }

    /// A worker's crash: the error it printed and the operations of the session it died in.
    struct Crash {
        var message: String
        var operations: [KernelOp]
    }

    /// One worker process: its report, and how it died if it did (the report is then what it
    /// wrote after its last complete session).
    private func runWorkerProcess(_ stream: UInt64, operations: Int, label seed: UInt64, cpu: UInt32)
        -> (WorkerReport, Crash?)
    {
        let base = FileManager.default.temporaryDirectory
            .appendingPathComponent("shootdown-oracle-\(ProcessInfo.processInfo.processIdentifier)-\(stream)").path
        let journal = base + ".journal"
        let progressPath = base + ".progress"
        defer {
            try? FileManager.default.removeItem(atPath: journal)
            try? FileManager.default.removeItem(atPath: progressPath)
        }
        var empty = WorkerReport(seed: stream, operations: 0, sessions: 0, nanoseconds: 0, coverage: OracleCoverage(), divergences: [])
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe")
        process.arguments = [
            "verify-kernel", "--worker", "--seed", "\(stream)", "--ops", "\(operations)", "--shrink-replays",
            "\(shrinkReplays)", "--full-check-interval", "\(fullCheckInterval)", "--journal", journal, "--progress-file", progressPath, "--cpu", "\(cpu)",
        ]
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        do {
            try process.run()
        } catch {
            empty.failures = ["seed \(seed): could not start a worker: \(error)"]
            return (empty, nil)
        }
        // Drain stderr while reading stdout (a full pipe would block the worker).
        let errorText = Locked("")
        let drained = DispatchSemaphore(value: 0)
        Thread {
            let data = errors.fileHandleForReading.readDataToEndOfFile()
            errorText.set(String(decoding: data, as: UTF8.self))
            drained.signal()
        }.start()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        drained.wait()
        if process.terminationReason == .exit && process.terminationStatus == 0,
            let report = try? JSONDecoder().decode(WorkerReport.self, from: data)
        {
            progress(
                "seed \(seed) (stream \(stream)): \(report.operations) operations, \(report.sessions) sessions, "
                    + "\(report.divergences.count) kinds of divergence, \(report.nanoseconds / 1_000_000) ms")
            return (report, nil)
        }
        var partial = (try? Data(contentsOf: URL(fileURLWithPath: progressPath)))
            .flatMap { try? JSONDecoder().decode(WorkerReport.self, from: $0) } ?? empty
        let session = Journal.read(journal)
        let how = process.terminationReason == .uncaughtSignal
            ? "killed by signal \(process.terminationStatus)" : "exited with status \(process.terminationStatus)"
        let message = errorText.value.split(separator: "\n").first.map(String.init) ?? ""
        var text = "seed \(seed) (stream \(stream)): the worker \(how) after \(partial.operations + session.count) operations: \(message)"
        if let last = session.last {
            text += "\n  during: \(last)\n  its session's operations (\(session.count), not shrunk):\n"
                + session.swiftLiteral.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n")
        }
        progress(text.split(separator: "\n").prefix(2).joined(separator: "\n"))
        partial.crashes = [CrashEntry(key: session.last?.coverageKey ?? "start", message: message, report: text, length: session.count)]
        return (partial, Crash(message: message, operations: session))
    }

    // MARK: - Reports

    struct Entry: Codable {
        var signature: String
        var seed: UInt64?
        var operation: KernelOp
        var linux: String
        var engine: String
        var differences: [String]
        var reproducer: [KernelOp]
        var literal: String
        var report: String

        init(_ divergence: Divergence) {
            signature = divergence.signature
            seed = divergence.seed
            operation = divergence.step.op
            linux = divergence.step.linux.description
            engine = divergence.step.engine.description
            differences = divergence.step.differences.map(\.description)
            reproducer = divergence.reproducer
            literal = divergence.reproducer.swiftLiteral
            report = divergence.report
        }
    }

    /// An engine crash: the operation's coverage key and the first line of what the runtime
    /// printed identify it; the shortest journal is kept.
    struct CrashEntry: Codable {
        var key: String
        var message: String
        var report: String
        var length: Int
    }

    struct WorkerReport: Codable {
        var seed: UInt64
        var operations: Int
        var sessions: Int
        var nanoseconds: UInt64
        var coverage: OracleCoverage
        var divergences: [Entry]
        var failures: [String] = []
        var crashes: [CrashEntry] = []
        var unsettledPagesScanned = 0
        var unsettledPagesDiffering = 0
        var hostReclaimsFollowed = 0

        init(
            seed: UInt64, operations: Int, sessions: Int, nanoseconds: UInt64, coverage: OracleCoverage,
            divergences: [Entry]
        ) {
            self.seed = seed
            self.operations = operations
            self.sessions = sessions
            self.nanoseconds = nanoseconds
            self.coverage = coverage
            self.divergences = divergences
        }

        init(_ report: Oracle.Report) {
            self.init(
                seed: report.seed, operations: report.operations, sessions: report.sessions,
                nanoseconds: report.nanoseconds, coverage: report.coverage, divergences: report.divergences.map(Entry.init))
            unsettledPagesScanned = report.unsettledPagesScanned
            unsettledPagesDiffering = report.unsettledPagesDiffering
            hostReclaimsFollowed = report.hostReclaimsFollowed
        }
    }

    /// All seeds' reports merged: coverage summed, the shortest reproducer of each signature.
    final class Merged: @unchecked Sendable {
        struct Result {
            var coverage = OracleCoverage()
            var operations = 0
            var divergences: [Entry] = []
            var failures: [String] = []
            var crashes: [CrashEntry] = []
            var crashCount = 0
            var unsettledPagesScanned = 0
            var unsettledPagesDiffering = 0
            var hostReclaimsFollowed = 0
        }
        private let lock = NSLock()
        private var result = Result()
        private var bySignature: [String: Entry] = [:]
        private var byCrash: [String: CrashEntry] = [:]

        func add(_ report: WorkerReport) {
            lock.withLock {
                result.coverage.merge(report.coverage)
                result.operations += report.operations
                result.failures += report.failures
                result.unsettledPagesScanned += report.unsettledPagesScanned
                result.unsettledPagesDiffering += report.unsettledPagesDiffering
                result.hostReclaimsFollowed += report.hostReclaimsFollowed
                for entry in report.divergences {
                    if let kept = bySignature[entry.signature], kept.reproducer.count <= entry.reproducer.count { continue }
                    bySignature[entry.signature] = entry
                }
                for crash in report.crashes {
                    result.crashCount += 1
                    // The message without its numbers (allocation sizes, addresses) names the kind.
                    let key = crash.key + ": " + String(crash.message.filter { !$0.isNumber })
                    if let kept = byCrash[key], kept.length <= crash.length { continue }
                    byCrash[key] = crash
                }
            }
        }

        func snapshot() -> Result {
            lock.withLock {
                var copy = result
                copy.divergences = bySignature.values.sorted { $0.signature < $1.signature }
                copy.crashes = byCrash.values.sorted { $0.key < $1.key }
                return copy
            }
        }
    }

    /// A value shared with the thread that drains a worker's stderr.
    final class Locked<Value>: @unchecked Sendable {
        private let lock = NSLock()
        private var stored: Value
        init(_ value: Value) { stored = value }
        var value: Value { lock.withLock { stored } }
        func set(_ value: Value) { lock.withLock { stored = value } }
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
        _ facts: LinuxFacts, _ configuration: AddressSpace.Configuration, _ result: Merged.Result, _ elapsed: UInt64
    ) -> String {
        var lines = ["kernel    Linux \(facts.kernelRelease) (child uid \(facts.uid), THP \(facts.transparentHugePages ?? "absent"))"]
        lines.append("engine    " + configurationLines(configuration).map { "\($0.0)=\($0.1)" }.joined(separator: " "))
        lines.append(
            "run       \(result.operations) operations in \(String(format: "%.1f", Double(elapsed) / 1e9)) s, "
                + "\(result.coverage.totalMismatches) mismatching, \(result.divergences.count) kinds of divergence, "
                + "\(result.crashCount) engine crashes (\(result.crashes.count) kinds)")
        lines.append(
            "THP       residency not compared on \(result.unsettledPagesScanned) page scans of THP-eligible blocks, "
                + "\(result.unsettledPagesDiffering) of them differing")
        lines.append(
            "reclaim   \(result.hostReclaimsFollowed) clean, unmapped pages of shared memory dropped by Linux's own "
                + "reclaim, followed by the engine")
        lines.append("")
        lines.append(result.coverage.table)
        for failure in result.failures { lines.append("\nFAILED: " + failure) }
        for crash in result.crashes { lines.append("\nCRASH: " + crash.report) }
        for entry in result.divergences { lines.append("\n" + entry.report) }
        return lines.joined(separator: "\n")
    }

    static func json(
        _ facts: LinuxFacts, _ configuration: AddressSpace.Configuration, _ result: Merged.Result, _ elapsed: UInt64
    ) -> String {
        struct Row: Encodable {
            var operation: String
            var calls: Int
            var successes: Int
            var mismatches: Int
            var errors: [String: Int]
        }
        struct Document: Encodable {
            var kernel: String
            var configuration: [String: String]
            var operations: Int
            var seconds: Double
            var coverage: [Row]
            var divergences: [Entry]
            var failures: [String]
            var crashes: [CrashEntry]
            var crashCount: Int
            var unsettledPagesScanned: Int
            var unsettledPagesDiffering: Int
            var hostReclaimsFollowed: Int
        }
        let document = Document(
            kernel: facts.kernelRelease,
            configuration: Dictionary(uniqueKeysWithValues: configurationLines(configuration)),
            operations: result.operations, seconds: Double(elapsed) / 1e9,
            coverage: result.coverage.rows.map { key, row in
                Row(
                    operation: key, calls: row.calls, successes: row.successes, mismatches: row.mismatches,
                    errors: Dictionary(uniqueKeysWithValues: row.errors.map { (OracleCoverage.errorName($0.key), $0.value) }))
            }.sorted { $0.operation < $1.operation },
            divergences: result.divergences, failures: result.failures, crashes: result.crashes,
            crashCount: result.crashCount, unsettledPagesScanned: result.unsettledPagesScanned,
            unsettledPagesDiffering: result.unsettledPagesDiffering, hostReclaimsFollowed: result.hostReclaimsFollowed)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        guard let data = try? encoder.encode(document) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }
}

private func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
