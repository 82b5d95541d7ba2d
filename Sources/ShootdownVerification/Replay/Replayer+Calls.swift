import Shootdown

extension Replayer {
    /// The memory calls the replay runs against the engine.
    static let memoryCalls: Set<String> = [
        "mmap", "munmap", "mprotect", "pkey_mprotect", "mremap", "madvise", "brk", "mlock", "mlock2", "munlock",
        "mlockall", "munlockall", "mincore", "msync", "mseal",
    ]
    /// Process calls whose effect on address spaces the replay models.
    static let processCalls: Set<String> = ["clone", "clone3", "fork", "vfork", "execve", "execveat", "exit", "exit_group"]
    /// Calls that change no address space (process management that `-e trace=process` shows).
    static let noMemoryEffect: Set<String> = [
        "wait4", "waitid", "waitpid", "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open",
        "pidfd_send_signal", "pidfd_getfd",
    ]

    func replayCall(_ call: SystemCall, pid: Int, line: Int) throws(ReplayError) {
        // strace releases that predate mseal (462) print it by number.
        let name = call.name == "syscall_0x1ce" ? "mseal" : call.name
        if Self.processCalls.contains(name) || Self.noMemoryEffect.contains(name) {
            report.processCallsByName[name, default: 0] += 1
            if StraceReader.createsProcess(name) {
                let inProgress = clonesInProgress.removeValue(forKey: pid)
                guard let value = call.result.value, value != 0, let child = Int(exactly: value), child <= Int(Int32.max)
                else { return }
                if inProgress?.child == child || spaceOf[child] != nil { return }
                let text = inProgress?.text ?? ""
                try createChild(child, of: pid, sharing: Self.sharesMemory(name, text + call.arguments.joined(separator: ",")), line: line)
            } else if name == "execve" || name == "execveat", call.result.value == 0 {
                exec(pid)
            }
            return
        }
        guard Self.memoryCalls.contains(name) else {
            report.unmodelled[name, default: 0] += 1
            return
        }
        switch call.result {
        case .value, .failure: break
        case .unknown, .none:
            report.unresolved[name, default: 0] += 1
            return
        }
        if name == "brk" {
            try replayBreak(call, pid: pid, line: line)
            return
        }
        let state = try space(for: pid, breakStart: nil, line: line)
        state.used = true
        guard let prepared = prepare(call, name: name, state: state) else {
            report.unmodelled[name + " (unreadable arguments)", default: 0] += 1
            return
        }
        switch prepared {
        case .unmodelled(let reason):
            report.unmodelled["\(name) (\(reason))", default: 0] += 1
        case .run(let operation):
            compare(run(operation, state: state), with: call, name: name, pid: pid, line: line, compareValue: operation.returnsValue)
        }
    }

    /// Runs an operation, implying missing mappings if Linux found some where the engine has none.
    func run(_ operation: Operation, state: SpaceState) -> Result<UInt64, MemoryError> {
        var outcome = timed(operation.action)
        if case .failure(let error) = outcome, error == .noMemory || error == .badAddress, operation.linuxSucceeded,
            let range = operation.impliedRange, implyMappings(range, state: state)
        {
            report.impliedMappings += 1
            outcome = timed(operation.action)
        }
        if case .success(let value) = outcome { operation.onSuccess(value) }
        return outcome
    }

    /// Maps the pages of `range` that neither the engine nor the log has (anonymous, read-write).
    /// Returns whether it mapped any.
    func implyMappings(_ range: Range<UInt64>, state: SpaceState) -> Bool {
        let space = state.space
        var holes: [Range<UInt64>] = []
        var cursor = range.lowerBound
        for mapping in space.mappings() where mapping.end > range.lowerBound && mapping.start < range.upperBound {
            if mapping.start > cursor { holes.append(cursor..<mapping.start) }
            cursor = max(cursor, mapping.end)
        }
        if cursor < range.upperBound { holes.append(cursor..<range.upperBound) }
        var mapped = false
        for hole in holes {
            for gap in state.known.gaps(in: hole) {
                if (try? space.map(length: gap.upperBound - gap.lowerBound, placement: .fixedNoReplace(gap.lowerBound))) != nil {
                    mapped = true
                }
            }
        }
        return mapped
    }

    func timed(_ action: () throws(MemoryError) -> UInt64) -> Result<UInt64, MemoryError> {
        let clock = ContinuousClock()
        let start = clock.now
        let outcome: Result<UInt64, MemoryError>
        do throws(MemoryError) {
            outcome = .success(try action())
        } catch {
            outcome = .failure(error)
        }
        let elapsed = (clock.now - start).components
        report.engineNanoseconds &+= UInt64(max(0, elapsed.seconds)) &* 1_000_000_000
            &+ UInt64(max(0, elapsed.attoseconds / 1_000_000_000))
        return outcome
    }

    /// Counts a replayed call as matched or mismatched.
    func compare(
        _ outcome: Result<UInt64, MemoryError>, with call: SystemCall, name: String, pid: Int, line: Int, compareValue: Bool
    ) {
        report.replayed += 1
        report.replayedByName[name, default: 0] += 1
        let engine: String
        switch outcome {
        case .success(let value):
            if case .value(let linux) = call.result, !compareValue || linux == value {
                report.matched += 1
                return
            }
            engine = compareValue ? SystemCallResult.value(value).description : "success"
        case .failure(let error):
            if call.result.errno == error.errnoName {
                report.matched += 1
                return
            }
            engine = "-1 \(error.errnoName)"
        }
        report.mismatches.append(ReplayReport.Mismatch(
            line: line, pid: pid == -1 ? nil : pid, call: call, linux: call.result.description, engine: engine))
    }

    // MARK: - brk

    func replayBreak(_ call: SystemCall, pid: Int, line: Int) throws(ReplayError) {
        guard let requested = call.arguments.first.flatMap(Syntax.argumentNumber), let result = call.result.value else {
            report.unmodelled["brk (unreadable arguments)", default: 0] += 1
            return
        }
        let query = requested == 0
        var state: SpaceState
        if let existing = spaceOf[pid] {
            state = existing
            if query, let current = state.currentBreak, current != result, !sawExecve, state.owned {
                // A log without execve lines: a new break is a new program in this process.
                detach(pid, from: state)
                state = try space(for: pid, breakStart: result, line: line)
            }
        } else {
            state = try space(for: pid, breakStart: query ? result : nil, line: line)
        }
        state.used = true
        guard let current = state.currentBreak else {
            // The first break the log shows: learnt, not compared.
            state.breakStart = result
            state.currentBreak = result
            report.breakQueriesLearned += 1
            return
        }
        let space = state.space
        let native = state.breakIsNative
        let operation = Operation(returnsValue: true, linuxSucceeded: true) { () throws(MemoryError) -> UInt64 in
            if native { return try space.setBreak(requested) }
            // The space's own break is not the log's: move a heap mapping with the log's break.
            if query || result == current { return current }
            let oldEnd = Replayer.pageEnd(current)
            let newEnd = Replayer.pageEnd(result)
            if newEnd > oldEnd {
                try space.map(length: newEnd - oldEnd, placement: .fixedNoReplace(oldEnd))
            } else if newEnd < oldEnd {
                try space.unmap(address: newEnd, length: oldEnd - newEnd)
            }
            return result
        } onSuccess: { [state] value in
            if let start = state.breakStart {
                let top = Replayer.pageEnd(max(value, state.currentBreak ?? value))
                if start < top { state.known.insert(AddressSpace.pageAlignDown(start)..<top) }
            }
            state.currentBreak = value
        }
        compare(run(operation, state: state), with: call, name: "brk", pid: pid, line: line, compareValue: true)
    }
}

/// An engine operation standing for one call.
struct Operation {
    /// Whether the call returns a value to compare (mmap, mremap, brk) rather than 0.
    var returnsValue: Bool
    /// Whether Linux's call succeeded.
    var linuxSucceeded: Bool
    /// The range a missing mapping may be implied over (calls that need their range mapped).
    var impliedRange: Range<UInt64>?
    var action: () throws(MemoryError) -> UInt64
    /// Bookkeeping after success, with the engine's result.
    var onSuccess: (UInt64) -> Void

    init(
        returnsValue: Bool = false, linuxSucceeded: Bool, impliedRange: Range<UInt64>? = nil,
        action: @escaping () throws(MemoryError) -> UInt64, onSuccess: @escaping (UInt64) -> Void = { _ in }
    ) {
        self.returnsValue = returnsValue
        self.linuxSucceeded = linuxSucceeded
        self.impliedRange = impliedRange
        self.action = action
        self.onSuccess = onSuccess
    }
}

/// What a call becomes.
enum Prepared {
    case run(Operation)
    /// Not replayed, for this reason (counted as unmodelled).
    case unmodelled(String)
}
