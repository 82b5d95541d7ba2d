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
            Record a trace and the program's final maps with: scripts/record-trace app <program> [args]
            (writes app.strace and app.maps), then: shootdown replay app.strace --expect-maps app.maps
            Or record the log alone: strace -f -y -e trace=memory,process -o app.strace <program>
            Per-process files (strace -ff -o app.strace) are given all at once: app.strace.*
            Prints the calls replayed by name, every mismatch with its line, the maps comparison;
            exits with 1 if a call or the maps differ. Samples: traces/ (README: Replaying real programs).
            """)

    @Argument(help: "The strace log, or the LOG.PID files of `strace -ff -o LOG`.") var traces: [String]
    @Flag(help: "Write-fault every page of each new private writable mapping (exercises faults and zaps).")
    var touch = false
    @Option(help: "No-op classic subscribers attached to every space.") var subscribers = 0
    @Option(help: "Print the first N mismatches.") var show = 10
    @Flag(help: "One JSON object: counts, calls by name, every mismatch, the maps comparison.") var json = false
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
            throw ReplayFailure("no system calls found in \(traces.joined(separator: ", "))")
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
            do { try replayer.replay(event) } catch { throw ReplayFailure(error.description) }
        }
        let report = replayer.finish()
        if let subscriberError { throw subscriberError }

        var comparison: MapsComparison?
        var comparedPID: Int?
        if let expectMaps {
            (comparison, comparedPID) = try compareMaps(expectMaps, report: report)
        }
        var totals: [String: Int64] = [:]
        for space in spaces {
            for (name, value) in space.statistics.nonZero { totals[name, default: 0] += value }
        }
        let engineCounters = totals.sorted { $0.key < $1.key }
        if json {
            print(try jsonSummary(report, comparison: comparison, comparedPID: comparedPID, engineCounters: engineCounters))
        } else {
            print("trace: \(traces.joined(separator: " "))")
            print(report.summary(mismatchLimit: show))
            if let comparison {
                print("final maps of pid \(comparedPID.map(String.init) ?? "-") against \(expectMaps ?? ""): "
                    + comparison.summary(limit: show))
            }
            let nanoseconds = Double(report.engineNanoseconds)
            let perCall = report.replayed > 0 ? nanoseconds / Double(report.replayed) : 0
            print(String(format: "engine: %.0f ns per replayed call", perCall)
                + (engineCounters.isEmpty ? "" : "; " + engineCounters.map { "\($0.key)=\($0.value)" }.joined(separator: " ")))
        }
        if maps {
            for (index, space) in report.spaces.enumerated() {
                let pids = space.pids.map { $0.map(String.init) ?? "-" }.joined(separator: ",")
                print("\nspace \(index) (pid \(pids))\(space.ended ? "" : ", alive at the end of the log"):")
                for mapping in space.mappings { print("  " + mapping.description) }
            }
        }
        for keep in keepAlive { keep.detach() }
        if !report.mismatches.isEmpty || comparison.map({ !$0.matches }) == true { throw ExitCode(1) }
    }

    /// The whole report as one JSON object: counts, calls by name, every mismatch, the maps
    /// comparison, the engine's counters.
    func jsonSummary(
        _ report: ReplayReport, comparison: MapsComparison?, comparedPID: Int?, engineCounters: [(key: String, value: Int64)]
    ) throws -> String {
        var object: [String: Any] = [
            "trace": traces,
            "calls": report.calls,
            "replayed": report.replayed,
            "matched": report.matched,
            "mismatched": report.mismatches.count,
            "unmodelled": report.unmodelled,
            "unresolved": report.unresolved,
            "replayed_by_call": report.replayedByName,
            "process_calls": report.processCallsByName,
            "address_spaces": report.addressSpaces,
            "implied_mappings": report.impliedMappings,
            "break_queries_learned": report.breakQueriesLearned,
            "engine_ns": report.engineNanoseconds,
            "engine_counters": Dictionary(uniqueKeysWithValues: engineCounters.map { ($0.key, $0.value) }),
            "mismatches": report.mismatches.map { mismatch -> [String: Any] in
                var entry: [String: Any] = [
                    "line": mismatch.line, "call": "\(mismatch.call.name)(\(mismatch.call.arguments.joined(separator: ", ")))",
                    "linux": mismatch.linux, "engine": mismatch.engine,
                ]
                if let pid = mismatch.pid { entry["pid"] = pid }
                return entry
            },
        ]
        if let comparison {
            var maps: [String: Any] = [
                "file": expectMaps ?? "", "compared_bytes": comparison.comparedBytes, "equal": comparison.matches,
                "differences": comparison.differences,
            ]
            if let comparedPID { maps["pid"] = comparedPID }
            object["maps"] = maps
        }
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
        return String(decoding: data, as: UTF8.self)
    }

    /// The events of the log (or of the `-ff` files, merged).
    func readEvents() throws -> [TraceEvent] {
        if traces.count == 1 { return try events(of: traces[0], pid: nil) }
        var files: [(pid: Int, events: [TraceEvent])] = []
        for path in traces {
            guard let dot = path.lastIndex(of: "."), let pid = Int(path[path.index(after: dot)...]), pid >= 0 else {
                throw ReplayFailure("\(path): several logs must be the LOG.PID files of strace -ff (each name ending in .PID)")
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
            throw ReplayFailure("\(path): \(error.description)")
        }
    }

    /// The bytes of a file, or one sentence saying why not.
    func contents(of path: String) throws -> [UInt8] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ReplayFailure("\(path): no such file")
        }
        if isDirectory.boolValue { throw ReplayFailure("\(path) is a directory, not a file") }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ReplayFailure("\(path) cannot be read")
        }
        return [UInt8](data)
    }

    /// The comparison of the saved maps at `path` with the final mappings of `--pid` (default:
    /// the log's first process), and that pid.
    func compareMaps(_ path: String, report: ReplayReport) throws -> (MapsComparison, Int?) {
        let bytes = try contents(of: path)
        guard !bytes.contains(0), let text = String(validating: bytes, as: UTF8.self) else {
            throw ReplayFailure("\(path) is not a text file (a saved /proc/PID/maps is text)")
        }
        let lines: [MapsLine]
        do { lines = try MapsLine.parse(text) } catch { throw ReplayFailure("\(path): \(error.description)") }
        guard let space = report.space(ofPID: pid) else {
            throw ReplayFailure("--expect-maps: the log has no process \(pid.map(String.init) ?? "")")
        }
        return (MapsComparison(engine: space.mappings, linux: lines, known: space.known), pid ?? report.rootPID)
    }
}

/// Why `replay` could not run (an unreadable file, a malformed line, a replay error): one
/// sentence, exit status 1, no usage text.
struct ReplayFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
