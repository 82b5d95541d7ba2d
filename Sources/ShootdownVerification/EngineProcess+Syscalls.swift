import Shootdown

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
        func done(_ body: () throws(MemoryError) -> Void) -> KernelOutcome {
            run { () throws(MemoryError) in
                try body()
                return 0
            }
        }
        let capabilities = EngineCapabilities.current
        switch op {
        case .mmap(let address, let length, let protectionBits, let flags):
            // Without MAP_ANONYMOUS the child's mmap names fd -1, which Linux looks up before it
            // reads any other argument: the engine's raw-flag mmap fails the same way (EBADF)
            // whatever the other bits, so they are not screened.
            if flags & LinuxABI.mapAnonymous == 0 {
                return run { () throws(MemoryError) in
                    try space.map(address: a(address), length: length, protection: [], rawFlags: flags)
                }
            }
            guard capabilities.mapTypes.contains(flags & LinuxABI.mapType) else {
                return .inexpressible("MAP_TYPE \(flags & LinuxABI.mapType)")
            }
            let extra = flags & ~LinuxABI.mapType & ~capabilities.mapFlags
            // The lowest flag the engine lacks names the gap (one signature per flag).
            guard extra == 0 else { return .inexpressible(LinuxABI.mapFlagNames(extra & (~extra &+ 1))) }
            guard let protection = Self.protection(bits: protectionBits) else {
                return .inexpressible("protection \(hex(protectionBits))")
            }
            return run { () throws(MemoryError) in
                try space.map(address: a(address), length: length, protection: protection, rawFlags: flags)
            }
        case .munmap(let address, let length):
            return done { () throws(MemoryError) in try space.unmap(address: a(address), length: length) }
        case .mprotect(let address, let length, let protectionBits):
            guard let protection = Self.protection(bits: protectionBits) else {
                return .inexpressible("protection \(hex(protectionBits))")
            }
            return done { () throws(MemoryError) in
                try space.protect(address: a(address), length: length, protection: protection)
            }
        case .mremap(let address, let oldLength, let newLength, let flags, let newAddress):
            guard flags <= UInt32.max else { return .inexpressible("mremap flags \(hex(flags))") }
            return run { () throws(MemoryError) in
                try space.remap(
                    address: a(address), oldLength: oldLength, newLength: newLength,
                    flags: AddressSpace.RemapFlags(rawValue: UInt32(flags)), newAddress: a(newAddress))
            }
        case .madvise(let address, let length, let advice):
            // The kernel takes the advice as an int.
            return done { () throws(MemoryError) in
                try space.advise(address: a(address), length: length, rawAdvice: Int32(truncatingIfNeeded: advice))
            }
        case .mlock(let address, let length):
            return done { () throws(MemoryError) in try space.lock(address: a(address), length: length) }
        case .mlock2(let address, let length, let flags):
            return done { () throws(MemoryError) in
                try space.lock(address: a(address), length: length, rawFlags: UInt32(truncatingIfNeeded: flags))
            }
        case .munlock(let address, let length):
            return done { () throws(MemoryError) in try space.unlock(address: a(address), length: length) }
        case .mlockall(let flags):
            return done { () throws(MemoryError) in
                try space.lockAll(AddressSpace.LockAllFlags(rawValue: UInt32(truncatingIfNeeded: flags)))
            }
        case .munlockall:
            return done { () throws(MemoryError) in try space.unlockAll() }
        case .brk(let address):
            return run { () throws(MemoryError) in try space.setBreak(a(address)) }
        case .msync(let address, let length, let flags):
            return done { () throws(MemoryError) in
                try space.sync(
                    address: a(address), length: length,
                    flags: AddressSpace.SyncFlags(rawValue: UInt32(truncatingIfNeeded: flags)))
            }
        case .mseal(let address, let length, let flags):
            return done { () throws(MemoryError) in try space.seal(address: a(address), length: length, flags: flags) }
        case .mincore(let address, let length):
            do {
                return .residency(try space.residency(address: a(address), length: length))
            } catch {
                return .error(error.errno)
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
        case .fork, .switchProcess:
            preconditionFailure("process-level operations are the session's")
        }
    }

    /// `PROT_*` bits as a ``Protection`` (the engine takes raw bits; nil past 32 bits).
    static func protection(bits: UInt64) -> Protection? {
        bits <= UInt64(UInt32.max) ? Protection(rawValue: UInt32(bits)) : nil
    }
}
