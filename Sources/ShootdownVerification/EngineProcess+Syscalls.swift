import Shootdown

/// Which raw syscall arguments the engine's API can express. The generator asks it so that every
/// operation it makes reaches the engine; everything else is ``KernelOutcome/inexpressible(_:)``.
/// This grows as the engine's API does.
public struct EngineCapabilities: Sendable {
    /// `MAP_*` bits the engine's `map` has an option for (beyond the type).
    public var mapFlags: UInt64 =
        LinuxABI.mapFixed | LinuxABI.mapFixedNoReplace | LinuxABI.mapAnonymous | LinuxABI.mapPopulate
        | LinuxABI.mapLocked
    /// `MAP_SHARED`, `MAP_PRIVATE` (not `MAP_SHARED_VALIDATE` or invalid types).
    public var mapTypes: [UInt64] = [LinuxABI.mapShared, LinuxABI.mapPrivate]
    /// `PROT_*` bits the engine accepts (others make EINVAL only where Linux checks them).
    public var protectionBits: UInt64 = LinuxABI.protRead | LinuxABI.protWrite | LinuxABI.protExec | LinuxABI.protSem
    /// `MREMAP_*` combinations `remap` accepts.
    public var remapFlags: [UInt64] = [0, LinuxABI.mremapMayMove, LinuxABI.mremapMayMove | LinuxABI.mremapFixed]
    /// `MADV_*` values `advise` has a case for.
    public var advice: [UInt64] = [4, 21, 14, 15, 22, 23]
    /// Syscalls with an engine counterpart.
    public var syscalls: Set<LinuxABI.Syscall> = [.mmap, .munmap, .mprotect, .mremap, .madvise]
    /// Whether `mincore` has an engine counterpart (residency with Linux's errors).
    public var mincore = false

    public init() {}

    /// What the engine this harness was built against can express.
    public static let current = EngineCapabilities()
}

extension EngineProcess {
    /// Runs `op` on the engine. Process-level operations (fork, switch) are the session's.
    func apply(_ op: KernelOp, layout: OracleLayout) -> KernelOutcome {
        func a(_ address: KernelAddress) -> UInt64 { address.resolved(in: layout) }
        func run(_ body: () throws(MemoryError) -> UInt64) -> KernelOutcome {
            do {
                return .value(try body())
            } catch {
                return .error(error.errno)
            }
        }
        let capabilities = EngineCapabilities.current
        switch op {
        case .mmap(let address, let length, let protectionBits, let flags):
            guard capabilities.mapTypes.contains(flags & LinuxABI.mapType) else {
                return .inexpressible("MAP_TYPE \(flags & LinuxABI.mapType)")
            }
            let extra = flags & ~LinuxABI.mapType & ~capabilities.mapFlags
            guard extra == 0 else { return .inexpressible(LinuxABI.mapFlagNames(extra)) }
            guard flags & LinuxABI.mapAnonymous != 0 else { return .inexpressible("file mapping") }
            guard let protection = Self.protection(bits: protectionBits) else {
                return .inexpressible(LinuxABI.protectionNames(protectionBits))
            }
            let start = a(address)
            let placement: AddressSpace.Placement =
                if flags & LinuxABI.mapFixedNoReplace != 0 {
                    .fixedNoReplace(start)
                } else if flags & LinuxABI.mapFixed != 0 {
                    .fixed(start)
                } else if start == 0 {
                    .anywhere
                } else {
                    .hint(start)
                }
            var options: AddressSpace.MapOptions = []
            if flags & LinuxABI.mapType == LinuxABI.mapShared { options.insert(.shared) }
            if flags & LinuxABI.mapPopulate != 0 { options.insert(.populate) }
            if flags & LinuxABI.mapLocked != 0 { options.insert(.locked) }
            return run { () throws(MemoryError) in
                try space.map(length: length, protection: protection, placement: placement, options: options)
            }
        case .munmap(let address, let length):
            return run { () throws(MemoryError) in
                try space.unmap(address: a(address), length: length)
                return 0
            }
        case .mprotect(let address, let length, let protectionBits):
            guard let protection = Self.protection(bits: protectionBits) else {
                return .inexpressible(LinuxABI.protectionNames(protectionBits))
            }
            return run { () throws(MemoryError) in
                try space.protect(address: a(address), length: length, protection: protection)
                return 0
            }
        case .mremap(let address, let oldLength, let newLength, let flags, let newAddress):
            let move: AddressSpace.RemapMove
            switch flags {
            case 0: move = .inPlace
            case LinuxABI.mremapMayMove: move = .mayMove
            case LinuxABI.mremapMayMove | LinuxABI.mremapFixed: move = .fixed(a(newAddress))
            default: return .inexpressible(LinuxABI.remapFlagNames(flags))
            }
            return run { () throws(MemoryError) in
                try space.remap(address: a(address), oldLength: oldLength, newLength: newLength, move: move)
            }
        case .madvise(let address, let length, let adviceValue):
            let advice: AddressSpace.Advice
            switch adviceValue {
            case 4: advice = .dontNeed
            case 21: advice = .pageOut
            case 14: advice = .hugePage
            case 15: advice = .noHugePage
            case 22: advice = .populateRead
            case 23: advice = .populateWrite
            default: return .inexpressible(LinuxABI.adviceName(adviceValue))
            }
            return run { () throws(MemoryError) in
                try space.advise(address: a(address), length: length, advice: advice)
                return 0
            }
        case .read(let address):
            return load(a(address))
        case .write(let address, let value):
            do {
                try space.write(value, at: a(address))
                return .stored
            } catch {
                return Self.touchFailure(error)
            }
        case .mlock, .mlock2, .munlock, .mlockall, .munlockall, .brk, .msync, .mseal, .mincore:
            return .inexpressible(op.coverageKey)
        case .fork, .switchProcess:
            preconditionFailure("process-level operations are the session's")
        }
    }

    /// `PROT_*` bits as a ``Protection`` (`PROT_SEM` has no effect on x86 and is dropped); nil for
    /// other bits.
    static func protection(bits: UInt64) -> Protection? {
        guard bits & ~(LinuxABI.protRead | LinuxABI.protWrite | LinuxABI.protExec | LinuxABI.protSem) == 0 else {
            return nil
        }
        return Protection(rawValue: UInt8(bits & 7))
    }
}
