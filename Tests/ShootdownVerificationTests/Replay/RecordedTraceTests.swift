import Foundation
import Testing
@testable import ShootdownVerification

/// One test per log in `traces/` (recorded on this machine with
/// `strace -f -y -e trace=memory,process`, most of them by `scripts/record-trace`): each replays
/// with every memory call matching Linux's result or errno, nothing unmodelled or unresolved, and,
/// where the program's `/proc/PID/maps` was captured after its last memory call (and its other
/// processes' in `NAME.maps.d/PID`), the same final mappings inside the ranges the log defined. What is outside those ranges is only what the
/// log cannot show: the mappings exec makes before the first traced call.
@Suite struct RecordedTraceTests {
    /// What replaying one log must give.
    struct Expected: Sendable, CustomTestStringConvertible {
        var name: String
        var calls: Int
        var replayed: Int
        var addressSpaces: Int
        var impliedMappings: Int
        /// Whether `traces/NAME.maps` holds the traced program's final maps.
        var hasMaps: Bool
        /// How many other processes have their final maps in `traces/NAME.maps.d/PID`.
        var childMaps = 0
        var testDescription: String { name }
    }

    static let traces: [Expected] = [
        Expected(name: "anonymous-syscalls", calls: 130, replayed: 125, addressSpaces: 2, impliedMappings: 4, hasMaps: true),
        Expected(name: "gcc-c", calls: 157, replayed: 136, addressSpaces: 3, impliedMappings: 6, hasMaps: true, childMaps: 2),
        Expected(name: "git-status", calls: 43, replayed: 40, addressSpaces: 1, impliedMappings: 2, hasMaps: true),
        Expected(name: "maps-snapshot", calls: 31, replayed: 28, addressSpaces: 1, impliedMappings: 2, hasMaps: true),
        Expected(name: "python-startup", calls: 1545, replayed: 1506, addressSpaces: 39, impliedMappings: 78, hasMaps: false),
        Expected(name: "python3-c", calls: 1687, replayed: 1250, addressSpaces: 79, impliedMappings: 78, hasMaps: true, childMaps: 40),
        Expected(name: "swift-build", calls: 1616, replayed: 1570, addressSpaces: 8, impliedMappings: 16, hasMaps: false),
        Expected(
            name: "swift-build-full", calls: 13786, replayed: 13533, addressSpaces: 28, impliedMappings: 56, hasMaps: true,
            childMaps: 21),
    ]

    /// The repository's `traces/` directory.
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("traces")

    static func text(_ file: String) throws -> String {
        try String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8)
    }

    /// Whether exec made `line` before the first system call: the program, its bss (anonymous
    /// memory right after the program's last page), the loader, and the kernel's own mappings.
    static func madeByExec(_ line: MapsLine, in maps: [MapsLine], program: String) -> Bool {
        guard let path = line.path else {
            return maps.contains { $0.path == program && $0.end == line.start }
        }
        return path == program || path.hasSuffix("/ld-linux-x86-64.so.2")
            || ["[stack]", "[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]"].contains(path)
    }

    @Test(arguments: traces)
    func replaysWithoutAMismatch(_ expected: Expected) throws {
        let events = try StraceReader.events(in: Self.text(expected.name + ".strace"))
        let report = try Replayer().replay(events)
        #expect(report.mismatches.isEmpty, "\(report.summary())")
        #expect(report.calls == expected.calls)
        #expect(report.replayed == expected.replayed && report.matched == expected.replayed)
        #expect(report.unmodelled.isEmpty && report.unresolved.isEmpty)
        #expect(report.addressSpaces == expected.addressSpaces)
        #expect(report.impliedMappings == expected.impliedMappings)

        guard expected.hasMaps else { return }
        try Self.compareMaps(report, pid: nil, file: expected.name + ".maps")
        let folder = Self.directory.appendingPathComponent(expected.name + ".maps.d")
        let children = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
        #expect(children.count == expected.childMaps)
        for name in children {
            let pid: Int = try #require(Int(name))
            try Self.compareMaps(report, pid: pid, file: expected.name + ".maps.d/" + name)
        }
    }

    /// Compares the final mappings of `pid` (`nil`: the first process) with the maps in `file`.
    static func compareMaps(_ report: ReplayReport, pid: Int?, file: String) throws {
        let linux = try MapsLine.parse(text(file))
        let space = try #require(report.space(ofPID: pid), "\(file): no space")
        let comparison = MapsComparison(engine: space.mappings, linux: linux, known: space.known)
        #expect(comparison.differences.isEmpty, "\(file): \(comparison.differences)")
        #expect(comparison.comparedBytes > 1 << 20 && comparison.linux.count >= 10, "\(file)")
        // Every Linux mapping the comparison left out lies outside what the log defined, and exec
        // made it: the program itself (the first path in the maps), the loader, the stack, vDSO.
        let program = try #require(linux.first?.path)
        for line in linux where space.known.gaps(in: line.start..<line.end) == [line.start..<line.end] {
            #expect(madeByExec(line, in: linux, program: program), "\(file): uncompared and not made by exec: \(line)")
        }
    }

    /// `strace -ff -y -e trace=memory,process -o gcc gcc -c hello.c -o hello.o`: one file per
    /// process (`gcc.PID`, no pid column), merged at the vforks that created them.
    @Test func perProcessFilesReplayWithoutAMismatch() throws {
        let folder = Self.directory.appendingPathComponent("gcc-c-ff")
        let names = try FileManager.default.contentsOfDirectory(atPath: folder.path).filter { $0.hasPrefix("gcc.") }.sorted()
        #expect(names.count == 3)
        var files: [(pid: Int, events: [TraceEvent])] = []
        for name in names {
            let pid = try #require(Int(name.dropFirst(4)))
            let text = try String(contentsOf: folder.appendingPathComponent(name), encoding: .utf8)
            files.append((pid, try StraceReader.events(in: text, pid: pid)))
        }
        let merged = StraceReader.merge(perProcess: files)
        #expect(merged.count == files.reduce(0) { $0 + $1.events.count })
        // Each child's events follow the vfork that created it, before the parent's next event.
        var children = 0
        for (index, event) in merged.enumerated() {
            guard case .call(let call) = event.kind, call.name == "vfork", let child = call.result.value else { continue }
            children += 1
            #expect(index + 1 < merged.count && merged[index + 1].pid == Int(child))
        }
        #expect(children == 2)
        let report = try Replayer().replay(merged)
        #expect(report.mismatches.isEmpty, "\(report.summary())")
        #expect(report.calls == 157 && report.replayed == 136 && report.matched == 136)
        #expect(report.unmodelled.isEmpty && report.unresolved.isEmpty)
        #expect(report.addressSpaces == 3 && report.processCallsByName["vfork"] == 2)
    }

    /// The comparison is not vacuous: one changed permission, one moved boundary and one missing
    /// mapping in a captured maps file are each found.
    @Test func aChangedMapsFileIsADifference() throws {
        let report = try Replayer().replay(StraceReader.events(in: Self.text("maps-snapshot.strace")))
        let space = try #require(report.space())
        let linux = try MapsLine.parse(Self.text("maps-snapshot.maps"))
        // 7f2f1e952000-7f2f1e95e000 rw-p: the moved mapping after its MADV_DONTFORK head.
        let index = try #require(linux.firstIndex { $0.start == 0x7f2f_1e95_2000 })
        var changed = linux
        changed[index].permissions = "r--p"
        let changedComparison = MapsComparison(engine: space.mappings, linux: changed, known: space.known)
        #expect(changedComparison.differences == ["engine 7f2f1e952000-7f2f1e95e000 rw-p, Linux 7f2f1e952000-7f2f1e95e000 r--p"])
        #expect(changedComparison.summary(limit: 0) == "2478080 bytes in 18 Linux pieces compared: 1 difference\n  … and 1 more")
        var moved = linux
        moved[index].end -= 0x1000
        moved.insert(MapsLine(start: moved[index].end, end: linux[index].end, permissions: "rw-p"), at: index + 1)
        #expect(MapsComparison(engine: space.mappings, linux: moved, known: space.known).differences.count == 2)
        var missing = linux
        missing.remove(at: index)
        #expect(MapsComparison(engine: space.mappings, linux: missing, known: space.known).differences.count == 1)
    }
}
