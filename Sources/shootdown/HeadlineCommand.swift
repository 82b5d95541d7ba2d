import ArgumentParser
import Foundation
import Shootdown

/// The README's main job: a ~10 second suite printing each key figure beside its target and the
/// command that reproduces it.
struct Headline: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "headline", abstract: "Run the headline suite (the default command).")

    @Flag(help: "Print every underlying run as one JSON object per line instead of the summary.") var json = false
    @Flag(help: "No progress on stderr.") var quiet = false

    struct Figure {
        var name: String
        var value: Double
        var unit: String
        var target: String
        var pass: Bool?
        var command: String
    }

    func run() throws {
        installInterruptHandler()
        progressEnabled = !quiet
        var figures: [Figure] = []
        var runs: [RunResult] = []
        let started = nowNanoseconds()

        func bench(_ workload: Workload, _ configure: (inout BenchSettings) -> Void) throws -> RunResult? {
            if interrupted { return nil }
            var settings = BenchSettings()
            settings.pages = workload.defaultPages
            settings.repeats = 5
            configure(&settings)
            let result = try workload.run(settings)
            runs.append(result)
            return result
        }

        if let run = try bench(.fault, { $0.faultPath = .speculative }) {
            let value = run.metric("ns_per_op")!
            figures.append(Figure(name: "speculative fault, 1 thread", value: value, unit: "ns", target: "< 50 ns",
                                  pass: value < 50, command: "shootdown bench fault --fault-path speculative"))
        }
        if let run = try bench(.fault, { $0.faultPath = .mmapLock }) {
            let value = run.metric("ns_per_op")!
            figures.append(Figure(name: "classic (mmap-lock) fault, 1 thread", value: value, unit: "ns", target: "< 100 ns",
                                  pass: value < 100, command: "shootdown bench fault --fault-path mmap-lock"))
        }
        if let run = try bench(.fault, { $0.threads = 2; $0.pages = 1 << 20; $0.repeats = 9 }) {
            let value = run.metric("scaling")!
            figures.append(Figure(name: "2 threads faulting, scaling over 1", value: value, unit: "x", target: "≥ 1.8x",
                                  pass: value >= 1.8, command: "shootdown bench fault --threads 2"))
        }
        if let run = try bench(.zap, { $0.subscribers = 16; $0.repeats = 11 }) {
            let value = run.metric("ns_per_op")!
            figures.append(Figure(name: "zap, 16 subscribers, per 4 KiB page", value: value, unit: "ns", target: "< 2 ns",
                                  pass: value < 2, command: "shootdown bench zap --pages 262144 --subscribers 16"))
        }
        if let run = try bench(.zap, { $0.huge = true; $0.repeats = 5 }) {
            let value = run.metric("ns_per_op")!
            figures.append(Figure(name: "zap of 2 MiB mappings, per 4 KiB page", value: value, unit: "ns", target: "—",
                                  pass: nil, command: "shootdown bench zap --huge"))
        }
        if let run = try bench(.notifier, { $0.subscribers = 0 }) {
            let value = run.metric("overhead_ns")!
            figures.append(Figure(name: "notifier pair, 0 subscribers, over no code", value: value, unit: "ns",
                                  target: "a few ns", pass: value < 5, command: "shootdown bench notifier --subscribers 0"))
        }
        if let run = try bench(.notifier, { $0.subscribers = 16 }) {
            let value = run.metric("ns_per_op")!
            figures.append(Figure(name: "notifier pair, 16 subscribers", value: value, unit: "ns", target: "—",
                                  pass: nil, command: "shootdown bench notifier --subscribers 16"))
        }
        if let run = try bench(.notifier, { $0.intervals = 100_000 }) {
            let value = run.metric("ns_per_op")!
            figures.append(Figure(name: "notifier pair, 100 000 intervals", value: value, unit: "ns", target: "< 300 ns",
                                  pass: value < 300, command: "shootdown bench notifier --intervals 100000"))
        }
        if let run = try bench(.vmaLookup, { $0.vmas = 100_000 }) {
            let value = run.metric("ns_per_op")!
            figures.append(Figure(name: "VMA lookup among 100 000 VMAs", value: value, unit: "ns", target: "≤ 300 ns",
                                  pass: value <= 300, command: "shootdown bench vma-lookup --vmas 100000"))
        }
        if !interrupted {
            var settings = BenchSettings()
            settings.pages = Workload.contention.defaultPages
            settings.repeats = 7
            let run = try runComparison(.contention, settings, knob: .faultPath)
            runs.append(run)
            let retained = run.metric("speculative.retained") ?? 0
            let speedup = run.metric("speedup") ?? 0
            figures.append(Figure(name: "faults kept under mmap churn (speculative)", value: retained, unit: "x",
                                  target: "≥ 0.85", pass: retained >= 0.85,
                                  command: "shootdown bench contention --fault-path speculative"))
            figures.append(Figure(name: "speculative over mmap-lock under churn", value: speedup, unit: "x",
                                  target: "≥ 3x", pass: speedup >= 3, command: "shootdown bench contention --compare fault-path"))
        }
        if let run = try bench(.isolation, { _ in }) {
            let value = run.metric("grace_period_us")!
            figures.append(Figure(name: "VMA/table grace period while a callback sleeps", value: value, unit: "µs",
                                  target: "< 1000 µs", pass: value < 1000, command: "shootdown bench isolation"))
        }
        if let run = try bench(.fork, { _ in }) {
            let value = run.metric("ns_per_op")!
            figures.append(Figure(name: "fork + first write, per page", value: value, unit: "ns", target: "—",
                                  pass: nil, command: "shootdown bench fork --pages 262144"))
        }
        if let run = try bench(.softdirty, { _ in }) {
            let value = run.metric("ns_per_op")!
            figures.append(Figure(name: "soft-dirty clear + re-dirty, per page", value: value, unit: "ns", target: "—",
                                  pass: nil, command: "shootdown bench softdirty"))
        }

        if json {
            for run in runs { print(Render.json(run)) }
            return
        }
        let seconds = Double(nowNanoseconds() - started) / 1e9
        print("Shootdown headline: \(ProcessInfo.processInfo.activeProcessorCount) CPUs, \(String(format: "%.1f", seconds)) s\(interrupted ? " (interrupted)" : "")")
        print("")
        let nameWidth = figures.map(\.name.count).max() ?? 20
        print("  " + "figure".padding(toLength: nameWidth, withPad: " ", startingAt: 0) + "  measured      target       ")
        for figure in figures {
            let mark = figure.pass.map { $0 ? "ok  " : "MISS" } ?? "    "
            let value = figure.unit == "x"
                ? String(format: "%.2f x", figure.value)
                : String(format: "%.2f %@", figure.value, figure.unit)
            print("  " + figure.name.padding(toLength: nameWidth, withPad: " ", startingAt: 0) + "  "
                  + value.padding(toLength: 12, withPad: " ", startingAt: 0) + "  "
                  + figure.target.padding(toLength: 11, withPad: " ", startingAt: 0) + "  " + mark
                  + "  " + figure.command)
        }
        print("")
        print("Numbers from one run on a shared machine; `shootdown bench ... --repeat 10` gives medians and spread.")
    }
}
