import CInterop
import Testing
@testable import ShootdownVerification

/// The kernel child and its protocol, against the real kernel.
@Suite struct KernelChildTests {
    static let anonymous = LinuxABI.mapPrivate | LinuxABI.mapAnonymous
    static let noFile = UInt64(bitPattern: -1)

    @Test func layoutPutsNonFixedMappingsDirectlyBelowTheGuard() throws {
        let session = try OracleSession()
        defer { session.close() }
        let linux = session.processes[0].linux
        let placed = try linux.syscall(.mmap, [0, 0x3000, 3, Self.anonymous, Self.noFile, 0])
        #expect(UInt64(placed) == session.layout.windowTop - 0x3000)
        // The guard below the cluster is a shared filler: the new private mapping stays separate.
        let guardPage = session.layout.initialMappings.first { $0.start == session.layout.windowTop }
        #expect(guardPage?.isShared == true)
        // No gap inside the cluster: the highest initial mapping below the stack ends at mmap_base.
        #expect(session.layout.initialMappings.contains { $0.end == session.facts.mmapBase })
    }

    @Test func childIsUnprivilegedWithoutASLR() throws {
        let session = try OracleSession()
        defer { session.close() }
        if cinterop_real_uid() == 0 {
            #expect(session.facts.uid == 65534)
            #expect(session.facts.effectiveCapabilities == 0)
        }
        // Without randomisation the base follows from the stack limit alone.
        #expect(session.facts.stackLimit == 8 << 20)
        #expect(session.facts.mmapBase == 0x7fff_f7ff_f000)
        #expect(session.facts.threads == 1)
        let personality = try session.processes[0].linux.procText("personality")
        #expect(UInt32(personality.trimmingWhitespace, radix: 16).map { $0 & 0x0040000 != 0 } == true)
    }

    @Test func syscallsLoadsAndStores() throws {
        let process = try LinuxProcess.spawn()
        defer { process.close() }
        let address = UInt64(try process.syscall(.mmap, [0, 0x2000, 3, Self.anonymous, Self.noFile, 0]))
        #expect(try process.load(address) == .value(0))
        #expect(try process.store(0xfeed, at: address + 0x1000) == .value(0xfeed))
        #expect(try process.load(address + 0x1000) == .value(0xfeed))
        #expect(try process.load([address, address + 0x1000, 0x1000]) == [.value(0), .value(0xfeed), .signal(11)])
        let (result, vector) = try process.mincore(address: address, length: 0x2000)
        #expect(result == 0 && vector.map { $0 & 1 } == [1, 1])
        #expect(try process.syscall(.mprotect, [address, 0x1000, 0]) == 0)
        #expect(try process.load(address) == .signal(11))
        #expect(try process.store(1, at: address) == .signal(11))
        #expect(try process.syscall(.munmap, [address, 0x2000]) == 0)
        #expect(try process.load(address + 0x1000) == .signal(11))
        #expect(try process.syscall(.munmap, [address + 1, 0x1000]) == -22)
    }

    @Test func refusesWhatIsNotAMemorySyscall() throws {
        let process = try LinuxProcess.spawn()
        defer { process.close() }
        #expect(throws: OracleError.refused("syscall 39")) { _ = try process.syscall(number: 39, []) }  // getpid
        #expect(throws: OracleError.self) {
            _ = try process.syscall(.mmap, [0, 0x1000, 3, Self.anonymous, 3, 0])  // a descriptor: refused
        }
        #expect(try process.load(0x1000) == .signal(11))  // and it keeps serving
    }

    @Test func forkedProcessesCopyOnWriteAndShare() throws {
        let parent = try LinuxProcess.spawn()
        defer { parent.close() }
        let privatePage = UInt64(try parent.syscall(.mmap, [0, 0x1000, 3, Self.anonymous, Self.noFile, 0]))
        let sharedPage = UInt64(
            try parent.syscall(.mmap, [0, 0x1000, 3, LinuxABI.mapShared | LinuxABI.mapAnonymous, Self.noFile, 0]))
        #expect(try parent.store(1, at: privatePage) == .value(1))
        let child = try parent.fork()
        defer { child.close() }
        #expect(child.pid != parent.pid && !child.isSpawned)
        #expect(try child.load(privatePage) == .value(1))
        #expect(try child.store(2, at: privatePage) == .value(2))
        #expect(try child.store(3, at: sharedPage) == .value(3))
        #expect(try parent.load(privatePage) == .value(1))
        #expect(try parent.load(sharedPage) == .value(3))
        let grandchild = try child.fork()
        #expect(try grandchild.load(privatePage) == .value(2))
        grandchild.close()
        #expect(try child.load(privatePage) == .value(2))
    }

    /// `MADV_PAGEOUT` and `MADV_COLD` skip pages still in another CPU's LRU batch (measured: pages
    /// faulted on one CPU and paged out from the other stay resident), so the child and every
    /// process it forks run on one CPU: the one asked for, as an index into the allowed CPUs.
    @Test func childAndItsForksRunOnTheCPUAskedFor() throws {
        func allowed(_ process: LinuxProcess) throws -> String {
            let status = try process.procText("status")
            let line = status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }
            return line.map { String($0.dropFirst("Cpus_allowed_list:".count)).trimmingWhitespace } ?? ""
        }
        let ownStatus = try ProcFile.text(of: "/proc/self/status")
        let cpus = ownStatus.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }
            .map { String($0.dropFirst("Cpus_allowed_list:".count)).trimmingWhitespace } ?? ""
        var options = LinuxProcess.Options()
        options.cpu = 1
        let parent = try LinuxProcess.spawn(options)
        defer { parent.close() }
        let pinned = try allowed(parent)
        #expect(!pinned.contains(",") && !pinned.contains("-"))
        // The harness may use CPUs 0 to N (N >= 1): index 1 is CPU 1.
        if cpus.hasPrefix("0-") && !cpus.contains(",") { #expect(pinned == "1") }
        let child = try parent.fork()
        defer { child.close() }
        #expect(try allowed(child) == pinned)
        // Without a choice: one CPU too (the one it started on).
        let unchosen = try LinuxProcess.spawn()
        defer { unchosen.close() }
        let single = try allowed(unchosen)
        #expect(!single.isEmpty && !single.contains(",") && !single.contains("-"))
    }

    @Test func closeReapsTheChild() throws {
        let process = try LinuxProcess.spawn()
        let pid = process.pid
        #expect((try? ProcFile.text(of: "/proc/\(pid)/stat")) != nil)
        process.close()
        #expect(process.isClosed)
        // Reaped: no zombie left behind (the pid is gone, or reused by an unrelated process).
        let stat = try? ProcFile.text(of: "/proc/\(pid)/stat")
        #expect(stat == nil || !stat!.contains("shootdown-kerne"))
        process.close()  // idempotent
    }

    @Test func factsComeFromTheChild() throws {
        let session = try OracleSession()
        defer { session.close() }
        let facts = session.facts
        #expect(facts.mmapMinAddress == UInt64(try ProcFile.text(of: "/proc/sys/vm/mmap_min_addr").trimmingWhitespace))
        #expect(facts.maxMapCount == Int(try ProcFile.text(of: "/proc/sys/vm/max_map_count").trimmingWhitespace))
        #expect(facts.hintMinAddress >= facts.mmapMinAddress)
        #expect(facts.programBreak == facts.programBreakStart)
        #expect(session.configuration.mmapBase == facts.mmapBase)
        #expect(session.configuration.lockedMemoryLimit == facts.lockedMemoryLimit)
        #expect(session.configuration.programBreakStart == facts.programBreakStart)
    }
}
