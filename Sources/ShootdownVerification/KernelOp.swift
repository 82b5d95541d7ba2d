/// One operation the oracle runs on both sides: a memory syscall with its raw arguments, a load or
/// store, or a process-level step (fork, switching the process further operations go to).
///
/// Arguments are the raw values a program would pass (flags as bits, lengths unrounded), so error
/// paths are reachable; addresses are ``KernelAddress`` values so reproducers are portable.
/// ``description`` prints a Swift literal that can be pasted into a test.
public enum KernelOp: Hashable, Sendable, Codable, CustomStringConvertible {
    case mmap(KernelAddress, length: UInt64, protection: UInt64, flags: UInt64)
    case munmap(KernelAddress, length: UInt64)
    case mprotect(KernelAddress, length: UInt64, protection: UInt64)
    case mremap(KernelAddress, oldLength: UInt64, newLength: UInt64, flags: UInt64, newAddress: KernelAddress)
    case madvise(KernelAddress, length: UInt64, advice: UInt64)
    case mlock(KernelAddress, length: UInt64)
    case mlock2(KernelAddress, length: UInt64, flags: UInt64)
    case munlock(KernelAddress, length: UInt64)
    case mlockall(flags: UInt64)
    case munlockall
    case brk(KernelAddress)
    case msync(KernelAddress, length: UInt64, flags: UInt64)
    case mseal(KernelAddress, length: UInt64, flags: UInt64)
    /// `mincore` with a vector the child owns; the outcome carries the vector.
    case mincore(KernelAddress, length: UInt64)
    /// An 8-byte load at a page start.
    case read(KernelAddress)
    /// An 8-byte store of `value` at a page start (the engine's page token).
    case write(KernelAddress, value: UInt64)
    /// The current process forks; the new process becomes current.
    case fork
    /// Further operations go to process `index` (0 is the first; forks are numbered in order).
    case switchProcess(Int)

    /// The name coverage is counted under: the syscall, with the advice for `madvise`.
    public var coverageKey: String {
        switch self {
        case .mmap: "mmap"
        case .munmap: "munmap"
        case .mprotect: "mprotect"
        case .mremap: "mremap"
        case .madvise(_, _, let advice):
            LinuxABI.advice.contains { $0.value == advice } ? "madvise(\(LinuxABI.adviceName(advice)))" : "madvise(unknown)"
        case .mlock: "mlock"
        case .mlock2: "mlock2"
        case .munlock: "munlock"
        case .mlockall: "mlockall"
        case .munlockall: "munlockall"
        case .brk: "brk"
        case .msync: "msync"
        case .mseal: "mseal"
        case .mincore: "mincore"
        case .read: "read"
        case .write: "write"
        case .fork: "fork"
        case .switchProcess: "switch"
        }
    }

    /// The syscall this operation makes, if it is one.
    public var syscall: LinuxABI.Syscall? {
        switch self {
        case .mmap: .mmap
        case .munmap: .munmap
        case .mprotect: .mprotect
        case .mremap: .mremap
        case .madvise: .madvise
        case .mlock: .mlock
        case .mlock2: .mlock2
        case .munlock: .munlock
        case .mlockall: .mlockall
        case .munlockall: .munlockall
        case .brk: .brk
        case .msync: .msync
        case .mseal: .mseal
        case .mincore: .mincore
        case .read, .write, .fork, .switchProcess: nil
        }
    }

    /// The raw syscall arguments in `layout` (nil for non-syscalls; mincore's vector is the
    /// child's).
    public func arguments(in layout: OracleLayout) -> [UInt64]? {
        func a(_ address: KernelAddress) -> UInt64 { address.resolved(in: layout) }
        let noFile = UInt64(bitPattern: -1)
        switch self {
        case .mmap(let address, let length, let protection, let flags): return [a(address), length, protection, flags, noFile, 0]
        case .munmap(let address, let length): return [a(address), length]
        case .mprotect(let address, let length, let protection): return [a(address), length, protection]
        case .mremap(let address, let oldLength, let newLength, let flags, let newAddress):
            return [a(address), oldLength, newLength, flags, a(newAddress)]
        case .madvise(let address, let length, let advice): return [a(address), length, advice]
        case .mlock(let address, let length): return [a(address), length]
        case .mlock2(let address, let length, let flags): return [a(address), length, flags]
        case .munlock(let address, let length): return [a(address), length]
        case .mlockall(let flags): return [flags]
        case .munlockall: return []
        case .brk(let address): return [a(address)]
        case .msync(let address, let length, let flags): return [a(address), length, flags]
        case .mseal(let address, let length, let flags): return [a(address), length, flags]
        case .mincore(let address, let length): return [a(address), length]
        case .read, .write, .fork, .switchProcess: return nil
        }
    }

    /// A Swift literal of this operation, with the flags decoded in a trailing comment.
    public var description: String {
        switch self {
        case .mmap(let address, let length, let protection, let flags):
            ".mmap(\(address), length: \(hex(length)), protection: \(hex(protection)), flags: \(hex(flags)))"
                + "  // \(LinuxABI.protectionNames(protection)), \(LinuxABI.mapFlagNames(flags))"
        case .munmap(let address, let length): ".munmap(\(address), length: \(hex(length)))"
        case .mprotect(let address, let length, let protection):
            ".mprotect(\(address), length: \(hex(length)), protection: \(hex(protection)))"
                + "  // \(LinuxABI.protectionNames(protection))"
        case .mremap(let address, let oldLength, let newLength, let flags, let newAddress):
            ".mremap(\(address), oldLength: \(hex(oldLength)), newLength: \(hex(newLength)), flags: \(hex(flags)), newAddress: \(newAddress))"
                + "  // \(LinuxABI.remapFlagNames(flags))"
        case .madvise(let address, let length, let advice):
            ".madvise(\(address), length: \(hex(length)), advice: \(advice))  // \(LinuxABI.adviceName(advice))"
        case .mlock(let address, let length): ".mlock(\(address), length: \(hex(length)))"
        case .mlock2(let address, let length, let flags): ".mlock2(\(address), length: \(hex(length)), flags: \(hex(flags)))"
        case .munlock(let address, let length): ".munlock(\(address), length: \(hex(length)))"
        case .mlockall(let flags): ".mlockall(flags: \(hex(flags)))"
        case .munlockall: ".munlockall"
        case .brk(let address): ".brk(\(address))"
        case .msync(let address, let length, let flags): ".msync(\(address), length: \(hex(length)), flags: \(hex(flags)))"
        case .mseal(let address, let length, let flags): ".mseal(\(address), length: \(hex(length)), flags: \(hex(flags)))"
        case .mincore(let address, let length): ".mincore(\(address), length: \(hex(length)))"
        case .read(let address): ".read(\(address))"
        case .write(let address, let value): ".write(\(address), value: \(hex(value)))"
        case .fork: ".fork"
        case .switchProcess(let index): ".switchProcess(\(index))"
        }
    }
}
