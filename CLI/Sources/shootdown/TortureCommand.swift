import ArgumentParser
import Foundation
import Shootdown
import ShootdownVerification

/// `shootdown torture`: the library's ``TortureHarness`` on a fresh space, against two
/// ``SoftwareMirror``s over the arena, with progress lines on stderr and a per-kind summary (or one
/// JSON object) on stdout. Fails (exit 1) on any violation.
struct Torture: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run every operation from several threads against two software mirrors, with a mirror oracle.",
        discussion: """
            Each thread works in its own region of an arena that both mirrors cover; after every \
            operation it checks that no mirror holds a translation the CPU page table no longer \
            maps (or maps read-only). At the end: audit, notifier pairing, and every frame and \
            swap slot back after teardown. Stops at --seconds or --operations, whichever comes first.
            """)

    @Option(help: "Wall-clock budget in seconds.") var seconds: Double?
    @Option(help: "Operation budget over all threads (default 20000 when --seconds is not given).") var operations: Int?
    @Option(help: "Worker threads (one region each).") var threads = 2
    @Option(help: "Seed of the workers' random streams.") var seed: UInt64 = 1
    @Option(help: "Pages per thread region (a multiple of 512).") var regionPages = 1024
    @Option(help: "Fault path of the space (\(AddressSpace.FaultPath.allCases.map(\.rawValue).joined(separator: ", "))).")
    var faultPath: AddressSpace.FaultPath = .speculative
    @Option(help: "Seconds between progress lines on stderr (0: none).") var progress: Double = 5
    @Flag(help: "One JSON object on stdout instead of the summary.") var json = false

    func validate() throws {
        guard threads > 0 else { throw ValidationError("--threads must be positive") }
        guard regionPages > 0, regionPages % 512 == 0 else { throw ValidationError("--region-pages must be a positive multiple of 512") }
        if let seconds, seconds < 0 { throw ValidationError("--seconds must not be negative") }
        if let operations, operations < 0 { throw ValidationError("--operations must not be negative") }
    }

    func run() throws {
        let frames = max(1 << 20, threads * regionPages * 64)
        let memory = PhysicalMemory(capacity: frames, swapSlots: max(1 << 16, threads * regionPages * 4))
        let space = try AddressSpace(
            configuration: AddressSpace.Configuration(faultPath: faultPath, capabilities: [.ipcLock]), memory: memory)
        let arena = TortureHarness.arena(threads: threads, regionPages: regionPages)
        let mirrors = try (0..<2).map { _ in
            try SoftwareMirror(space: space, start: arena.lowerBound, length: UInt64(arena.count))
        }
        let budget = operations ?? (seconds == nil ? 20_000 : nil)
        let configuration = TortureHarness.Configuration(
            space: space, threads: threads, seed: seed, operations: budget, seconds: seconds, mirrors: mirrors,
            regionPages: regionPages)
        let limit = [seconds.map { "\($0) s" }, budget.map { "\($0) operations" }].compactMap { $0 }.joined(separator: " or ")
        stderr("torture: seed \(seed), \(threads) threads, \(limit), fault path \(faultPath.rawValue), 2 software mirrors")
        let report = try TortureHarness.run(configuration, progressInterval: progress > 0 ? progress : 3600) { state in
            guard progress > 0 else { return }
            let rate = state.seconds > 0 ? Double(state.operations) / state.seconds : 0
            stderr(String(
                format: "torture: %.0f s, %d operations (%.0f/s), %d violations", state.seconds, state.operations, rate,
                state.violations))
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            FileHandle.standardOutput.write(try encoder.encode(report))
            print()
        } else {
            print(String(
                format: "operations: %d in %.1f s (%.0f/s), seed %d, %d threads", report.operations, report.seconds,
                report.seconds > 0 ? Double(report.operations) / report.seconds : 0, report.seed, report.threads))
            for line in report.summaryLines { print("  \(line)") }
            print("oracle: \(report.checks) checks, \(report.pagesChecked) pages, \(report.translationsChecked) mirror translations compared")
            print("invalidations: \(report.classicInvalidations) classic, \(report.intervalInvalidations) to the workers' interval notifiers")
            let audit = report.audit.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
            print("audit: \(audit)")
            let counters = report.statistics.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }
            print("engine counters: \(counters.joined(separator: ", "))")
            print("after teardown: frames in use \(report.framesInUseAfterTeardown), swap slots in use \(report.swapSlotsInUseAfterTeardown)")
            print("violations: \(report.violationCount)")
            for violation in report.violations { print("  \(violation)") }
            print(report.passed ? "passed" : "FAILED")
        }
        if !report.passed { throw ExitCode.failure }
    }

    private func stderr(_ line: String) {
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }
}
