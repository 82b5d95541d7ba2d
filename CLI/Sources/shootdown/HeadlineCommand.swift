@_spi(Benchmarking) import Shootdown
import ArgumentParser
import Foundation

/// The README's main job: a suite of about 20 seconds (on an idle 2-vCPU machine) printing each key
/// figure beside its target and the command that reproduces it.
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

        /// Runs `shootdown bench ARGUMENTS`, parsed by `Bench` itself: the command printed beside
        /// a figure is exactly what measured it.
        func bench(_ arguments: String) throws -> (run: RunResult, command: String)? {
            if interrupted { return nil }
            let command = try Bench.parse(arguments.split(separator: " ").map(String.init))
            let result = try command.measure(command.settings)
            runs.append(result)
            return (result, "shootdown bench " + arguments)
        }

        if let (run, command) = try bench("fault --fault-path speculative") {
            let value = run.metric("ns_per_op") ?? .nan
            figures.append(Figure(name: "speculative fault, 1 thread", value: value, unit: "ns", target: "< 50 ns",
                                  pass: value < 50, command: command))
        }
        if let (run, command) = try bench("fault --fault-path mmap-lock") {
            let value = run.metric("ns_per_op") ?? .nan
            figures.append(Figure(name: "classic (mmap-lock) fault, 1 thread", value: value, unit: "ns", target: "< 100 ns",
                                  pass: value < 100, command: command))
        }
        if let (run, command) = try bench("fault --fault-path per-vma-lock") {
            let value = run.metric("ns_per_op") ?? .nan
            figures.append(Figure(name: "per-VMA-lock fault, 1 thread", value: value, unit: "ns", target: "—",
                                  pass: nil, command: command))
        }
        if let (run, command) = try bench("fault --threads 2 --pages 1048576 --repeat 9") {
            // Judged against the interleaved control (the same pinned threads on private memory),
            // so a busy or throttled vCPU does not count as the engine's loss.
            let value = run.metric("scaling_vs_control") ?? .nan
            let bare = run.metric("scaling") ?? .nan
            figures.append(Figure(name: "2 threads faulting, scaling over control (bare \(String(format: "%.2f", bare))x)",
                                  value: value, unit: "x", target: "≥ 0.95", pass: value >= 0.95, command: command))
        }
        if let (run, command) = try bench("invalidate --op dontneed --threads 2 --overlap none --repeat 7") {
            let value = run.metric("scaling_vs_control") ?? .nan
            let bare = run.metric("scaling") ?? .nan
            figures.append(Figure(name: "2 threads DONTNEED, one VMA, scaling over control (bare \(String(format: "%.2f", bare))x)",
                                  value: value, unit: "x", target: "—", pass: nil, command: command))
        }
        if let (run, command) = try bench("zap --pages 262144 --subscribers 16 --repeat 11") {
            let value = run.metric("ns_per_op") ?? .nan
            figures.append(Figure(name: "zap, 16 subscribers, per 4 KiB page", value: value, unit: "ns", target: "< 2 ns",
                                  pass: value < 2, command: command))
        }
        if let (run, command) = try bench("zap --huge") {
            let value = run.metric("ns_per_op") ?? .nan
            figures.append(Figure(name: "zap of 2 MiB mappings, per 4 KiB page", value: value, unit: "ns", target: "—",
                                  pass: nil, command: command))
        }
        if let (run, command) = try bench("notifier --subscribers 0") {
            let value = run.metric("overhead_ns") ?? .nan
            figures.append(Figure(name: "notifier pair, 0 subscribers, over no code", value: value, unit: "ns",
                                  target: "a few ns", pass: value < 5, command: command))
        }
        if let (run, command) = try bench("notifier --subscribers 16") {
            let value = run.metric("ns_per_op") ?? .nan
            figures.append(Figure(name: "notifier pair, 16 subscribers", value: value, unit: "ns", target: "—",
                                  pass: nil, command: command))
        }
        if let (run, command) = try bench("notifier --intervals 100000") {
            let value = run.metric("ns_per_op") ?? .nan
            figures.append(Figure(name: "notifier pair, 100 000 intervals", value: value, unit: "ns", target: "< 300 ns",
                                  pass: value < 300, command: command))
        }
        if let (run, command) = try bench("vma-lookup --vmas 100000") {
            let value = run.metric("ns_per_op") ?? .nan
            figures.append(Figure(name: "VMA lookup among 100 000 VMAs", value: value, unit: "ns", target: "≤ 300 ns",
                                  pass: value <= 300, command: command))
        }
        if let (run, command) = try bench("contention --compare fault-path --repeat 7") {
            // One line per fault path: the fraction of its solo fault rate it keeps under churn of
            // another VMA, and (lockless paths) its rate over mmap-lock's under the same churn.
            for path in AddressSpace.FaultPath.allCases {
                let retained = run.metric("\(path.rawValue).retained") ?? .nan
                let speculative = path == .speculative
                figures.append(Figure(name: "faults kept under mmap churn (\(path.rawValue))", value: retained, unit: "x",
                                      target: speculative ? "≥ 0.85" : "—", pass: speculative ? retained >= 0.85 : nil,
                                      command: command))
            }
            let speedup = run.metric("speedup") ?? .nan
            figures.append(Figure(name: "speculative over mmap-lock under churn", value: speedup, unit: "x",
                                  target: "≥ 3x", pass: speedup >= 3, command: command))
            let perVMA = run.metric("\(AddressSpace.FaultPath.perVMALock.rawValue).speedup") ?? .nan
            figures.append(Figure(name: "per-vma-lock over mmap-lock under churn", value: perVMA, unit: "x",
                                  target: "—", pass: nil, command: command))
        }
        if let (run, command) = try bench("isolation") {
            let value = run.metric("grace_period_us") ?? .nan
            figures.append(Figure(name: "VMA/table grace period while a callback sleeps", value: value, unit: "µs",
                                  target: "< 1000 µs", pass: value < 1000, command: command))
        }
        if let (run, command) = try bench("fork --pages 262144") {
            let value = run.metric("ns_per_op") ?? .nan
            figures.append(Figure(name: "fork + first write, per page", value: value, unit: "ns", target: "—",
                                  pass: nil, command: command))
        }
        if let (run, command) = try bench("softdirty") {
            let value = run.metric("ns_per_op") ?? .nan
            figures.append(Figure(name: "soft-dirty clear + re-dirty, per page", value: value, unit: "ns", target: "—",
                                  pass: nil, command: command))
        }

        if let (run, command) = try bench("access --compare tlb") {
            let value = run.metric("per-thread.sequential_read_ns") ?? .nan
            let walk = run.metric("none.sequential_read_ns") ?? .nan
            figures.append(Figure(name: "load through a TLB hit (page walk: \(String(format: "%.1f", walk)) ns)", value: value,
                                  unit: "ns", target: "≈ 2 ns", pass: value < 3, command: command))
        }
        if let (run, command) = try bench("shootdown --threads 2") {
            let value = (run.metric("munmap_1_others_ns") ?? .nan) / 1000
            figures.append(Figure(name: "munmap of 16 pages, 1 other thread in the TLBs", value: value, unit: "µs",
                                  target: "—", pass: nil, command: command))
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
        print("Numbers from one run on a shared machine; `shootdown bench ... --repeat 10` gives medians, minimum and maximum.")
    }
}
