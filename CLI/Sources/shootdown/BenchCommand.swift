@_spi(Benchmarking) import Shootdown
import ArgumentParser
import Foundation

enum Workload: String, CaseIterable, ExpressibleByArgument {
    case fault, zap, notifier, isolation, contention
    case vmaLookup = "vma-lookup"
    case fork, softdirty
    case access, shootdown, invalidate

    /// Default page count of the workload.
    var defaultPages: Int {
        switch self {
        case .contention: 2_097_152  // ~50 ms per measurement: spans thousands of churn ops
        case .access: 256  // exactly the reach of one thread's TLB
        case .shootdown: 16  // below the 33-page flush ceiling: receivers flush page by page
        case .invalidate: 64  // per thread and call
        default: 262_144
        }
    }

    /// The workload-specific options (and `--sweep` names) the workload reads; the design knobs
    /// and `--repeat` apply to every workload.
    var parameters: Set<Parameter> {
        switch self {
        case .fault: [.pages, .threads, .vmaPerThread]
        case .zap: [.pages, .subscribers, .huge]
        case .notifier: [.subscribers, .intervals, .iterations]
        case .isolation: []
        case .contention: [.pages, .churn]
        case .fork, .softdirty: [.pages]
        case .vmaLookup: [.vmas, .iterations]
        case .access: [.pages, .iterations]
        case .shootdown: [.pages, .threads, .iterations]
        case .invalidate: [.pages, .threads, .subscribers, .intervals, .iterations, .op, .overlap, .mirrors, .faulters]
        }
    }

    /// Whether a larger key metric is better (throughput) or a smaller one (latency).
    var keyMetric: (name: String, higherIsBetter: Bool) {
        switch self {
        case .contention: ("fault_ops_per_sec", true)
        case .invalidate: ("invalidations_per_sec", true)
        case .isolation: ("grace_period_us", false)
        default: ("ns_per_op", false)
        }
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
        case .invalidate: try runInvalidate(settings)
        }
    }
}

/// A workload-specific option of `shootdown bench`.
enum Parameter: String, CaseIterable {
    case pages, threads, subscribers, intervals, vmas, huge, iterations, churn, op, overlap, mirrors, faulters
    case vmaPerThread = "vma-per-thread"

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
extension ChurnTarget: ExpressibleByArgument {}
extension NotifierListProtection: @retroactive ExpressibleByArgument {}
extension PageTableLocking: @retroactive ExpressibleByArgument {}
extension TLBMode: @retroactive ExpressibleByArgument {}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one workload.",
        discussion: """
            Workloads: fault, zap, notifier, isolation, contention, vma-lookup, fork, softdirty,
            access, shootdown, invalidate.
            Examples:
              shootdown bench fault --fault-path mmap-lock --pages 262144 --json
              shootdown bench zap --pages 262144 --subscribers 16
              shootdown bench notifier --intervals 100000
              shootdown bench contention --compare fault-path
              shootdown bench contention --churn same-vma --compare fault-path --plot same-vma.svg
              shootdown bench fault --threads 2 --compare fault-path
              shootdown bench notifier --sweep subscribers=0,1,16,256 --plot notifier.svg
              shootdown bench access --compare tlb
              shootdown bench shootdown --threads 4
              shootdown bench invalidate --threads 2 --op dontneed --overlap same-pmd --repeat 9
              shootdown bench invalidate --op dontneed --compare page-table-locking --faulters 1
            """)

    @Argument(help: "The workload.") var workload: Workload
    @Option(help: "Pages (4 KiB) per run (fault, zap, contention, fork, softdirty; default 262144, or 1048576 for fault with --threads above 1, 2097152 for contention); the working set (access; default 256); pages per munmap/mprotect (shootdown; default 16); pages per thread and call (invalidate; default 64, at most 512).")
    var pages: Int?
    @Option(help: "Faulting threads (fault; default 1); threads of the space including the one that unmaps, the largest count measured (shootdown; default 4: 0, 1 and 3 others); invalidating threads (invalidate; default 2).") var threads: Int?
    @Option(help: "No-op classic subscribers attached (zap, notifier, invalidate; default 0).") var subscribers: Int?
    @Option(help: "Interval notifiers inserted (notifier, invalidate; default 0).") var intervals: Int?
    @Option(help: "What each invalidating thread does (invalidate): dontneed | pageout | migrate (mmap read lock) | protect | unmap-map (mmap write lock).")
    var op: InvalidateOp?
    @Option(help: "Where the threads of invalidate work: none (a 2 MiB region each) | same-pmd (one PTE table, different pages) | same-range (the same pages).")
    var overlap: InvalidateOverlap?
    @Option(help: "SoftwareMirrors attached and repopulated over each range (invalidate; default 0).") var mirrors: Int?
    @Option(help: "Threads write-faulting while the others invalidate (invalidate; default 0).") var faulters: Int?
    @Option(help: "VMAs (vma-lookup; default 10000).") var vmas: Int?
    @Flag(help: "Use 2 MiB mappings (zap).") var huge = false
    @Option(help: "What the churning thread changes (contention): other-vma (default: mmap/mprotect/munmap of a distant VMA) | same-vma (mprotect of pages of the faulted VMA).")
    var churn: ChurnTarget?
    @Flag(name: .customLong("vma-per-thread"), help: "Each faulting thread's part in a VMA of its own (fault with --threads; default: one VMA shared by the threads).")
    var vmaPerThread = false
    @Option(name: .customLong("fault-path"), help: "speculative | mmap-lock | per-vma-lock") var faultPath: AddressSpace.FaultPath = .speculative
    @Option(name: .customLong("notifier-list"), help: "rcu | rwlock") var notifierList: NotifierListProtection = .rcu
    @Option(name: .customLong("page-table-locking"), help: "split | single") var locking: PageTableLocking = .split
    @Option(help: "none | per-thread | per-thread-fenced (default: per-thread for access and shootdown, none elsewhere)")
    var tlb: TLBMode?
    @Option(help: "Operations per timed loop (notifier, vma-lookup, access; default 1000000); calls per measurement (shootdown; default 2000); calls per thread and measurement (invalidate; default 4000).") var iterations: Int?
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
            || (iterations ?? 1) < 1 || repeats < 1 || (mirrors ?? 0) < 0 || (faulters ?? 0) < 0
        {
            throw ValidationError("counts must be positive")
        }
        let given: [(Parameter, Bool)] = [
            (.pages, pages != nil), (.threads, threads != nil), (.subscribers, subscribers != nil),
            (.intervals, intervals != nil), (.vmas, vmas != nil), (.huge, huge), (.iterations, iterations != nil),
            (.churn, churn != nil), (.vmaPerThread, vmaPerThread), (.op, op != nil), (.overlap, overlap != nil),
            (.mirrors, mirrors != nil), (.faulters, faulters != nil),
        ]
        for (parameter, isGiven) in given where isGiven && !workload.parameters.contains(parameter) {
            throw ValidationError("--\(parameter.rawValue) applies to \(parameter.workloads)")
        }
        if vmaPerThread && (threads ?? 1) < 2 && !(sweep ?? "").hasPrefix("threads=") {
            throw ValidationError("--vma-per-thread needs --threads 2 or more")
        }
        if workload == .invalidate {
            // The geometry's own checks, before anything runs.
            _ = try InvalidateGeometry(settings)
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
        if let churn { settings.churn = churn }
        settings.vmaPerThread = vmaPerThread
        settings.faultPath = faultPath
        settings.notifierList = notifierList
        settings.locking = locking
        settings.tlb = tlb
        if let iterations { settings.iterations = iterations }
        else if workload == .shootdown { settings.iterations = 2000 }
        if workload == .shootdown && threads == nil { settings.threads = 4 }
        if workload == .invalidate {
            if threads == nil { settings.threads = 2 }
            if iterations == nil { settings.iterations = 4000 }
            if let op { settings.op = op }
            if let overlap { settings.overlap = overlap }
            if let mirrors { settings.mirrors = mirrors }
            if let faulters { settings.faulters = faulters }
        }
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
        case .huge, .iterations, .churn, .vmaPerThread, .op, .overlap, .mirrors, .faulters: break  // not sweepable (parseSweep)
        }
    }

    private func drawPlot(_ results: [RunResult], sweepName: String?, file: String) throws {
        if let compare, sweepName == nil, let result = results.first {
            try drawComparison(result, compare).render().write(toFile: file, atomically: true, encoding: .utf8)
            return
        }
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

extension Bench {
    /// The bars of a comparison without a sweep: for each compared value, the rate alone and under
    /// load (contention: solo and under churn; fault with threads: one thread and all threads), or
    /// the key metric; captioned with the value's `retained` (or its speedup over the baseline).
    func drawComparison(_ result: RunResult, _ knob: Knob) -> SVGBarChart {
        let values = knob.values
        let threads = result.config.first { $0.0 == "threads" }?.1 ?? "1"
        let bars: [(metric: String, label: String)]
        let yLabel: String
        switch workload {
        case .contention:
            bars = [("solo_fault_ops_per_sec", "alone"), ("fault_ops_per_sec", "under churn")]
            yLabel = "faults per second (faulting thread)"
        case .invalidate:
            bars = [("single_thread_invalidations_per_sec", "1 thread"), ("invalidations_per_sec", "\(threads) threads")]
            yLabel = "invalidations per second (all threads)"
        case .fault where threads != "1":
            bars = [("single_thread_ops_per_sec", "1 thread"), ("ops_per_sec", "\(threads) threads")]
            yLabel = "faults per second (all threads)"
        default:
            bars = [(workload.keyMetric.name, workload.keyMetric.name)]
            yLabel = workload.keyMetric.name
        }
        let captions = values.enumerated().map { index, value -> String in
            if let retained = result.metric("\(value).retained") { return String(format: "retained %.2f", retained) }
            if index == 0, let speedup = result.metric("speedup") { return String(format: "%.2fx", speedup) }
            if let speedup = result.metric("\(value).speedup") { return String(format: "%.2fx", speedup) }
            return ""
        }
        let config = result.config.filter { $0.0 != "compare" }.map { "\($0.0)=\($0.1)" }.joined(separator: " ")
        return SVGBarChart(
            title: "shootdown bench \(workload.rawValue) --compare \(knob.rawValue)",
            subtitle: config + ", median of \(Int(result.metric("repeats") ?? 0)) interleaved rounds",
            yLabel: yLabel, categories: values, captions: captions,
            series: bars.map { bar in
                SVGBarChart.Series(name: bar.label, values: values.map { result.metric("\($0).\(bar.metric)") ?? 0 })
            })
    }
}

/// Runs every value of `knob` interleaved (value A, value B, value C, A, B, C, ...) with one
/// repetition each, and combines them: per value the median of every metric (best and worst for
/// `min_`/`max_` ones) and the counters of its last run (prefixed `VALUE.`); `speedup`, the first
/// value over the second on the key metric (> 1 when the first is better); for a third value and
/// beyond, `VALUE.speedup` over the second value and `VALUE.gain_share`, the part of the first
/// value's gain over the second that it reaches ((its speedup − 1) / (speedup − 1); only when the
/// first value gains at least 5%). For fault-path: `speedup` is speculative over mmap-lock, and
/// `per-vma-lock.gain_share` is the figure the kernel quoted for per-VMA locks against SPF.
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
        guard let first = collected.first, let last = collected.last else { continue }
        for (name, _) in first.metrics where name != "repeats" {
            // min_/max_ metrics: the best and worst run; any other: the median over runs.
            let summary = Summary(collected.compactMap { $0.metric(name) })
            let combined = name.hasPrefix("min_") ? summary.minimum : (name.hasPrefix("max_") ? summary.maximum : summary.median)
            result.metrics.append(("\(value).\(name)", combined))
        }
        medians.append(Summary(collected.compactMap { $0.metric(key.name) }).median)
        result.counters += last.counters.map { ("\(value).\($0.0)", $0.1) }
    }
    /// How much better `a` is than `b` on the key metric.
    func ratio(_ a: Double, _ b: Double) -> Double {
        guard a > 0, b > 0 else { return .nan }
        return key.higherIsBetter ? a / b : b / a
    }
    var derived: [(String, Double)] = []
    if medians.count >= 2 && medians.count == values.count {
        let speedup = ratio(medians[0], medians[1])
        derived.append(("speedup", speedup))
        for index in 2..<values.count {
            let other = ratio(medians[index], medians[1])
            derived.append(("\(values[index]).speedup", other))
            if speedup >= 1.05 { derived.append(("\(values[index]).gain_share", (other - 1) / (speedup - 1))) }
        }
    }
    result.metrics.insert(contentsOf: derived, at: 0)
    result.metrics.append(("repeats", Double(runs[values[0]]?.count ?? 0)))
    let baseline = values.count > 1 ? values[1] : "-"
    result.notes.append("speedup = \(values[0]) over \(baseline) on \(key.name), runs interleaved"
        + (values.count > 2 ? "; VALUE.speedup = VALUE over \(baseline); gain_share = (VALUE.speedup - 1) / (speedup - 1)" : ""))
    result.notes.append("counters: each value's last run")
    return result
}
