@_spi(Benchmarking) import Shootdown
import ArgumentParser
import Foundation

enum Workload: String, CaseIterable, ExpressibleByArgument {
    case fault, zap, notifier, isolation, contention
    case vmaLookup = "vma-lookup"
    case fork, softdirty
    case access, shootdown

    /// Default page count of the workload.
    var defaultPages: Int {
        switch self {
        case .contention: 2_097_152  // ~50 ms per measurement: spans thousands of churn ops
        case .access: 256  // exactly the reach of one thread's TLB
        case .shootdown: 16  // below the 33-page flush ceiling: receivers flush page by page
        default: 262_144
        }
    }

    /// The workload-specific options (and `--sweep` names) the workload reads; the design knobs
    /// and `--repeat` apply to every workload.
    var parameters: Set<Parameter> {
        switch self {
        case .fault: [.pages, .threads]
        case .zap: [.pages, .subscribers, .huge]
        case .notifier: [.subscribers, .intervals, .iterations]
        case .isolation: []
        case .contention, .fork, .softdirty: [.pages]
        case .vmaLookup: [.vmas, .iterations]
        case .access: [.pages, .iterations]
        case .shootdown: [.pages, .threads, .iterations]
        }
    }

    /// Whether a larger key metric is better (throughput) or a smaller one (latency).
    var keyMetric: (name: String, higherIsBetter: Bool) {
        self == .contention ? ("fault_ops_per_sec", true) : (self == .isolation ? ("grace_period_us", false) : ("ns_per_op", false))
    }

    func run(_ settings: BenchSettings) throws -> RunResult {
        switch self {
        case .fault: try runFault(settings)
        case .zap: try runZap(settings)
        case .notifier: try runNotifier(settings)
        case .isolation: try runIsolation(settings)
        case .contention: try runContention(settings)
        case .vmaLookup: try runLookup(settings)
        case .fork: try runFork(settings)
        case .softdirty: try runSoftDirty(settings)
        case .access: try runAccess(settings)
        case .shootdown: try runShootdown(settings)
        }
    }
}

/// A workload-specific option of `shootdown bench`.
enum Parameter: String, CaseIterable {
    case pages, threads, subscribers, intervals, vmas, huge, iterations

    /// "zap and notifier": the workloads that read it.
    var workloads: String {
        let names = Workload.allCases.filter { $0.parameters.contains(self) }.map(\.rawValue)
        return names.count > 1 ? names.dropLast().joined(separator: ", ") + " and " + names.last! : names.joined()
    }
}

enum Knob: String, CaseIterable, ExpressibleByArgument {
    case faultPath = "fault-path"
    case notifierList = "notifier-list"
    case pageTableLocking = "page-table-locking"
    /// Per-thread TLBs against the page walk (speedup = TLB over walk).
    case tlb
    /// The two ways of ordering an access against a shootdown: a compiler barrier per access and
    /// `membarrier` per shootdown, or a full fence per access (speedup = the first over the second).
    case tlbBarrier = "tlb-barrier"

    var values: [String] {
        switch self {
        case .faultPath: AddressSpace.FaultPath.allCases.map(\.rawValue)
        case .notifierList: NotifierListProtection.allCases.map(\.rawValue)
        case .pageTableLocking: PageTableLocking.allCases.map(\.rawValue)
        case .tlb: [TLBMode.perThread.rawValue, TLBMode.none.rawValue]
        case .tlbBarrier: [TLBMode.perThread.rawValue, TLBMode.perThreadFenced.rawValue]
        }
    }

    func apply(_ value: String, to settings: inout BenchSettings) {
        switch self {
        case .faultPath: settings.faultPath = AddressSpace.FaultPath(rawValue: value)!
        case .notifierList: settings.notifierList = NotifierListProtection(rawValue: value)!
        case .pageTableLocking: settings.locking = PageTableLocking(rawValue: value)!
        case .tlb, .tlbBarrier: settings.tlb = TLBMode(rawValue: value)!
        }
    }
}

extension AddressSpace.FaultPath: @retroactive ExpressibleByArgument {}
extension NotifierListProtection: @retroactive ExpressibleByArgument {}
extension PageTableLocking: @retroactive ExpressibleByArgument {}
extension TLBMode: @retroactive ExpressibleByArgument {}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one workload.",
        discussion: """
            Workloads: fault, zap, notifier, isolation, contention, vma-lookup, fork, softdirty,
            access, shootdown.
            Examples:
              shootdown bench fault --fault-path mmap-lock --pages 262144 --json
              shootdown bench zap --pages 262144 --subscribers 16
              shootdown bench notifier --intervals 100000
              shootdown bench contention --compare fault-path
              shootdown bench notifier --sweep subscribers=0,1,16,256 --plot notifier.svg
              shootdown bench access --compare tlb
              shootdown bench shootdown --threads 4
            """)

    @Argument(help: "The workload.") var workload: Workload
    @Option(help: "Pages (4 KiB) per run (fault, zap, contention, fork, softdirty; default 262144, or 1048576 for fault with --threads above 1, 2097152 for contention); the working set (access; default 256); pages per munmap/mprotect (shootdown; default 16).")
    var pages: Int?
    @Option(help: "Faulting threads (fault; default 1); threads of the space including the one that unmaps, the largest count measured (shootdown; default 4: 0, 1 and 3 others).") var threads: Int?
    @Option(help: "No-op classic subscribers attached (zap, notifier; default 0).") var subscribers: Int?
    @Option(help: "Interval notifiers inserted (notifier; default 0).") var intervals: Int?
    @Option(help: "VMAs (vma-lookup; default 10000).") var vmas: Int?
    @Flag(help: "Use 2 MiB mappings (zap).") var huge = false
    @Option(name: .customLong("fault-path"), help: "speculative | mmap-lock") var faultPath: AddressSpace.FaultPath = .speculative
    @Option(name: .customLong("notifier-list"), help: "rcu | rwlock") var notifierList: NotifierListProtection = .rcu
    @Option(name: .customLong("page-table-locking"), help: "split | single") var locking: PageTableLocking = .split
    @Option(help: "none | per-thread | per-thread-fenced (default: per-thread for access and shootdown, none elsewhere)")
    var tlb: TLBMode?
    @Option(help: "Operations per timed loop (notifier, vma-lookup, access; default 1000000); calls per measurement (shootdown; default 2000).") var iterations: Int?
    @Option(name: .customLong("repeat"), help: "Repetitions; reports the median of each figure, and the best and worst repetition of the key metric (min_/max_ metrics).")
    var repeats = 5
    @Option(help: "Run every value of a knob interleaved in this process and report ratios: fault-path | notifier-list | page-table-locking | tlb | tlb-barrier.")
    var compare: Knob?
    @Option(help: "Sweep a parameter the workload reads, e.g. threads=1,2 or subscribers=0,1,16,256 (threads, subscribers, intervals, vmas, pages).")
    var sweep: String?
    @Option(help: "Draw the sweep (or comparison) as an SVG chart into this file.") var plot: String?
    @Flag(help: "One JSON object per result.") var json = false
    @Flag(help: "CSV rows.") var csv = false
    @Flag(help: "No progress on stderr.") var quiet = false

    func validate() throws {
        if json && csv { throw ValidationError("--json and --csv are exclusive") }
        if let pages, pages <= 0 { throw ValidationError("--pages must be positive") }
        if (threads ?? 1) < 1 || (subscribers ?? 0) < 0 || (intervals ?? 0) < 0 || (vmas ?? 1) < 1
            || (iterations ?? 1) < 1 || repeats < 1
        {
            throw ValidationError("counts must be positive")
        }
        let given: [(Parameter, Bool)] = [
            (.pages, pages != nil), (.threads, threads != nil), (.subscribers, subscribers != nil),
            (.intervals, intervals != nil), (.vmas, vmas != nil), (.huge, huge), (.iterations, iterations != nil),
        ]
        for (parameter, isGiven) in given where isGiven && !workload.parameters.contains(parameter) {
            throw ValidationError("--\(parameter.rawValue) applies to \(parameter.workloads)")
        }
        if plot != nil && sweep == nil && compare == nil { throw ValidationError("--plot needs --sweep or --compare") }
        if let sweep {
            let (name, _) = try parseSweep(sweep)
            if !workload.parameters.contains(name) {
                throw ValidationError("--sweep \(name.rawValue) applies to \(name.workloads)")
            }
        }
    }

    /// The settings the options select (what `run` measures, and what the headline runs).
    var settings: BenchSettings {
        var settings = BenchSettings()
        // Multi-threaded fault runs default to 1 Mi pages: long enough (~10 ms) that a scheduling
        // hiccup on a shared machine does not decide the result.
        settings.pages = pages ?? (workload == .fault && (threads ?? 1) > 1 ? 1 << 20 : workload.defaultPages)
        if let threads { settings.threads = threads }
        if let subscribers { settings.subscribers = subscribers }
        if let intervals { settings.intervals = intervals }
        if let vmas { settings.vmas = vmas }
        settings.huge = huge
        settings.faultPath = faultPath
        settings.notifierList = notifierList
        settings.locking = locking
        settings.tlb = tlb
        if let iterations { settings.iterations = iterations }
        else if workload == .shootdown { settings.iterations = 2000 }
        if workload == .shootdown && threads == nil { settings.threads = 4 }
        settings.repeats = repeats
        return settings
    }

    /// One result for `settings`: the workload's, or with `--compare` the comparison's.
    func measure(_ settings: BenchSettings) throws -> RunResult {
        try compare.map { try runComparison(workload, settings, knob: $0) } ?? workload.run(settings)
    }

    func run() throws {
        installInterruptHandler()
        progressEnabled = !quiet
        let settings = self.settings
        let format: OutputFormat = json ? .json : (csv ? .csv : .table)

        let points: [(label: String?, settings: BenchSettings)]
        var sweepName: String? = nil
        if let sweep {
            let (name, values) = try parseSweep(sweep)
            sweepName = name.rawValue
            points = values.map { value in
                var copy = settings
                applySweep(name, value, to: &copy)
                return ("\(name.rawValue)=\(value)", copy)
            }
        } else {
            points = [(nil, settings)]
        }

        var results: [RunResult] = []
        var printedHeader = false
        for point in points where !interrupted {
            if let label = point.label { progress("sweep: \(label)") }
            let result = try measure(point.settings)
            results.append(result)
            switch format {
            case .json: print(Render.json(result))
            case .csv:
                if !printedHeader { print(Render.csvHeader(result)) }
                printedHeader = true
                print(Render.csvRow(result))
            case .table:
                print(Render.table(result))
                print("")
            }
        }
        if interrupted { progress("interrupted: reported what was measured so far") }
        if let plot, !results.isEmpty {
            try drawPlot(results, sweepName: sweepName, file: plot)
            progress("wrote \(plot)")
        }
    }

    private static let sweepable: [Parameter] = [.threads, .subscribers, .intervals, .vmas, .pages]

    private func parseSweep(_ text: String) throws -> (Parameter, [Int]) {
        let parts = text.split(separator: "=", maxSplits: 1)
        guard parts.count == 2, let name = Parameter(rawValue: String(parts[0])), Self.sweepable.contains(name) else {
            throw ValidationError("--sweep takes NAME=v1,v2,... with NAME one of \(Self.sweepable.map(\.rawValue).joined(separator: ", "))")
        }
        let values = parts[1].split(separator: ",").compactMap { Int($0) }
        guard !values.isEmpty, values.allSatisfy({ $0 >= 0 }) else { throw ValidationError("--sweep values must be integers") }
        return (name, values)
    }

    private func applySweep(_ name: Parameter, _ value: Int, to settings: inout BenchSettings) {
        switch name {
        case .threads: settings.threads = max(value, 1)
        case .subscribers: settings.subscribers = value
        case .intervals: settings.intervals = value
        case .vmas: settings.vmas = max(value, 1)
        case .pages: settings.pages = max(value, 1)
        case .huge, .iterations: break  // not sweepable (parseSweep)
        }
    }

    private func drawPlot(_ results: [RunResult], sweepName: String?, file: String) throws {
        let key = workload.keyMetric
        let x = sweepName ?? "run"
        func xValue(_ result: RunResult, _ index: Int) -> Double {
            Double(result.config.first { $0.0 == sweepName }?.1 ?? "") ?? Double(index)
        }
        var series: [SVGPlot.Series] = []
        if let compare {
            for value in compare.values {
                series.append(SVGPlot.Series(
                    name: value,
                    points: results.enumerated().map { (xValue($1, $0), $1.metric("\(value).\(key.name)") ?? 0) }))
            }
        } else {
            series.append(SVGPlot.Series(
                name: workload.rawValue, points: results.enumerated().map { (xValue($1, $0), $1.metric(key.name) ?? 0) }))
        }
        let logarithmic = ["subscribers", "intervals", "vmas", "pages"].contains(x)
        let plot = SVGPlot(
            title: "shootdown bench \(workload.rawValue)", xLabel: x, yLabel: key.name, series: series,
            logarithmicX: logarithmic)
        try plot.render().write(toFile: file, atomically: true, encoding: .utf8)
    }
}

/// Runs every value of `knob` interleaved (value A, value B, A, B, ...) with one repetition each,
/// and combines them: per value the median of the key metric, and the ratio of the first value
/// over the second (`speedup`, > 1 when the first is better).
func runComparison(_ workload: Workload, _ settings: BenchSettings, knob: Knob) throws -> RunResult {
    let values = knob.values
    var runs: [String: [RunResult]] = [:]
    for round in 0..<settings.repeats where !interrupted {
        for value in values where !interrupted {
            var single = settings
            knob.apply(value, to: &single)
            single.repeats = 1
            progress("compare \(knob.rawValue): round \(round + 1)/\(settings.repeats), \(value)")
            runs[value, default: []].append(try workload.run(single))
        }
    }
    var result = RunResult(workload: workload.rawValue)
    result.config = (runs[values[0]]?.first?.config ?? []).filter { !$0.0.hasPrefix(knob.rawValue.replacingOccurrences(of: "-", with: "_")) }
        + [("compare", knob.rawValue)]
    let key = workload.keyMetric
    var medians: [Double] = []
    for value in values {
        let collected = runs[value] ?? []
        guard let first = collected.first else { continue }
        for (name, _) in first.metrics where name != "repeats" {
            // min_/max_ metrics: the best and worst run; any other: the median over runs.
            let summary = Summary(collected.compactMap { $0.metric(name) })
            let combined = name.hasPrefix("min_") ? summary.minimum : (name.hasPrefix("max_") ? summary.maximum : summary.median)
            result.metrics.append(("\(value).\(name)", combined))
        }
        medians.append(Summary(collected.compactMap { $0.metric(key.name) }).median)
        if value == values[0] { result.counters = first.counters }
    }
    if medians.count == 2, medians[0] > 0, medians[1] > 0 {
        result.metrics.insert(("speedup", key.higherIsBetter ? medians[0] / medians[1] : medians[1] / medians[0]), at: 0)
    }
    result.metrics.append(("repeats", Double(runs[values[0]]?.count ?? 0)))
    result.notes.append("speedup = \(values[0]) over \(values.count > 1 ? values[1] : "-") on \(key.name), runs interleaved")
    return result
}
