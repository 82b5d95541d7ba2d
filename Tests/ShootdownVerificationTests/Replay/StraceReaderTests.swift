import Testing
@testable import ShootdownVerification

/// Every line shape the reader accepts, and the ones it must refuse with their line number.
@Suite struct StraceReaderTests {
    func calls(_ events: [TraceEvent]) -> [SystemCall] {
        events.compactMap { if case .call(let call) = $0.kind { call } else { nil } }
    }

    @Test func readsACallWithAPIDColumn() throws {
        let events = try StraceReader.events(
            in: "3969  mmap(NULL, 8192, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f54e293c000\n")
        #expect(events.count == 1)
        #expect(events[0].line == 1 && events[0].pid == 3969)
        let call = try #require(calls(events).first)
        #expect(call.name == "mmap")
        #expect(call.arguments == ["NULL", "8192", "PROT_READ|PROT_WRITE", "MAP_PRIVATE|MAP_ANONYMOUS", "-1", "0"])
        #expect(call.result == .value(0x7f54_e293_c000))
        #expect(call.startLine == nil)
    }

    @Test func readsPIDBracketsNoPIDAndDefaultPID() throws {
        let bracketed = try StraceReader.events(in: "[pid  42] munmap(0x1000, 4096) = 0")
        #expect(bracketed.first?.pid == 42)
        let bare = try StraceReader.events(in: "brk(NULL)                         = 0x55dddd27a000\n")
        #expect(bare.first?.pid == nil)
        #expect(calls(bare).first?.result.value == 0x55dd_dd27_a000)
        let perProcess = try StraceReader.events(in: "brk(NULL) = 0x1000\n", pid: 77)
        #expect(perProcess.first?.pid == 77)
    }

    @Test func readsFailuresUnknownResultsAndTrailingText() throws {
        let events = try StraceReader.events(in: """
            1 mprotect(0x1000, 4096, PROT_READ) = -1 ENOMEM (Cannot allocate memory)
            1 exit_group(0)                     = ?
            1 openat(AT_FDCWD, "/etc/ld.so.cache", O_RDONLY|O_CLOEXEC) = 3</etc/ld.so.cache>
            1 munmap(0x1000, 4096) = 0 <0.000012>
            1 mlock2(0x1000, 4096, 0x8 /* MLOCK_??? */) = -1 EINVAL (Invalid argument)
            """)
        let results = calls(events).map(\.result)
        #expect(results == [.failure(errno: "ENOMEM"), .unknown, .value(3), .value(0), .failure(errno: "EINVAL")])
        #expect(calls(events)[4].arguments[2] == "0x8 /* MLOCK_??? */")
        #expect(Syntax.argumentNumber("0x8 /* MLOCK_??? */") == 8)
    }

    @Test func skipsTimestamps() throws {
        let events = try StraceReader.events(in: """
            1234 12:00:01.123456 munmap(0x1000, 4096) = 0
            1234 1700000000.123456 munmap(0x2000, 4096) = 0
            12:00:01 munmap(0x3000, 4096) = 0
            """)
        #expect(calls(events).map(\.arguments[0]) == ["0x1000", "0x2000", "0x3000"])
        #expect(events.map(\.pid) == [1234, 1234, nil])
    }

    @Test func splitsArgumentsAroundPathsStringsAndStructures() throws {
        let events = try StraceReader.events(in: """
            5 mmap(NULL, 8192, PROT_READ, MAP_PRIVATE, 3</tmp/a, b (x)>, 0) = 0x7f0000000000
            5 mmap(NULL, 4096, PROT_READ, MAP_SHARED, 4</dev/zero<char 1:5>>, 0) = 0x7f0000002000
            5 execve("/bin/a(b\\"c", ["a,b", "]"], 0x7ffd55a5f5f0 /* 35 vars */) = 0
            5 clone3({flags=CLONE_VM|CLONE_VFORK, exit_signal=SIGCHLD, stack=0x7f1, stack_size=0x9000} => {parent_tid=[0]}, 88) = 6
            5 munlockall() = 0
            """)
        let all = calls(events)
        #expect(all[0].arguments.count == 6 && all[0].arguments[4] == "3</tmp/a, b (x)>")
        #expect(all[1].arguments[4] == "4</dev/zero<char 1:5>>")
        #expect(all[2].arguments.count == 3 && all[2].arguments[0] == "\"/bin/a(b\\\"c\"")
        #expect(all[3].arguments.count == 2 && all[3].result == .value(6))
        #expect(all[4].arguments.isEmpty)
    }

    @Test func rejoinsInterruptedCalls() throws {
        let events = try StraceReader.events(in: """
            1 mmap(NULL, 4096, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0 <unfinished ...>
            2 brk(NULL) = 0x5000
            1 <... mmap resumed>)               = 0x7f0000000000
            1 clone3({flags=CLONE_VM, exit_signal=0} <unfinished ...>
            1 <... clone3 resumed> => {parent_tid=[3]}, 88) = 3
            """)
        #expect(events.count == 5)
        #expect(events[0].kind == .started(name: "mmap", text: "mmap(NULL, 4096, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0"))
        let mmap = calls(events)[1]
        #expect(events[2].line == 3 && mmap.startLine == 1 && mmap.arguments.count == 6 && mmap.result == .value(0x7f00_0000_0000))
        let clone = calls(events)[2]
        #expect(clone.name == "clone3" && clone.arguments.count == 2 && clone.result == .value(3) && clone.startLine == 4)
    }

    @Test func callsCutOffByTheirProcessOrTheLogHaveNoResult() throws {
        let events = try StraceReader.events(in: """
            7 exit_group(0 <unfinished ...>
            8 mmap(NULL, 4096, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0 <unfinished ...>
            7 +++ exited with 0 +++
            """)
        // started, started, exit_group (no result) at its own line, exited; then the cut-off mmap.
        #expect(events.count == 5)
        #expect(events[2].kind == .call(SystemCall(name: "exit_group", arguments: ["0"], result: .none, startLine: 1)))
        #expect(events[3].kind == .exited(status: 0))
        #expect(events[4].line == 2)
        #expect(calls(events).last?.result == SystemCallResult.none && calls(events).last?.arguments.count == 6)
    }

    @Test func readsSignalsEndsAndNotes() throws {
        let events = try StraceReader.events(in: """
            9 --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=10} ---

            10 +++ killed by SIGSEGV (core dumped) +++
            11 +++ superseded by execve in pid 9 +++
            strace: Process 12 attached
            9 +++ exited with 1 +++
            """)
        #expect(events.map(\.kind) == [
            .signal("SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=10}"), .killed(signal: "SIGSEGV"),
            .superseded(by: 9), .note("Process 12 attached"), .exited(status: 1),
        ])
        #expect(events.map(\.line) == [1, 3, 4, 5, 6])
    }

    @Test(arguments: [
        ("1 mmap(NULL, 4096\n", 1),
        ("1 munmap(0x1000, 4096) = 0\nnot a trace line\n", 2),
        ("1 munmap(0x1000, 4096) = 0\n1 <... mmap resumed>) = 0\n", 2),
        ("1 mmap(NULL <unfinished ...>\n1 munmap(0x1000 <unfinished ...>\n", 2),
        ("1 execve(\"/bin/sh, [], 0) = 0\n", 1),
        ("1 munmap(0x1000, 4096)\n", 1),
        ("1 munmap(0x1000, 4096) = banana\n", 1),
        ("1 munmap(0x1000, 4096)]) = 0\n", 1),
        ("[pid x] munmap(0x1000, 4096) = 0\n", 1),
        ("1 +++ vanished +++\n", 1),
        ("1 --- SIGCHLD\n", 1),
    ])
    func malformedLinesNameTheirLine(text: String, line: Int) {
        #expect(throws: TraceError.self) { try StraceReader.events(in: text) }
        do {
            _ = try StraceReader.events(in: text)
        } catch {
            guard case .malformedLine(let reported, _) = error else {
                Issue.record("expected a malformed line, got \(error)")
                return
            }
            #expect(reported == line)
            #expect(error.description.hasPrefix("line \(line) "))
        }
    }

    @Test func binaryInputIsOneClearSentence() {
        #expect(throws: TraceError.notText(reason: "it contains a zero byte at offset 3")) {
            try StraceReader.events(inBytes: [0x6D, 0x6D, 0x61, 0, 0x70])
        }
        #expect(throws: TraceError.notText(reason: "it is not valid UTF-8")) {
            try StraceReader.events(inBytes: [0x1F, 0x8B, 0x08, 0xFF, 0xFE])
        }
    }

    @Test func mergesPerProcessFilesAtTheirCreation() throws {
        let parent = try StraceReader.events(in: """
            brk(NULL) = 0x1000
            vfork() = 11
            wait4(11, NULL, 0, NULL) = 11
            """, pid: 10)
        let child = try StraceReader.events(in: """
            execve("/bin/true", ["true"], 0x1 /* 1 var */) = 0
            exit_group(0) = ?
            +++ exited with 0 +++
            """, pid: 11)
        let merged = StraceReader.merge(perProcess: [(11, child), (10, parent)])
        #expect(merged.map(\.pid) == [10, 10, 11, 11, 11, 10])
        #expect(merged.map(\.line) == [1, 2, 1, 2, 3, 3])
    }

    /// Arbitrary bytes never trap the reader: a deterministic stream of mutated trace lines.
    @Test func arbitraryInputNeverTraps() {
        let seeds = [
            "1 mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, 3</a>, 0) = 0x7f00\n",
            "[pid 2] <... clone3 resumed> => {parent_tid=[3]}, 88) = 3\n", "1 +++ exited with 0 +++\n",
            "1 execve(\"a\\\"\", [], 0) = -1 ENOENT (x)\n",
        ]
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        for round in 0..<2000 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            var bytes = Array(seeds[round % seeds.count].utf8)
            for _ in 0..<(Int(state >> 60) + 1) {
                state = state &* 6364136223846793005 &+ 1442695040888963407
                let position = Int(state >> 33) % bytes.count
                let byte = UInt8(truncatingIfNeeded: state >> 13)
                switch state & 3 {
                case 0: bytes[position] = byte
                case 1: bytes.insert(byte, at: position)
                case 2: bytes.remove(at: position)
                default: bytes.insert(contentsOf: bytes[position...].prefix(8), at: position)
                }
                if bytes.isEmpty { bytes = [0x31] }
            }
            _ = try? StraceReader.events(inBytes: bytes)
        }
    }
}
