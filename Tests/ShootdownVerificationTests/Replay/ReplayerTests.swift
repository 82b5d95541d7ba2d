import Shootdown
import Testing
@testable import ShootdownVerification

/// The replayer on small hand-written logs whose outcome is known: what each call becomes, how
/// processes get their spaces, what is counted and what a wrong log looks like.
@Suite struct ReplayerTests {
    /// Replays `log` with a fresh replayer.
    func replay(_ log: String, options: Replayer.Options = Replayer.Options()) throws -> ReplayReport {
        let events = try StraceReader.events(in: log)
        return try Replayer(options: options).replay(events)
    }

    /// The final mappings of `pid`'s last space, as `/proc/PID/maps` lines.
    func maps(_ report: ReplayReport, pid: Int? = nil) -> [String] {
        report.space(ofPID: pid)?.mappings.map(\.description) ?? ["(no space)"]
    }

    @Test func anonymousCallsAndTheHeapMatchLinux() throws {
        let report = try replay("""
            100 execve("/bin/x", ["x"], 0x7ffc0 /* 1 var */) = 0
            100 brk(NULL) = 0x555555560000
            100 mmap(NULL, 16384, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000000000
            100 mprotect(0x7f0000001000, 4096, PROT_READ) = 0
            100 munmap(0x7f0000003000, 4096) = 0
            100 mprotect(0x7f0000003000, 4096, PROT_READ) = -1 ENOMEM (Cannot allocate memory)
            100 munmap(0x7f0000000001, 4096) = -1 EINVAL (Invalid argument)
            100 brk(0x555555581000) = 0x555555581000
            100 brk(NULL) = 0x555555581000
            100 exit_group(0) = ?
            100 +++ exited with 0 +++
            """)
        #expect(report.calls == 10)
        #expect(report.replayed == 7 && report.matched == 7 && report.mismatches.isEmpty)
        #expect(report.breakQueriesLearned == 1)
        #expect(report.processCallsByName == ["execve": 1, "exit_group": 1])
        #expect(report.unmodelled.isEmpty && report.unresolved.isEmpty && report.impliedMappings == 0)
        #expect(report.replayedByName == ["mmap": 1, "mprotect": 2, "munmap": 2, "brk": 2])
        #expect(maps(report) == [
            "555555560000-555555581000 rw-p", "7f0000000000-7f0000001000 rw-p", "7f0000001000-7f0000002000 r--p",
            "7f0000002000-7f0000003000 rw-p",
        ])
        let space = try #require(report.space(ofPID: 100))
        #expect(space.ended && !space.isCallerSpace && space.pids == [100])
        #expect(space.known.ranges == [0x5555_5556_0000..<0x5555_5558_1000, 0x7f00_0000_0000..<0x7f00_0000_4000])
    }

    /// A log that does not match what Linux does (munmap of an unaligned address "succeeding",
    /// a placement where a mapping already is) is reported call by call, with its line.
    @Test func aWrongLogIsReportedAsMismatchesNamingTheLine() throws {
        let report = try replay("""
            7 brk(NULL) = 0x555555560000
            7 mmap(NULL, 8192, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000000000
            7 munmap(0x7f0000000001, 4096) = 0
            7 mmap(NULL, 4096, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000001000
            7 mprotect(0x7f0000000000, 4096, PROT_WRITE) = -1 EACCES (Permission denied)
            """)
        #expect(report.replayed == 4 && report.matched == 1)
        #expect(report.mismatches.map(\.line) == [3, 4, 5])
        #expect(report.mismatches.map(\.linux) == ["0", "0x7f0000001000", "-1 EACCES"])
        #expect(report.mismatches.map(\.engine) == ["-1 EINVAL", "-1 EEXIST", "success"])
        #expect(report.mismatches[0].description == "line 3 (pid 7): munmap(0x7f0000000001, 4096): Linux 0, engine -1 EINVAL")
        #expect(report.summary(mismatchLimit: 1).split(separator: "\n") == [
            "5 calls: 4 memory calls replayed, 1 matched, 3 mismatched, 0 unmodelled, 0 without a result",
            "replayed: mmap 2, mprotect 1, munmap 1", "1 address space, 0 implied mappings, 1 break query learned",
            "mismatch: line 3 (pid 7): munmap(0x7f0000000001, 4096): Linux 0, engine -1 EINVAL", "… and 2 more mismatches",
        ])
    }

    /// A range Linux had mapped before the log began (the binary, the loader) is implied, once,
    /// when a call that succeeded on Linux finds nothing there; a call that failed on Linux is
    /// compared as it is.
    @Test func mappingsFromBeforeTheLogAreImplied() throws {
        let report = try replay("""
            1 brk(NULL) = 0x555555560000
            1 mprotect(0x7f1000000000, 8192, PROT_READ) = 0
            1 madvise(0x7f2000000000, 4096, MADV_DONTNEED) = -1 ENOMEM (Cannot allocate memory)
            1 mprotect(0x7f1000001000, 4096, PROT_NONE) = 0
            """)
        #expect(report.impliedMappings == 1)
        #expect(report.replayed == 3 && report.mismatches.isEmpty)
        #expect(maps(report) == ["7f1000000000-7f1000001000 r--p", "7f1000001000-7f1000002000 ---p"])
    }

    @Test func aForkedChildGetsACopyOfItsParentsSpace() throws {
        let report = try replay("""
            10 brk(NULL) = 0x555555560000
            10 mmap(NULL, 8192, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000000000
            10 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f00000000a0) = 11
            11 munmap(0x7f0000000000, 4096) = 0
            11 exit_group(0) = ?
            11 +++ exited with 0 +++
            10 --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=11, si_uid=0, si_status=0} ---
            10 wait4(-1, NULL, 0, NULL) = 11
            10 munmap(0x7f0000001000, 4096) = 0
            10 +++ exited with 0 +++
            """)
        #expect(report.addressSpaces == 2 && report.mismatches.isEmpty && report.impliedMappings == 0)
        #expect(maps(report, pid: 11) == ["7f0000001000-7f0000002000 rw-p"])
        #expect(maps(report, pid: 10) == ["7f0000000000-7f0000001000 rw-p"])
        #expect(report.processCallsByName == ["clone": 1, "exit_group": 1, "wait4": 1])
    }

    /// A thread (CLONE_VM) shares its creator's space, also when its first lines come before its
    /// clone3 returns.
    @Test func aThreadSharesItsCreatorsSpaceEvenBeforeItsCloneReturns() throws {
        let report = try replay("""
            20 brk(NULL) = 0x555555560000
            20 clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS, exit_signal=0, stack=0x7f0000000000, stack_size=0x7fff80} <unfinished ...>
            21 mmap(NULL, 4096, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000100000
            20 <... clone3 resumed> => {parent_tid=[21]}, 88) = 21
            20 munmap(0x7f0000100000, 4096) = 0
            21 mmap(NULL, 4096, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000100000
            21 exit(0) = ?
            21 +++ exited with 0 +++
            20 +++ exited with 0 +++
            """)
        #expect(report.addressSpaces == 1)
        #expect(report.mismatches.isEmpty && report.impliedMappings == 0 && report.replayed == 3)
        #expect(report.spaces[0].pids == [20, 21])
        #expect(maps(report, pid: 20) == ["7f0000100000-7f0000101000 r--p"])
    }

    /// A vfork child runs in its parent's space until its execve, which gives it a fresh one.
    @Test func aVforkChildExecsIntoAFreshSpace() throws {
        let report = try replay("""
            30 brk(NULL) = 0x555555560000
            30 mmap(NULL, 8192, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000000000
            30 vfork( <unfinished ...>
            31 execve("/bin/true", ["true"], 0x7ffc0 /* 1 var */) = 0
            31 brk(NULL) = 0x555555600000
            31 mmap(NULL, 4096, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000000000
            31 exit_group(0) = ?
            31 +++ exited with 0 +++
            30 <... vfork resumed>) = 31
            30 munmap(0x7f0000000000, 4096) = 0
            30 +++ exited with 0 +++
            """)
        #expect(report.addressSpaces == 2 && report.mismatches.isEmpty && report.impliedMappings == 0)
        #expect(report.breakQueriesLearned == 2)
        #expect(maps(report, pid: 31) == ["7f0000000000-7f0000001000 r--p"])
        #expect(maps(report, pid: 30) == ["7f0000001000-7f0000002000 rw-p"])
        #expect(report.spaces[0].pids == [30, 31] && report.spaces[1].pids == [31])
    }

    /// File descriptors with `-y` paths map one file object per path: private mappings of
    /// contiguous offsets merge (the fixed mapping replaces half of the first), shared ones are
    /// `s`, offsets are kept.
    @Test func fileMappingsByPath() throws {
        let replayer = Replayer()
        let report = try replayer.replay(StraceReader.events(in: """
            40 brk(NULL) = 0x555555560000
            40 mmap(NULL, 32768, PROT_READ, MAP_PRIVATE, 3</etc/ld.so.cache>, 0) = 0x7f0000000000
            40 mmap(0x7f0000004000, 16384, PROT_READ, MAP_PRIVATE|MAP_FIXED, 3</etc/ld.so.cache>, 0x4000) = 0x7f0000004000
            40 mmap(NULL, 8192, PROT_READ, MAP_SHARED, 4</etc/ld.so.cache>, 0) = 0x7f0000010000
            40 mmap(NULL, 8192, PROT_READ, MAP_PRIVATE|MAP_DENYWRITE, 5</usr/lib/libc.so.6>, 0x1000) = 0x7f0000020000
            40 mmap(0x7f0000020000, 4096, PROT_READ, MAP_PRIVATE|MAP_FIXED, 5</usr/lib/libc.so.6>, 0x3000) = 0x7f0000020000
            """))
        #expect(report.mismatches.isEmpty && report.replayed == 5)
        #expect(Set(replayer.files.keys) == ["/etc/ld.so.cache", "/usr/lib/libc.so.6"])
        #expect(maps(report) == [
            "7f0000000000-7f0000008000 r--p 00000000 /etc/ld.so.cache",
            "7f0000010000-7f0000012000 r--s 00000000 /etc/ld.so.cache",
            "7f0000020000-7f0000021000 r--p 00003000 /usr/lib/libc.so.6",
            "7f0000021000-7f0000022000 r--p 00002000 /usr/lib/libc.so.6",
        ])
    }

    /// The heap follows the log's break, and a break below its start leaves it where it was.
    @Test func theBreakMovesAsTheLogSays() throws {
        let report = try replay("""
            60 brk(NULL) = 0x555555560000
            60 brk(0x555555581000) = 0x555555581000
            60 brk(0x555555570000) = 0x555555570000
            60 brk(0x555555000000) = 0x555555570000
            60 brk(NULL) = 0x555555570000
            """)
        #expect(report.replayed == 4 && report.mismatches.isEmpty)
        #expect(maps(report) == ["555555560000-555555570000 rw-p"])
    }

    /// Regression (found by arbitraryCallsNeverTrap): rounding a break in the last page of the
    /// 64-bit range up to a page overflowed and trapped (`pageEnd` added a whole page before
    /// subtracting one). A space whose break is not the engine's own (its first call was not
    /// `brk(NULL)`) moves a heap mapping and rounds the log's values.
    @Test func aBreakInTheLastPageOfTheRangeDoesNotTrap() throws {
        #expect(Replayer.pageEnd(0xFFFF_FFFF_FFFF_F000) == 0xFFFF_FFFF_FFFF_F000)
        #expect(Replayer.pageEnd(0xFFFF_FFFF_FFFF_F001) == 0xFFFF_FFFF_FFFF_F000)
        #expect(Replayer.pageEnd(0x1001) == 0x2000 && Replayer.pageEnd(0) == 0)
        let report = try replay("""
            1 mmap(NULL, 4096, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000000000
            1 brk(NULL) = 0x555555560000
            1 brk(0xfffffffffffff000) = 0xfffffffffffff000
            """)
        #expect(report.replayed == 2 && report.mismatches.count == 1)
    }

    /// Nothing is dropped silently: calls outside the model, flags it does not model and
    /// unreadable arguments are counted by name, calls cut off without a result too.
    @Test func whatIsNotReplayedIsCounted() throws {
        let report = try replay("""
            50 brk(NULL) = 0x555555560000
            50 mmap(NULL, 2097152, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB, -1, 0) = 0x7f0000200000
            50 remap_file_pages(0x7f0000000000, 4096, 0, 1, 0) = -1 EINVAL (Invalid argument)
            50 mmap(banana, 4096, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000000000
            50 munmap(0x7f0000000000, 4096 <unfinished ...>
            50 +++ killed by SIGKILL +++
            """)
        #expect(report.replayed == 0 && report.calls == 5)
        #expect(report.unmodelled == ["mmap (MAP_HUGETLB)": 1, "remap_file_pages": 1, "mmap (unreadable arguments)": 1])
        #expect(report.unresolved == ["munmap": 1])
        #expect(report.unmodelledCount == 3)
    }

    /// A call that would populate more than the limit is counted, not replayed.
    @Test func populatingMoreThanTheLimitIsCountedNotReplayed() throws {
        let report = try replay("""
            1 brk(NULL) = 0x555555560000
            1 mmap(NULL, 8388608, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_POPULATE, -1, 0) = 0x7f0000000000
            1 mmap(NULL, 4096, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_POPULATE, -1, 0) = 0x7f0000800000
            """, options: Replayer.Options(maximumPopulateBytes: 1 << 20))
        #expect(report.unmodelled == ["mmap (populating more than the limit)": 1])
        #expect(report.replayed == 1 && report.matched == 1)
    }

    /// Regression (found by arbitraryCallsNeverTrap): a mincore that succeeded on Linux over a
    /// range the log never mapped got the range implied and was replayed, and the engine's
    /// residency vector for 0x7f0000000000 bytes (34 billion entries) aborted the process. A
    /// vector over the limit is counted, not replayed.
    @Test func aMincoreOverAHugeRangeIsCountedNotReplayed() throws {
        let report = try replay("""
            1 brk(NULL) = 0x555555560000
            1 mincore(0x1000, 0x7f0000000000, 0x7ffc00000000) = 0
            1 mincore(0x555555559000, 4096, [1]) = -1 ENOMEM (Cannot allocate memory)
            """)
        #expect(report.unmodelled == ["mincore (a residency vector over the limit)": 1])
        #expect(report.replayed == 1 && report.matched == 1 && report.impliedMappings == 0)
    }

    /// The caller's space runs the first process and is left to the caller, mappings and all.
    @Test func theCallersSpaceKeepsTheFirstProcesssMappings() throws {
        let space = try AddressSpace()
        defer { space.teardown() }
        let replayer = Replayer(space: space)
        let report = try replayer.replay(StraceReader.events(in: """
            execve("/bin/x", ["x"], 0x7ffc0 /* 1 var */) = 0
            mmap(NULL, 8192, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000000000
            exit_group(0) = ?
            +++ exited with 0 +++
            """))
        #expect(report.mismatches.isEmpty && report.spaces.count == 1 && report.spaces[0].isCallerSpace)
        #expect(space.mappings().map(\.description) == ["7f0000000000-7f0000002000 rw-p"])
        try space.fault(at: 0x7f00_0000_0000, access: .write)
    }

    @Test func aFinishedReplayRefusesEventsAndSpacesAreBounded() throws {
        let replayer = Replayer()
        _ = replayer.finish()
        #expect(throws: ReplayError.finished) {
            try replayer.replay(TraceEvent(line: 1, pid: 1, kind: .signal("SIGCHLD")))
        }
        let bounded = Replayer(options: Replayer.Options(maximumLiveSpaces: 1))
        #expect(throws: ReplayError.tooManyProcesses(line: 2, limit: 1)) {
            try bounded.replay(StraceReader.events(in: """
                1 brk(NULL) = 0x555555560000
                1 fork() = 2
                """))
        }
    }

    /// Logs of valid lines with arbitrary numbers (huge lengths, addresses past the user space,
    /// unknown flags, children that never existed) are replayed without a trap.
    @Test func arbitraryCallsNeverTrap() throws {
        var state: UInt64 = 0x2545_F491_4F6C_DD1D
        func next() -> UInt64 {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return state
        }
        let interesting: [UInt64] = [
            0, 1, 0xFFF, 0x1000, 0x2000, 0x20_0000, 0x7f00_0000_0000, 0x7fff_ffff_f000, 0x8000_0000_0000,
            UInt64.max, UInt64.max - 0xFFF, 1 << 63,
        ]
        func value() -> String {
            let pick = next() % 3 == 0 ? next() : interesting[Int(next() % UInt64(interesting.count))] &+ (next() % 3) * 0x1000
            return "0x" + String(pick, radix: 16)
        }
        let protections = ["PROT_NONE", "PROT_READ", "PROT_READ|PROT_WRITE", "PROT_READ|PROT_EXEC", "PROT_GROWSDOWN|PROT_READ", "0x40"]
        let flags = [
            "MAP_PRIVATE|MAP_ANONYMOUS", "MAP_SHARED|MAP_ANONYMOUS", "MAP_PRIVATE|MAP_FIXED|MAP_ANONYMOUS", "MAP_PRIVATE",
            "MAP_SHARED", "MAP_PRIVATE|MAP_ANONYMOUS|MAP_GROWSDOWN", "MAP_PRIVATE|MAP_ANONYMOUS|MAP_LOCKED", "0x80000",
        ]
        let results = ["0", "-1 ENOMEM (x)", "-1 EINVAL (x)", "-1 EFAULT (x)", "?"]
        for round in 0..<40 {
            var lines = ["1 brk(NULL) = 0x555555560000"]
            for _ in 0..<60 {
                let pid = 1 + Int(next() % 3)
                let result = next() % 2 == 0 ? value() : results[Int(next() % UInt64(results.count))]
                switch next() % 10 {
                case 0, 1:
                    lines.append("\(pid) mmap(\(value()), \(value()), \(protections[Int(next() % 6)]), \(flags[Int(next() % 8)]), \(next() % 2 == 0 ? "-1" : "3</f\(next() % 2)>"), \(value())) = \(result)")
                case 2: lines.append("\(pid) munmap(\(value()), \(value())) = \(result)")
                case 3: lines.append("\(pid) mprotect(\(value()), \(value()), \(protections[Int(next() % 6)])) = \(result)")
                case 4: lines.append("\(pid) mremap(\(value()), \(value()), \(value()), MREMAP_MAYMOVE|MREMAP_FIXED, \(value())) = \(result)")
                case 5: lines.append("\(pid) madvise(\(value()), \(value()), MADV_\(["DONTNEED", "FREE", "POPULATE_WRITE", "REMOVE", "WIPEONFORK"][Int(next() % 5)])) = \(result)")
                case 6: lines.append("\(pid) brk(\(value())) = \(value())")
                case 7: lines.append("\(pid) \(["mlock", "munlock", "mincore", "mseal"][Int(next() % 4)])(\(value()), \(value()), 0) = \(result)")
                case 8: lines.append("\(pid) \(["fork()", "clone(flags=CLONE_VM|SIGCHLD)", "vfork()"][Int(next() % 3)]) = \(next() % 5)")
                default: lines.append("\(pid) \(["execve(\"/x\", [], 0) = 0", "exit_group(0) = ?", "+++ exited with 0 +++"][Int(next() % 3)])")
                }
            }
            let events = try StraceReader.events(in: lines.joined(separator: "\n"))
            let replayer = Replayer(
                options: Replayer.Options(maximumPopulateBytes: 1 << 22), memory: PhysicalMemory(capacity: 1 << 14, swapSlots: 64))
            let report = try replayer.replay(events)
            #expect(report.calls <= lines.count, "round \(round)")
            #expect(report.matched + report.mismatches.count == report.replayed, "round \(round)")
        }
    }
}
