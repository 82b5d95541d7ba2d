/// What one ``KernelOp`` returned, on either side.
public enum KernelOutcome: Hashable, Sendable, CustomStringConvertible {
    /// A syscall succeeded with this raw return value (an address for mmap/mremap/brk, else 0).
    case value(UInt64)
    /// A syscall failed with this errno.
    case error(Int32)
    /// `mincore` succeeded: bit 0 of each vector byte, one per page.
    case residency([Bool])
    /// A load read this value.
    case loaded(UInt64)
    /// A store completed.
    case stored
    /// A load or store raised this signal.
    case signal(Int32)
    /// A fork created process `index`, now current.
    case forked(Int)
    /// Further operations go to process `index`.
    case switched(Int)
    /// Not applicable here (switching to a process that does not exist): done on neither side.
    case skipped
    /// The engine has no way to express the operation (its API lacks the option).
    case inexpressible(String)

    /// The errno of a failed syscall.
    public var errno: Int32? {
        if case .error(let value) = self { return value }
        return nil
    }

    /// Whether a syscall succeeded (or a touch completed).
    public var succeeded: Bool {
        switch self {
        case .value, .residency, .loaded, .stored, .forked, .switched: true
        case .error, .signal, .skipped, .inexpressible: false
        }
    }

    /// A syscall's raw return value as an outcome (`-4095 ..< 0` is an errno).
    static func raw(_ result: Int64) -> KernelOutcome {
        result < 0 && result >= -4095 ? .error(Int32(-result)) : .value(UInt64(bitPattern: result))
    }

    public var description: String {
        switch self {
        case .value(let value): hex(value)
        case .error(let errno): LinuxABI.errnoName(errno)
        case .residency(let pages): "resident " + String(pages.map { $0 ? "1" : "0" })
        case .loaded(let value): "loaded \(hex(value))"
        case .stored: "stored"
        case .signal(let signal): LinuxABI.signalName(signal)
        case .forked(let index): "forked process \(index)"
        case .switched(let index): "switched to process \(index)"
        case .skipped: "skipped"
        case .inexpressible(let why): "inexpressible in the engine: \(why)"
        }
    }
}
