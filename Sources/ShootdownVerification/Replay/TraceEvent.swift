/// One event of an strace log: a system call, a signal, or the end of a process, with the line
/// it came from.
public struct TraceEvent: Sendable, Hashable, CustomStringConvertible {
    /// The 1-based line number (for a call interrupted by other lines, the line of its second
    /// half, `<... name resumed>`, where its result is; ``SystemCall/startLine`` has the first).
    public var line: Int
    /// The process (thread) id: strace's `PID ` or `[pid PID] ` prefix, or the pid a per-process
    /// file (`strace -ff`) was named after; `nil` when the log has no pid column (a trace of one
    /// process without `-f`).
    public var pid: Int?
    public var kind: Kind

    public enum Kind: Sendable, Hashable {
        /// A system call with its result, its two halves rejoined if it was interrupted.
        case call(SystemCall)
        /// The first half of an interrupted call (`name(args <unfinished ...>`), where it started:
        /// its name and the text printed so far. The whole call follows as a ``call(_:)`` event at
        /// its `<... name resumed>` line (or, if the process ended first, with result
        /// ``SystemCallResult/none``).
        case started(name: String, text: String)
        /// A signal delivered (`--- SIGCHLD {...} ---`): the text between the dashes.
        case signal(String)
        /// The process exited (`+++ exited with STATUS +++`).
        case exited(status: Int)
        /// The process was killed (`+++ killed by SIGNAL +++`): the signal's name.
        case killed(signal: String)
        /// The thread was replaced by another that called execve (`+++ superseded by execve in
        /// pid N +++`): N.
        case superseded(by: Int)
        /// A message of strace itself (`strace: Process 12 attached`).
        case note(String)
    }

    public init(line: Int, pid: Int?, kind: Kind) {
        self.line = line
        self.pid = pid
        self.kind = kind
    }

    public var description: String {
        let who = pid.map { "[pid \($0)] " } ?? ""
        switch kind {
        case .call(let call): return "line \(line): \(who)\(call)"
        case .started(let name, _): return "line \(line): \(who)\(name) started"
        case .signal(let text): return "line \(line): \(who)--- \(text) ---"
        case .exited(let status): return "line \(line): \(who)exited with \(status)"
        case .killed(let signal): return "line \(line): \(who)killed by \(signal)"
        case .superseded(let other): return "line \(line): \(who)superseded by execve in pid \(other)"
        case .note(let text): return "line \(line): \(text)"
        }
    }
}

/// A system call as strace printed it.
public struct SystemCall: Sendable, Hashable, CustomStringConvertible {
    /// The name (`mmap`; strace releases that predate a call print `syscall_0x1ce`).
    public var name: String
    /// The arguments as printed, split at top-level commas and trimmed: `NULL`, `8192`,
    /// `PROT_READ|PROT_WRITE`, `3</usr/lib/libc.so.6>` (a file descriptor with its `-y` path),
    /// `{flags=CLONE_VM|..., ...}`.
    public var arguments: [String]
    public var result: SystemCallResult
    /// The line of the call's first half when it was interrupted (`<unfinished ...>`).
    public var startLine: Int?

    public init(name: String, arguments: [String], result: SystemCallResult, startLine: Int? = nil) {
        self.name = name
        self.arguments = arguments
        self.result = result
        self.startLine = startLine
    }

    /// `name(arguments) = result`.
    public var description: String { "\(name)(\(arguments.joined(separator: ", "))) = \(result)" }
}

/// What a system call returned.
public enum SystemCallResult: Sendable, Hashable, CustomStringConvertible {
    /// A value: an address, a count, a pid (negative values as their two's complement).
    case value(UInt64)
    /// `-1 ENAME (message)`: the errno's name.
    case failure(errno: String)
    /// `?`: the call did not return a value (`exit_group`, a call ended by the process's exit).
    case unknown
    /// The log ends (or the process ended) before the call's second half.
    case none

    /// The value, if the call returned one.
    public var value: UInt64? {
        if case .value(let value) = self { return value }
        return nil
    }

    /// The errno name, if the call failed.
    public var errno: String? {
        if case .failure(let errno) = self { return errno }
        return nil
    }

    public var description: String {
        switch self {
        case .value(let value): return value > 0xFFFF ? "0x" + String(value, radix: 16) : String(value)
        case .failure(let errno): return "-1 \(errno)"
        case .unknown: return "?"
        case .none: return "(no result in the log)"
        }
    }
}
