import CInterop

/// What the oracle learned about the kernel and the child from `/proc` and `/sys`: everything the
/// engine's configuration is derived from (nothing is hard-coded).
public struct LinuxFacts: Sendable, Hashable {
    /// `uname -r`.
    public var kernelRelease: String
    /// `/proc/sys/vm/mmap_min_addr`: below it mmap is `EPERM` without `CAP_SYS_RAWIO`.
    public var mmapMinAddress: UInt64
    /// The lowest address a nonzero hint is raised to: the larger of `mmap_min_addr` and the
    /// security modules' floor (`CONFIG_LSM_MMAP_MIN_ADDR`), which userspace cannot read, so it is
    /// measured (a one-page hint at `mmap_min_addr`, unmapped again).
    public var hintMinAddress: UInt64
    /// `/proc/sys/vm/max_map_count`.
    public var maxMapCount: Int
    /// `/proc/sys/vm/overcommit_memory` (0 heuristic, 1 always, 2 never).
    public var overcommitMemory: Int
    /// Swap pages (`SwapTotal` in `/proc/meminfo`, capped at 2^20): the engine gets as many
    /// swap slots.
    public var swapPages: Int
    /// `/sys/kernel/mm/transparent_hugepage/enabled` (the selected word), `nil` without THP.
    public var transparentHugePages: String?
    /// Sizes of transparent huge pages the kernel may use for anonymous memory (PMD size, and any
    /// enabled mTHP size).
    public var transparentHugePageSizes: [UInt64]
    /// The child's uid (`/proc/PID/status`).
    public var uid: UInt32
    /// The child's effective capabilities (`CapEff:`).
    public var effectiveCapabilities: UInt64
    /// `RLIMIT_STACK` soft limit (`/proc/PID/limits`); `nil` = unlimited.
    public var stackLimit: UInt64?
    /// `RLIMIT_MEMLOCK` soft limit; `nil` = unlimited.
    public var lockedMemoryLimit: UInt64?
    /// `mm->start_brk` (`/proc/PID/stat` field 47).
    public var programBreakStart: UInt64
    /// The current program break (`brk(0)` in the child).
    public var programBreak: UInt64
    /// The kernel's `mmap_base` for the child: `TASK_SIZE - clamp(stack limit + stack guard gap,
    /// 128 MiB, 5/6 TASK_SIZE)` without ASLR, checked against where the loader landed.
    public var mmapBase: UInt64
    /// Threads in the child (must be 1: a raw fork copies only the calling thread).
    public var threads: Int
    /// `MemTotal` plus `SwapTotal` of `/proc/meminfo` in bytes: heuristic overcommit refuses one
    /// charge larger than this.
    public var commitLimit: UInt64 = 0

    /// `CAP_IPC_LOCK` (bit 14): mlock without limits.
    public var hasIPCLock: Bool { effectiveCapabilities & (1 << 14) != 0 }
    /// `CAP_SYS_RAWIO` (bit 17): mappings below `mmap_min_addr`.
    public var hasSysRawIO: Bool { effectiveCapabilities & (1 << 17) != 0 }

    /// The default stack guard gap (256 pages; `stack_guard_gap=` on the kernel command line
    /// changes it).
    static func stackGuardGap() -> UInt64 {
        if let line = try? ProcFile.text(of: "/proc/cmdline"),
            let word = line.split(separator: " ").first(where: { $0.hasPrefix("stack_guard_gap=") }),
            let pages = UInt64(word.dropFirst("stack_guard_gap=".count).trimmingWhitespace)
        {
            return pages * LinuxABI.pageSize
        }
        return 256 * LinuxABI.pageSize
    }

    /// Reads the facts of `process` (a freshly spawned child) and of the system.
    static func read(from process: LinuxProcess, initial: [SmapsEntry], hintFloor: UInt64) throws(OracleError)
        -> LinuxFacts
    {
        func number(_ path: String) throws(OracleError) -> UInt64 {
            let text = try ProcFile.text(of: path).trimmingWhitespace
            guard let value = UInt64(text) else { throw .procfs(path: path, reason: "not a number: \(text)") }
            return value
        }
        var release = [CChar](repeating: 0, count: 256)
        let kernel = cinterop_kernel_release(&release, release.count) ? String(cString: release) : "unknown"

        let status = try process.procText("status")
        func statusField(_ key: String) throws(OracleError) -> String {
            guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(key + ":") }) else {
                throw .procfs(path: "/proc/\(process.pid)/status", reason: "no \(key)")
            }
            return String(line.dropFirst(key.count + 1)).trimmingWhitespace
        }
        guard let capabilities = UInt64(try statusField("CapEff"), radix: 16),
            let uid = UInt32(try statusField("Uid").split(whereSeparator: { $0 == "\t" || $0 == " " }).first ?? ""),
            let threads = Int(try statusField("Threads"))
        else { throw .procfs(path: "/proc/\(process.pid)/status", reason: "unreadable CapEff/Uid/Threads") }

        let limits = try process.procText("limits")
        func limit(_ name: String) throws(OracleError) -> UInt64? {
            guard let line = limits.split(separator: "\n").first(where: { $0.hasPrefix(name) }) else {
                throw .procfs(path: "/proc/\(process.pid)/limits", reason: "no \(name)")
            }
            let soft = line.dropFirst(name.count).split(separator: " ").first.map(String.init) ?? ""
            if soft == "unlimited" { return nil }
            guard let value = UInt64(soft) else {
                throw .procfs(path: "/proc/\(process.pid)/limits", reason: "bad \(name): \(soft)")
            }
            return value
        }

        let startBreak = try programBreakStart(of: process)
        let currentBreak = try process.syscall(.brk, [0])

        let stackLimit = try limit("Max stack size")
        let mmapBase = try Self.mmapBase(stackLimit: stackLimit, initial: initial)

        var huge: String? = nil
        var sizes: [UInt64] = []
        if let enabled = try? ProcFile.text(of: "/sys/kernel/mm/transparent_hugepage/enabled") {
            huge = Self.selectedWord(enabled)
            for exponent in 13...21 {  // 8 KiB ... 2 MiB
                let size: UInt64 = 1 << exponent
                guard let text = try? ProcFile.text(of: "/sys/kernel/mm/transparent_hugepage/hugepages-\(size >> 10)kB/enabled")
                else { continue }
                let word = Self.selectedWord(text)
                let effective = word == "inherit" ? huge : word
                if effective != "never" { sizes.append(size) }
            }
            if sizes.isEmpty && huge != "never" { sizes = [LinuxABI.hugePageSize] }
        }

        return LinuxFacts(
            kernelRelease: kernel, mmapMinAddress: try number("/proc/sys/vm/mmap_min_addr"), hintMinAddress: hintFloor,
            maxMapCount: Int(try number("/proc/sys/vm/max_map_count")),
            overcommitMemory: Int(try number("/proc/sys/vm/overcommit_memory")), swapPages: try swapPages(),
            transparentHugePages: huge,
            transparentHugePageSizes: sizes, uid: uid, effectiveCapabilities: capabilities, stackLimit: stackLimit,
            lockedMemoryLimit: try limit("Max locked memory"), programBreakStart: startBreak,
            programBreak: UInt64(bitPattern: currentBreak), mmapBase: mmapBase, threads: threads,
            commitLimit: try meminfoBytes("MemTotal") + meminfoBytes("SwapTotal"))
    }

    /// A `/proc/meminfo` field (in kB there) in bytes.
    static func meminfoBytes(_ field: String) throws(OracleError) -> UInt64 {
        let meminfo = try ProcFile.text(of: "/proc/meminfo")
        guard let line = meminfo.split(separator: "\n").first(where: { $0.hasPrefix(field + ":") }),
            let kib = UInt64(line.dropFirst(field.count + 1).split(separator: " ").first ?? "")
        else { throw .procfs(path: "/proc/meminfo", reason: "no \(field)") }
        return kib * 1024
    }

    /// `SwapTotal` of `/proc/meminfo` in pages (at most 2^20).
    static func swapPages() throws(OracleError) -> Int {
        let meminfo = try ProcFile.text(of: "/proc/meminfo")
        guard let line = meminfo.split(separator: "\n").first(where: { $0.hasPrefix("SwapTotal:") }),
            let kib = UInt64(line.dropFirst("SwapTotal:".count).split(separator: " ").first ?? "")
        else { throw .procfs(path: "/proc/meminfo", reason: "no SwapTotal") }
        return Int(min(kib / 4, 1 << 20))
    }

    /// `mm->start_brk` of `process` (`/proc/PID/stat` field 47).
    static func programBreakStart(of process: LinuxProcess) throws(OracleError) -> UInt64 {
        let stat = try process.procText("stat")
        guard let paren = stat.lastIndex(of: ")") else {
            throw .procfs(path: "/proc/\(process.pid)/stat", reason: "no command name")
        }
        // Fields after the command name start with field 3 (state); start_brk is field 47.
        let fields = stat[stat.index(after: paren)...].split(separator: " ")
        guard fields.count > 44, let startBreak = UInt64(fields[44]) else {
            throw .procfs(path: "/proc/\(process.pid)/stat", reason: "no start_brk (field 47)")
        }
        return startBreak
    }

    /// Where the kernel puts a one-page mapping hinted at `mmap_min_addr` (nothing is mapped that
    /// low): the floor hints are raised to. The page is unmapped again.
    static func probeHintFloor(_ process: LinuxProcess) throws(OracleError) -> UInt64 {
        let minimum = try UInt64(ProcFile.text(of: "/proc/sys/vm/mmap_min_addr").trimmingWhitespace) ?? 0
        let hint = max(minimum, LinuxABI.pageSize)
        let placed = try process.syscall(
            .mmap, [hint, LinuxABI.pageSize, 0, LinuxABI.mapPrivate | LinuxABI.mapAnonymous, UInt64(bitPattern: -1), 0])
        guard placed > 0 else { throw .layout("the hint probe failed: \(KernelOutcome.raw(placed))") }
        _ = try process.syscall(.munmap, [UInt64(placed), LinuxABI.pageSize])
        guard UInt64(placed) < 1 << 32 else { throw .layout("the hint probe landed at \(hex(UInt64(placed)))") }
        return UInt64(placed)
    }

    /// The word in brackets of a sysfs choice (`always [madvise] never`).
    static func selectedWord(_ text: String) -> String {
        guard let open = text.firstIndex(of: "["), let close = text.firstIndex(of: "]"), open < close else {
            return text.trimmingWhitespace
        }
        return String(text[text.index(after: open)..<close])
    }

    /// The kernel's `mmap_base` for a top-down layout without randomisation, checked against the
    /// child's mappings: the highest mapping below the stack (the loader, mapped first) must end
    /// exactly there.
    static func mmapBase(stackLimit: UInt64?, initial: [SmapsEntry]) throws(OracleError) -> UInt64 {
        guard let stackLimit else { throw .layout("unlimited stack: the kernel would use the legacy bottom-up layout") }
        let taskSize = LinuxABI.taskSize
        var gap = stackLimit &+ stackGuardGap()
        gap = max(gap, 128 << 20)
        gap = min(gap, taskSize / 6 * 5)
        let base = (taskSize - gap) & ~(LinuxABI.pageSize - 1)
        guard let stack = initial.first(where: { $0.name == "[stack]" }) else { throw .layout("no [stack] mapping") }
        let highest = initial.filter { $0.end <= stack.start }.map(\.end).max()
        guard highest == base else {
            throw .layout(
                "expected the kernel's mmap_base at \(hex(base)) (stack limit \(stackLimit)), "
                    + "but the highest mapping below the stack ends at \(highest.map(hex) ?? "none")")
        }
        return base
    }
}
