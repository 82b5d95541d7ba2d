import Shootdown

/// A kernel child and an engine space (and their forks) that receive the same operations, and
/// the comparison after each one.
///
/// After every operation the session compares, in the current process: the outcome; the mappings
/// outside the child's initial ones (range, permissions, ``ModelledVmFlags``); the residency of
/// the pages the operation may have changed (every page after a fork, a switch, brk, mlockall and
/// every ``OracleOptions/fullContentCheckInterval`` operations), mincore against the engine's
/// `residency`, except pages where Linux is not deterministic (see ``ProcessPair/unsettled``);
/// and the contents of pages the operations touched that are resident and readable on both sides,
/// where a load changes nothing either side compares.
public final class OracleSession {
    public let facts: LinuxFacts
    public let layout: OracleLayout
    public let configuration: AddressSpace.Configuration
    public let options: OracleOptions
    let memory: PhysicalMemory
    var processes: [ProcessPair] = []
    /// Index of the process operations go to.
    public private(set) var current = 0
    /// Pages whose residency was scanned but not compared because a transparent huge page may
    /// back them (see ``ProcessPair/unsettled``), and how many of those differed: how much the
    /// THP exclusion hides.
    public internal(set) var unsettledPagesScanned = 0
    public internal(set) var unsettledPagesDiffering = 0
    /// Pages of shared anonymous memory that Linux's reclaim dropped while nothing mapped them,
    /// and the engine dropped too (see `followsHostReclaim`).
    public internal(set) var hostReclaimsFollowed = 0
    private var steps = 0

    /// Spawns the kernel child, reads its facts and layout, and builds the engine side (in physical
    /// memory of its own: nothing an earlier session did can show through).
    public init(options: OracleOptions = OracleOptions()) throws(OracleError) {
        self.options = options
        let linux = try LinuxProcess.spawn(options.process)
        // The heap holds what the runtime allocated before the child took over: contents and
        // residency the engine cannot know. The child never uses it again, so it goes: both sides
        // start with the break at its start and no heap.
        let startBreak = try LinuxFacts.programBreakStart(of: linux)
        guard try linux.syscall(.brk, [startBreak]) == Int64(startBreak) else {
            throw .layout("the child could not move its break back to \(hex(startBreak))")
        }
        let hintFloor = try LinuxFacts.probeHintFloor(linux)
        let initial = try linux.smaps()
        facts = try LinuxFacts.read(from: linux, initial: initial, hintFloor: hintFloor)
        guard facts.threads == 1 else { throw .layout("the child runs \(facts.threads) threads, not 1") }
        layout = OracleLayout(
            windowTop: linux.guardLow, windowSize: options.windowSize, programBreakStart: facts.programBreakStart,
            initialMappings: initial)
        guard layout.windowBottom > facts.programBreak + (1 << 30) else {
            throw .layout("no room for the window below \(hex(linux.guardLow))")
        }
        var configuration = Self.configuration(facts)
        options.engineAdjustment?(&configuration)
        self.configuration = configuration
        // As much swap as the machine has (none here: MADV_PAGEOUT cannot move anonymous pages).
        memory = PhysicalMemory(capacity: options.frames, swapSlots: facts.swapPages)
        let engine = try EngineProcess.mirroring(layout, configuration: configuration, memory: memory)
        processes = [ProcessPair(linux: linux, engine: engine, parent: nil)]
    }

    deinit { close() }

    /// The engine configuration derived from the child's facts.
    static func configuration(_ facts: LinuxFacts) -> AddressSpace.Configuration {
        var capabilities: AddressSpace.Capabilities = []
        if facts.hasIPCLock { capabilities.insert(.ipcLock) }
        if facts.hasSysRawIO { capabilities.insert(.sysRawIO) }
        return AddressSpace.Configuration(
            mmapBase: facts.mmapBase, mmapMinAddress: facts.mmapMinAddress, hintMinAddress: facts.hintMinAddress,
            maxMapCount: facts.maxMapCount, lockedMemoryLimit: facts.lockedMemoryLimit, capabilities: capabilities,
            stackLimit: facts.stackLimit ?? UInt64.max, programBreakStart: facts.programBreakStart,
            commitLimit: facts.overcommitMemory == 0 ? facts.commitLimit : nil)
    }

    /// Ends every process, forks first (idempotent).
    public func close() {
        for pair in processes.reversed() { pair.linux.close() }
    }

    /// Number of processes (forks included).
    public var processCount: Int { processes.count }

    /// The Linux mappings of the current process outside the initial ones (as of the last step).
    public var currentMappings: [MappingView] { processes[current].lastMappings }

    /// Runs `op` on both sides and compares.
    public func step(_ op: KernelOp) throws(OracleError) -> OracleStep {
        if let reason = op.unsafeReason(in: layout) { throw .unsafeOperation("\(op): \(reason)") }
        steps += 1
        var fullCheck = steps % options.fullContentCheckInterval == 0
        let linuxOutcome: KernelOutcome
        let engineOutcome: KernelOutcome
        switch op {
        case .fork:
            let parent = processes[current]
            let child = try parent.linux.fork()
            do throws(MemoryError) {
                let space = try parent.engine.space.fork()
                var pair = ProcessPair(linux: child, engine: EngineProcess(space: space), parent: current)
                pair.touched = parent.touched
                pair.unsettled = parent.unsettled
                pair.eligibleBlocks = parent.eligibleBlocks
                processes.append(pair)
                current = processes.count - 1
                linuxOutcome = .forked(current)
                engineOutcome = .forked(current)
            } catch {
                child.close()
                linuxOutcome = .forked(processes.count)
                engineOutcome = .error(error.errno)
            }
            fullCheck = true
        case .switchProcess(let index):
            if index >= 0 && index < processes.count {
                current = index
                linuxOutcome = .switched(index)
                engineOutcome = .switched(index)
                fullCheck = true
            } else {
                linuxOutcome = .skipped
                engineOutcome = .skipped
            }
        default:
            linuxOutcome = try runLinux(op)
            engineOutcome = processes[current].engine.apply(op, layout: layout)
        }
        track(op, linuxOutcome)
        return try compare(op, linuxOutcome, engineOutcome, fullCheck: fullCheck)
    }

    private func runLinux(_ op: KernelOp) throws(OracleError) -> KernelOutcome {
        let linux = processes[current].linux
        switch op {
        case .read(let address):
            switch try linux.load(address.resolved(in: layout)) {
            case .value(let value): return .loaded(value)
            case .signal(let signal): return .signal(signal)
            }
        case .write(let address, let value):
            switch try linux.store(value, at: address.resolved(in: layout)) {
            case .value: return .stored
            case .signal(let signal): return .signal(signal)
            }
        case .mincore:
            let arguments = op.arguments(in: layout)!
            let (result, vector) = try linux.mincore(address: arguments[0], length: arguments[1])
            return result == 0 ? .residency(vector.map { $0 & 1 != 0 }) : .raw(result)
        default:
            return .raw(try linux.syscall(op.syscall!, op.arguments(in: layout)!))
        }
    }

    /// Keeps the touched and unsettled page sets in step with what the operation did in Linux.
    private func track(_ op: KernelOp, _ outcome: KernelOutcome) {
        let page = LinuxABI.pageSize
        switch op {
        case .read(let address), .write(let address, _):
            if outcome.succeeded { processes[current].touched.insert(address.resolved(in: layout) & ~(page - 1)) }
        case .mremap(let address, let oldLength, let newLength, _, _):
            // Pages moved with the mapping: so do their touched and unsettled marks.
            guard case .value(let target) = outcome else { return }
            let source = address.resolved(in: layout)
            guard target != source else { return }
            let moved = (min(oldLength, newLength) &+ page &- 1) & ~(page - 1)
            let sourceEnd = source &+ moved
            processes[current].carry(from: source, to: sourceEnd, onto: target)
        default:
            break
        }
    }

    /// The ranges an operation may have changed the contents or residency of.
    func affectedRanges(_ op: KernelOp, _ outcome: KernelOutcome) -> [Range<UInt64>] {
        func range(_ address: KernelAddress, _ length: UInt64) -> Range<UInt64> {
            let start = address.resolved(in: layout) & ~(LinuxABI.pageSize - 1)
            let (end, overflow) = start.addingReportingOverflow(length &+ 2 * LinuxABI.pageSize)
            return start..<(overflow ? UInt64.max : end)
        }
        switch op {
        case .mmap(let address, let length, _, _):
            if case .value(let start) = outcome { return [range(.absolute(start), length), range(address, length)] }
            return [range(address, length)]
        case .mremap(let address, let oldLength, let newLength, _, let newAddress):
            var ranges = [range(address, max(oldLength, newLength)), range(newAddress, newLength)]
            if case .value(let start) = outcome { ranges.append(range(.absolute(start), newLength)) }
            return ranges
        case .munmap(let address, let length), .mprotect(let address, let length, _),
            .madvise(let address, let length, _), .mlock(let address, let length), .mlock2(let address, let length, _),
            .munlock(let address, let length), .msync(let address, let length, _), .mseal(let address, let length, _),
            .mincore(let address, let length):
            return [range(address, length)]
        case .read(let address), .write(let address, _):
            return [range(address, 1)]
        case .brk, .mlockall, .munlockall, .fork, .switchProcess:
            return [0..<UInt64.max]
        }
    }
}
