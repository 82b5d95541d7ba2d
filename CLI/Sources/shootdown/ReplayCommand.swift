import ArgumentParser
import Foundation
import Shootdown
import ShootdownVerification

/// `shootdown replay TRACE`: replays the memory system calls of an `strace` log against Shootdown
/// address spaces and checks every outcome against what Linux returned. A thin wrapper over
/// ``StraceReader`` and ``Replayer`` (ShootdownVerification), which document what is modelled.
struct Replay: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replay the memory system calls (mmap, munmap, mprotect, mremap, madvise, brk, the mlock family, mincore, msync, mseal) and process calls (clone, fork, execve, exit) of an strace log.",
        discussion: """
            Record a trace with: strace -f -y -e trace=memory,process -o app.strace <program>
            Per-process files (strace -ff -o app.strace) are given all at once: app.strace.*
            Samples: traces/*.strace (README: Traces).
            """)

    @Argument(help: "The strace log, or the LOG.PID files of `strace -ff -o LOG`.") var traces: [String]
    @Flag(help: "Write-fault every page of each new private writable mapping (exercises faults and zaps).")
    var touch = false
    @Option(help: "No-op classic subscribers attached to every space.") var subscribers = 0
    @Option(help: "Print the first N mismatches.") var show = 10
    @Flag(help: "One JSON object.") var json = false
    @Flag(help: "Print each address space's mappings at the end (/proc/pid/maps style).") var maps = false
    @Option(help: "A saved /proc/PID/maps of the traced process at the end of the log: compare it with the replayed mappings, within the ranges the log defined.")
    var expectMaps: String?
    @Option(help: "The process --expect-maps is about (default: the log's first pid).") var pid: Int?

    func validate() throws {
        if subscribers < 0 { throw ValidationError("--subscribers must be 0 or more") }
        if show < 0 { throw ValidationError("--show must be 0 or more") }
    }

    func run() throws {
        installInterruptHandler()
        let events = try readEvents()
        guard events.contains(where: { if case .call = $0.kind { true } else { false } }) else {
            throw ValidationError("no system calls found in \(traces.joined(separator: ", "))")
        }
        var spaces: [AddressSpace] = []
        var keepAlive: [NoOpSubscribers] = []
        var subscriberError: (any Error)?
        let replayer = Replayer(options: Replayer.Options(touch: touch))
        replayer.spaceCreated = { space, _ in
            spaces.append(space)
            do { keepAlive.append(try NoOpSubscribers(subscribers, on: space)) } catch { subscriberError = error }
        }
        for event in events where !interrupted {
            do { try replayer.replay(event) } catch { throw ValidationError(error.description) }
        }
        let report = replayer.finish()
        if let subscriberError { throw subscriberError }

        var result = RunResult(workload: "replay")
        result.config = [
            ("trace", traces.joined(separator: " ")), ("touch", String(touch)), ("subscribers", String(subscribers)),
        ]
        let nanoseconds = Double(report.engineNanoseconds)
        result.metrics = [
            ("calls", Double(report.calls)), ("replayed", Double(report.replayed)), ("matched", Double(report.matched)),
            ("mismatched", Double(report.mismatches.count)), ("unmodelled", Double(report.unmodelledCount)),
            ("unresolved", Double(report.unresolved.values.reduce(0, +))),
            ("skipped", Double(report.breakQueriesLearned)),
            ("address_spaces", Double(report.addressSpaces)),
            ("exec_mappings_implied", Double(report.impliedMappings)),
            ("ns_per_op", report.replayed > 0 ? nanoseconds / Double(report.replayed) : 0),
            ("ops_per_sec", nanoseconds > 0 ? Double(report.replayed) * 1e9 / nanoseconds : 0),
        ]
        var totals: [String: Int64] = [:]
        for space in spaces {
            for (name, value) in space.statistics.nonZero { totals[name, default: 0] += value }
        }
        result.counters = totals.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        result.counters += report.replayedByName.sorted { $0.key < $1.key }.map { ("calls_\($0.key)", Int64($0.value)) }
        result.counters += report.processCallsByName.sorted { $0.key < $1.key }.map { ("process_\($0.key)", Int64($0.value)) }
        result.counters += report.unmodelled.sorted { $0.key < $1.key }.map { ("unmodelled_\($0.key)", Int64($0.value)) }
        result.counters += report.unresolved.sorted { $0.key < $1.key }.map { ("unresolved_\($0.key)", Int64($0.value)) }
        result.notes = report.mismatches.prefix(show).map(\.description)
        if !report.unmodelled.isEmpty {
            result.notes.append("unmodelled: " + report.unmodelled.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
        var mapsFailed = false
        if let expectMaps {
            let comparison = try compareMaps(expectMaps, report: report)
            result.metrics.append(("maps_compared_bytes", Double(comparison.comparedBytes)))
            result.metrics.append(("maps_differences", Double(comparison.differences.count)))
            result.notes += comparison.differences.prefix(max(show, 1)).map { "maps: " + $0 }
            mapsFailed = !comparison.matches
        }
        print(json ? Render.json(result) : Render.table(result))
        if maps {
            for (index, space) in report.spaces.enumerated() {
                let pids = space.pids.map { $0.map(String.init) ?? "-" }.joined(separator: ",")
                print("\nspace \(index) (pid \(pids))\(space.ended ? "" : ", alive at the end of the log"):")
                for mapping in space.mappings { print("  " + mapping.description) }
            }
        }
        for keep in keepAlive { keep.detach() }
        if !report.mismatches.isEmpty || mapsFailed { throw ExitCode(1) }
    }

    /// The events of the log (or of the `-ff` files, merged).
    func readEvents() throws -> [TraceEvent] {
        if traces.count == 1 { return try events(of: traces[0], pid: nil) }
        var files: [(pid: Int, events: [TraceEvent])] = []
        for path in traces {
            guard let dot = path.lastIndex(of: "."), let pid = Int(path[path.index(after: dot)...]), pid >= 0 else {
                throw ValidationError("\(path): several logs must be the LOG.PID files of strace -ff (each name ending in .PID)")
            }
            files.append((pid, try events(of: path, pid: pid)))
        }
        return StraceReader.merge(perProcess: files)
    }

    func events(of path: String, pid: Int?) throws -> [TraceEvent] {
        let bytes = try contents(of: path)
        do {
            return try StraceReader.events(inBytes: bytes, pid: pid)
        } catch {
            throw ValidationError("\(path): \(error.description)")
        }
    }

    /// The bytes of a file, or one sentence saying why not.
    func contents(of path: String) throws -> [UInt8] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ValidationError("\(path): no such file")
        }
        if isDirectory.boolValue { throw ValidationError("\(path) is a directory, not a file") }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ValidationError("\(path) cannot be read")
        }
        return [UInt8](data)
    }

    func compareMaps(_ path: String, report: ReplayReport) throws -> MapsComparison {
        let bytes = try contents(of: path)
        guard !bytes.contains(0), let text = String(validating: bytes, as: UTF8.self) else {
            throw ValidationError("\(path) is not a text file (a saved /proc/PID/maps is text)")
        }
        let lines: [MapsLine]
        do { lines = try MapsLine.parse(text) } catch { throw ValidationError("\(path): \(error.description)") }
        guard let space = report.space(ofPID: pid) else {
            throw ValidationError("--expect-maps: the log has no process \(pid.map(String.init) ?? "")")
        }
        return MapsComparison(engine: space.mappings, linux: lines, known: space.known)
    }
}
