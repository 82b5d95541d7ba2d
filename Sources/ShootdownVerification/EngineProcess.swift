import Shootdown

/// The engine's side of one kernel process: an ``AddressSpace`` that receives the same operations.
///
/// The raw syscall arguments of a ``KernelOp`` are turned into engine calls in
/// `EngineProcess+Syscalls.swift`; an argument the engine's typed API cannot express yields
/// ``KernelOutcome/inexpressible(_:)`` (the generator only makes operations
/// ``EngineCapabilities`` says the engine can express).
final class EngineProcess {
    let space: AddressSpace

    init(space: AddressSpace) {
        self.space = space
    }

    deinit { space.teardown() }

    /// A space configured from `facts`, with the child's initial mappings mirrored as shared
    /// anonymous fixed mappings of the same protection (shared: nothing the operations create can
    /// merge with them, as with the child's own shared fillers), except the executable's bss: the
    /// anonymous private writable mapping that ends where the heap starts, with resident pages
    /// (so an anon_vma). A private mapping made or changed right after it merges with it in
    /// Linux and takes its anon_vma (it keeps `ac` when made non-writable, and fork copies its
    /// entries), so it is mirrored as private anonymous memory with one page written. The
    /// comparison leaves the initial part of a merged mapping out on both sides.
    static func mirroring(
        _ layout: OracleLayout, configuration: AddressSpace.Configuration, memory: PhysicalMemory
    ) throws(OracleError) -> EngineProcess {
        let space: AddressSpace
        do {
            space = try AddressSpace(configuration: configuration, memory: memory)
        } catch {
            throw .layout("the engine rejected the configuration derived from the child: \(error)")
        }
        for mapping in layout.initialMappings where mapping.end <= LinuxABI.taskSize {
            do {
                let isBSS = mapping.end == layout.programBreakStart && mapping.name.isEmpty
                    && mapping.permissions == "rw-p" && mapping.residentKiB > 0
                try space.map(
                    length: mapping.end - mapping.start, protection: protection(mapping.protectionLetters),
                    placement: .fixed(mapping.start), options: isBSS ? [] : .shared)
                if isBSS { try space.write(0, at: mapping.start) }
            } catch {
                throw .layout("the engine could not mirror the initial mapping \(mapping): \(error)")
            }
        }
        return EngineProcess(space: space)
    }

    static func protection(_ letters: String) -> Protection {
        var protection: Protection = []
        if letters.contains("r") { protection.insert(.read) }
        if letters.contains("w") { protection.insert(.write) }
        if letters.contains("x") { protection.insert(.exec) }
        return protection
    }

    /// Residency of each page of `[start, end)` as the engine reports it for mincore; nil if the
    /// engine refuses the range.
    func residency(_ start: UInt64, _ end: UInt64) -> [Bool]? {
        try? space.residency(address: start, length: end - start)
    }

    /// A load, as a content check makes it.
    func load(_ address: UInt64) -> KernelOutcome {
        do {
            return .loaded(try space.read(at: address))
        } catch {
            return Self.touchFailure(error)
        }
    }

    static func touchFailure(_ error: MemoryError) -> KernelOutcome {
        switch error {
        case .segmentationFault: .signal(LinuxABI.sigsegv)
        case .busError: .signal(LinuxABI.sigbus)
        default: .error(error.errno)
        }
    }
}
