import CInterop

/// A real Linux process the oracle drives: it runs raw memory syscalls, loads and stores, and
/// forks on request (see `cinterop_oracle_spawn` in CInterop for how it starts).
///
/// A spawned process is the harness's child: ``close()`` (or deinit) closes its socket, kills it
/// and reaps it. A forked process is the child of the process that forked it, which reaps it
/// automatically (its `SIGCHLD` is ignored); closing one sends it `exit` and closes its socket,
/// and it dies with its parent in any case (`PR_SET_PDEATHSIG`). Close forked processes before
/// their parent.
public final class LinuxProcess {
    /// How to start the child.
    public struct Options: Sendable, Hashable {
        /// `RLIMIT_STACK` soft limit in the child: it fixes the kernel's `mmap_base`
        /// (`TASK_SIZE - max(stack limit + guard gap, 128 MiB)` without ASLR).
        public var stackLimit: UInt64 = 8 << 20
        /// When the harness runs as root: the unprivileged uid/gid the child switches to, so that
        /// limits and capability checks behave as for a normal user. `nil`: run as is.
        public var unprivilegedIdentity: (uid: UInt32, gid: UInt32)? = (65534, 65534)
        /// `PR_SET_THP_DISABLE` in the child.
        public var disableTransparentHugePages = false
        /// The CPU the child and its forks are pinned to, as an index into the CPUs this process
        /// may use (modulo their count); `nil`: the CPU the child starts on. The child is always
        /// pinned: `MADV_PAGEOUT` and `MADV_COLD` skip pages still waiting in another CPU's LRU
        /// batch, so on more than one CPU their effect would depend on the scheduler.
        public var cpu: UInt32? = nil

        public init() {}

        public static func == (lhs: Options, rhs: Options) -> Bool {
            lhs.stackLimit == rhs.stackLimit && lhs.unprivilegedIdentity?.uid == rhs.unprivilegedIdentity?.uid
                && lhs.unprivilegedIdentity?.gid == rhs.unprivilegedIdentity?.gid
                && lhs.disableTransparentHugePages == rhs.disableTransparentHugePages && lhs.cpu == rhs.cpu
        }

        public func hash(into hasher: inout Hasher) {
            hasher.combine(stackLimit)
            hasher.combine(unprivilegedIdentity?.uid)
            hasher.combine(unprivilegedIdentity?.gid)
            hasher.combine(disableTransparentHugePages)
            hasher.combine(cpu)
        }
    }

    /// The result of a load or store.
    public enum Touch: Hashable, Sendable {
        /// The access completed; for a load, the 8 bytes read.
        case value(UInt64)
        /// The access raised this signal (`SIGSEGV`, `SIGBUS`).
        case signal(Int32)
    }

    public let pid: Int32
    /// The bottom of the filler page the child placed directly below its top cluster: the kernel
    /// places the next non-fixed mapping directly below this address.
    public let guardLow: UInt64
    /// Whether this process is the harness's own child (reaped with waitpid) or was forked.
    public let isSpawned: Bool
    private let channel: KernelChannel
    private let files = ProcFile()
    private var closed = false

    private init(pid: Int32, channel: KernelChannel, spawned: Bool) throws(OracleError) {
        self.pid = pid
        self.channel = channel
        isSpawned = spawned
        do throws(OracleError) {
            let hello = try channel.exchange(CInt(CINTEROP_ORACLE_HELLO))
            guard hello.result == Int64(pid) else {
                throw OracleError.layout("child says it is pid \(hello.result), expected \(pid)")
            }
            guardLow = hello.value
        } catch {
            channel.close()
            if spawned { Self.killAndReap(pid) }
            throw error
        }
    }

    deinit { close() }

    /// Starts a kernel child.
    public static func spawn(_ options: Options = Options()) throws(OracleError) -> LinuxProcess {
        var settings = cinterop_oracle_options()
        settings.stack_limit = options.stackLimit
        if let identity = options.unprivilegedIdentity, cinterop_real_uid() == 0 {
            settings.drop_privileges = true
            settings.uid = identity.uid
            settings.gid = identity.gid
        }
        settings.disable_transparent_huge_pages = options.disableTransparentHugePages
        settings.cpu = options.cpu.map { Int32(truncatingIfNeeded: $0 & 0x7fff_ffff) } ?? -1
        var pid: Int32 = 0
        var descriptor: Int32 = -1
        let status = cinterop_oracle_spawn(&settings, &pid, &descriptor)
        if status != 0 { throw .spawnFailed(status) }
        return try LinuxProcess(pid: pid, channel: KernelChannel(descriptor: descriptor, pid: pid), spawned: true)
    }

    /// Ends the process (idempotent): a spawned one is killed and reaped; a forked one is told to
    /// exit (its parent reaps it).
    public func close() {
        if closed { return }
        closed = true
        if isSpawned {
            channel.close()
            Self.killAndReap(pid)
        } else {
            _ = try? channel.exchange(CInt(CINTEROP_ORACLE_EXIT))
            channel.close()
        }
    }

    /// SIGKILL, then waitpid: no zombie stays behind.
    private static func killAndReap(_ pid: Int32) { _ = cinterop_oracle_reap(pid, true) }

    /// Whether ``close()`` ran.
    public var isClosed: Bool { closed }

    // MARK: - Operations

    /// Runs syscall `number` with up to six raw arguments; returns the raw result, or `-errno`.
    public func syscall(_ number: LinuxABI.Syscall, _ arguments: [UInt64]) throws(OracleError) -> Int64 {
        precondition(number != .mincore, "mincore goes through mincore(address:length:)")
        return try syscall(number: number.rawValue, arguments)
    }

    /// Any syscall number (the child refuses all but the memory syscalls).
    func syscall(number: UInt64, _ arguments: [UInt64]) throws(OracleError) -> Int64 {
        let reply = try channel.exchange(CInt(CINTEROP_ORACLE_SYSCALL), [number] + arguments.prefix(6))
        if reply.status == UInt32(CINTEROP_ORACLE_REFUSED) { throw .refused("syscall \(number)") }
        return reply.result
    }

    /// `mincore(address, length, vector)` with the child's own vector: the raw result and, on
    /// success, one byte per page.
    public func mincore(address: UInt64, length: UInt64) throws(OracleError) -> (result: Int64, vector: [UInt8]) {
        let reply = try channel.exchange(
            CInt(CINTEROP_ORACLE_SYSCALL), [LinuxABI.Syscall.mincore.rawValue, address, length, 0, 0, 0, 1])
        if reply.status == UInt32(CINTEROP_ORACLE_REFUSED) { throw .refused("mincore") }
        if reply.result == 0 && UInt64(reply.payload.count) != reply.value {
            throw .refused("mincore vector of \(reply.value) pages (longer than a reply)")
        }
        return (reply.result, reply.payload)
    }

    /// An 8-byte load at `address`.
    public func load(_ address: UInt64) throws(OracleError) -> Touch {
        Self.touch(try channel.exchange(CInt(CINTEROP_ORACLE_LOAD), [address]))
    }

    /// An 8-byte store of `value` at `address`.
    public func store(_ value: UInt64, at address: UInt64) throws(OracleError) -> Touch {
        Self.touch(try channel.exchange(CInt(CINTEROP_ORACLE_STORE), [address, value]))
    }

    /// Loads at every address in one round trip.
    public func load(_ addresses: [UInt64]) throws(OracleError) -> [Touch] {
        let perReply = KernelChannel.capacity / MemoryLayout<cinterop_oracle_load_record>.stride
        var results: [Touch] = []
        results.reserveCapacity(addresses.count)
        var from = 0
        while from < addresses.count {
            let chunk = Array(addresses[from..<min(addresses.count, from + perReply)])
            let reply = try channel.exchange(CInt(CINTEROP_ORACLE_LOAD_MANY), payload: chunk)
            guard reply.result == Int64(chunk.count) else { throw .refused("a load of \(chunk.count) addresses") }
            reply.payload.withUnsafeBytes { raw in
                for index in 0..<chunk.count {
                    let value = raw.loadUnaligned(fromByteOffset: index * 16, as: UInt64.self)
                    let signal = raw.loadUnaligned(fromByteOffset: index * 16 + 8, as: UInt64.self)
                    results.append(signal == 0 ? .value(value) : .signal(Int32(signal)))
                }
            }
            from += chunk.count
        }
        return results
    }

    /// Forks: the new process is a copy made by the kernel's fork, serving its own socket.
    public func fork() throws(OracleError) -> LinuxProcess {
        let reply = try channel.exchange(CInt(CINTEROP_ORACLE_FORK))
        guard reply.result > 0, let descriptor = reply.descriptor else {
            if let descriptor = reply.descriptor { KernelChannel.close(descriptor) }
            throw .refused("fork (\(LinuxABI.errnoName(Int32(truncatingIfNeeded: -reply.result))))")
        }
        let pid = Int32(reply.result)
        return try LinuxProcess(pid: pid, channel: KernelChannel(descriptor: descriptor, pid: pid), spawned: false)
    }

    private static func touch(_ reply: KernelChannel.Reply) -> Touch {
        reply.status == UInt32(CINTEROP_ORACLE_FAULTED) ? .signal(Int32(reply.result)) : .value(reply.value)
    }

    // MARK: - /proc

    /// The process's mappings as `/proc/PID/smaps` shows them (those `include` accepts).
    public func smaps(include: (UInt64, UInt64) -> Bool = { _, _ in true }) throws(OracleError) -> [SmapsEntry] {
        try files.withContents(of: "/proc/\(pid)/smaps") { bytes throws(OracleError) in
            try SmapsParser.parse(bytes, include: include)
        }
    }

    /// The `/proc/PID/pagemap` words of `pages` pages from `address` (bit 63: a page-table entry
    /// maps the page; bit 62: swapped; bit 58: a guard region).
    public func pagemap(address: UInt64, pages: Int) throws(OracleError) -> [UInt64] {
        let path = "/proc/\(pid)/pagemap"
        var words = [UInt64](repeating: 0, count: pages)
        let read = words.withUnsafeMutableBytes { bytes in
            path.withCString { cinterop_read_file_at($0, (address / LinuxABI.pageSize) &* 8, bytes.baseAddress!, bytes.count) }
        }
        guard read == Int64(pages * 8) else {
            throw .procfs(path: path, reason: read < 0 ? LinuxABI.errnoName(Int32(-read)) : "short read of \(read) bytes")
        }
        return words
    }

    /// The text of `/proc/PID/<name>`.
    public func procText(_ name: String) throws(OracleError) -> String {
        try files.text(of: "/proc/\(pid)/\(name)")
    }
}
