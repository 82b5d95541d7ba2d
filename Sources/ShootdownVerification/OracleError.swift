/// Failures of the oracle machinery itself (never a difference between kernel and engine: those
/// are ``Divergence`` values).
public enum OracleError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Spawning the kernel child failed with this errno.
    case spawnFailed(Int32)
    /// The child stopped answering (it died, or the socket broke): pid and errno of the exchange.
    case childLost(pid: Int32, errno: Int32)
    /// The child refused a request (not a memory syscall, or a malformed request).
    case refused(String)
    /// A `/proc` file could not be read or parsed.
    case procfs(path: String, reason: String)
    /// The child's layout is not what the oracle needs (explained).
    case layout(String)
    /// An operation the oracle must never run (it could touch the child's own code and data).
    case unsafeOperation(String)

    public var description: String {
        switch self {
        case .spawnFailed(let errno): "spawning the kernel child failed: \(LinuxABI.errnoName(errno))"
        case .childLost(let pid, let errno): "kernel child \(pid) stopped answering (\(LinuxABI.errnoName(errno)))"
        case .refused(let what): "kernel child refused \(what)"
        case .procfs(let path, let reason): "\(path): \(reason)"
        case .layout(let reason): "kernel child layout: \(reason)"
        case .unsafeOperation(let what): "refusing an operation that could touch the child's own mappings: \(what)"
        }
    }
}
