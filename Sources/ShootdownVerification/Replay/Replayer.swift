import Shootdown

/// Replays the events of an strace log (``StraceReader``) against Shootdown address spaces, one
/// per traced address space, and checks every memory call's outcome against Linux's.
///
/// ```swift
/// let events = try StraceReader.events(in: log)
/// let report = try Replayer().replay(events)
/// print(report.summary())
/// ```
///
/// **Layout.** Placement is reproduced, not re-decided: a mapping Linux placed at A is made at A
/// (`MAP_FIXED_NOREPLACE`, so a divergence shows as a mismatch instead of clobbering), and a
/// moving mremap moves to where Linux moved it. Calls that failed on Linux are replayed as issued
/// and must fail with the same errno. `brk` runs against a space whose break starts where the
/// process's first `brk(NULL)` said (or, in a space configured otherwise, by moving a heap
/// mapping), and later `brk(NULL)` queries are compared.
///
/// **Files.** A file descriptor with its path (`3</usr/lib/libc.so.6>`, `strace -y`) maps that
/// path's ``FileObject``, one per path for the whole replay (a page cache shared by every
/// process); a descriptor without a path maps one object per descriptor number; `MAP_ANONYMOUS`
/// or fd -1 is anonymous memory. A shared mapping made without `PROT_WRITE` is taken to come from
/// a descriptor opened read-only, one with it from a read-write one (the log does not say).
///
/// **Processes.** `clone`, `clone3`, `fork` and `vfork` give the child a fork of its parent's
/// space, or the parent's space itself with `CLONE_VM` (threads, vfork); a child whose lines come
/// before its parent's clone returns is recognised as the child of a clone still in progress.
/// A successful `execve` gives the process a fresh space (created at its first memory call, with
/// the break its first `brk(NULL)` reports), except that a process whose space has not been used
/// yet keeps it (the traced program's first exec). A log without `execve` lines (traced with
/// `-e trace=memory` only) is taken to exec where a process's `brk(NULL)` reports a new break.
/// `+++ exited`, `+++ killed` and `+++ superseded` end a process; a space ends with its last
/// process and its mappings go into the report.
///
/// **Mappings the log cannot show.** A process starts with mappings made before the log began
/// (its binary, the loader, the stack, the vDSO). A call that fails in the engine with `ENOMEM`
/// or `EFAULT` where Linux succeeded, over a range the log never defined, gets the missing
/// pages mapped (anonymous, read-write) and is replayed again (``ReplayReport/impliedMappings``).
///
/// **Never a silent skip.** Calls outside the modelled set are counted by name
/// (``ReplayReport/unmodelled``); memory calls without a result in the log, by name
/// (``ReplayReport/unresolved``).
///
/// Not thread-safe: one replayer, one thread.
public final class Replayer {
    /// Replay settings.
    public struct Options: Sendable {
        /// Write-fault every page of each new private writable mapping (exercises faults and
        /// zaps; best effort: stops at the first failure).
        public var touch: Bool
        /// At most this many address spaces alive at once (a log with more is refused with
        /// ``ReplayError/tooManyProcesses(line:limit:)``).
        public var maximumLiveSpaces: Int
        /// A call that would populate (fault in) more than this many bytes (`MAP_POPULATE`,
        /// `MAP_LOCKED`, mlock, `MADV_POPULATE_*`, …) is not replayed but counted as unmodelled
        /// (`name (populating more than the limit)`): replaying it would take time and frames
        /// without bound.
        public var maximumPopulateBytes: UInt64

        public init(touch: Bool = false, maximumLiveSpaces: Int = 4096, maximumPopulateBytes: UInt64 = 1 << 30) {
            self.touch = touch
            self.maximumLiveSpaces = maximumLiveSpaces
            self.maximumPopulateBytes = maximumPopulateBytes
        }
    }

    /// What a new address space is for, handed to the space factory.
    public struct SpaceRequest: Sendable {
        /// The process it is for.
        public var pid: Int?
        /// Where its program break starts, when its first call was `brk(NULL)` (page-aligned).
        public var programBreakStart: UInt64?
        /// The memory every space of the replay shares.
        public var memory: PhysicalMemory
    }

    /// Makes the fresh address spaces of a replay (the first process, each exec). Forked
    /// children are made by ``AddressSpace/fork()``, so they keep their parent's configuration.
    public typealias SpaceFactory = (SpaceRequest) throws(MemoryError) -> AddressSpace

    public let options: Options
    /// The memory of every space the replay makes, and of its file objects.
    public let memory: PhysicalMemory
    /// Called with every space the replay creates (fresh, forked) and the pid it is for, before
    /// anything runs in it: attach notifiers or mirrors here.
    public var spaceCreated: ((AddressSpace, Int?) -> Void)?

    let makeSpace: SpaceFactory
    /// The caller's space for the first process, until used.
    var callerSpace: AddressSpace?
    var report = ReplayReport()
    /// The space of each pid (`-1`: no pid column); a pid without one gets a fresh space at its
    /// first memory call.
    var spaceOf: [Int: SpaceState] = [:]
    /// Pids whose process is known (seen, created, or exec'd), so an unseen pid can be told apart.
    var knownPIDs: Set<Int> = []
    /// Clone-family calls in progress, by the pid making them: the flags' text, and the child
    /// already attached to it, if any.
    var clonesInProgress: [Int: (line: Int, name: String, text: String, child: Int?)] = [:]
    /// Children created ahead of their clone's return.
    var attachedChildren: Set<Int> = []
    /// File objects by path (or `fd N` for descriptors without one).
    var files: [String: FileObject] = [:]
    var sawExecve = false
    /// Every space made, in order (ended ones are skipped by ``finish()``).
    var states: [SpaceState] = []
    var liveSpaces = 0
    var finished = false

    /// A replayer whose fresh spaces are made by `makeSpace` (default: `AddressSpace` with
    /// `configuration`, its `programBreakStart` set from the request).
    public init(
        options: Options = Options(), memory: PhysicalMemory = PhysicalMemory(capacity: 1 << 20, swapSlots: 4096),
        configuration: AddressSpace.Configuration = AddressSpace.Configuration(),
        makeSpace: SpaceFactory? = nil
    ) {
        self.options = options
        self.memory = memory
        if let makeSpace {
            self.makeSpace = makeSpace
        } else {
            self.makeSpace = { (request: SpaceRequest) throws(MemoryError) -> AddressSpace in
                var settings = configuration
                settings.programBreakStart = request.programBreakStart
                return try AddressSpace(configuration: settings, memory: request.memory)
            }
        }
    }

    /// A replayer whose first process runs in `space` (the caller keeps it: the replay never
    /// tears it down, and it holds the first process's mappings afterwards). Other spaces (the
    /// children it forks, later execs, other processes) are made like `space`: its configuration
    /// and memory. The natural use is a single-process log (`strace -e trace=memory,process
    /// program`): its first `execve` keeps the caller's space.
    public convenience init(space: AddressSpace, options: Options = Options()) {
        self.init(options: options, memory: space.memory, configuration: space.configuration)
        callerSpace = space
    }

    /// Replays every event and returns the report (see ``finish()``).
    public func replay(_ events: [TraceEvent]) throws(ReplayError) -> ReplayReport {
        for event in events { try replay(event) }
        return finish()
    }

    /// Replays one event.
    public func replay(_ event: TraceEvent) throws(ReplayError) {
        guard !finished else { throw .finished }
        let key = event.pid ?? -1
        if report.rootPID == nil, let pid = event.pid { report.rootPID = pid }
        if !knownPIDs.contains(key) { try arrive(key, line: event.line) }
        switch event.kind {
        case .call(let call):
            report.calls += 1
            try replayCall(call, pid: key, line: event.line)
        case .started(let name, let text):
            if StraceReader.createsProcess(name) {
                clonesInProgress[key] = (event.line, name, text, nil)
            }
        case .signal, .note:
            break
        case .exited, .killed, .superseded:
            leave(key, line: event.line)
        }
    }

    /// Ends the replay: records the mappings of every space still alive and tears down the
    /// spaces the replay made (not the caller's). Further events are refused.
    public func finish() -> ReplayReport {
        if !finished {
            finished = true
            for state in states where !state.over { end(state, ended: false) }
            spaceOf.removeAll()
            states.removeAll()
        }
        return report
    }

    // MARK: - Processes

    /// The first event of `pid`: the child of a clone in progress, or a process of unknown origin.
    func arrive(_ pid: Int, line: Int) throws(ReplayError) {
        knownPIDs.insert(pid)
        if let parent = clonesInProgress.filter({ $0.value.child == nil }).min(by: { $0.value.line < $1.value.line })?.key,
            let clone = clonesInProgress[parent]
        {
            clonesInProgress[parent]?.child = pid
            attachedChildren.insert(pid)
            try createChild(pid, of: parent, sharing: Self.sharesMemory(clone.name, clone.text), line: line)
        }
    }

    /// Whether a clone-family call shares the address space (`CLONE_VM`, vfork).
    static func sharesMemory(_ name: String, _ text: String) -> Bool {
        if name == "vfork" { return true }
        if name == "fork" { return false }
        var word = ""
        for character in text {
            if character.isLetter || character.isNumber || character == "_" {
                word.append(character)
            } else {
                if word == "CLONE_VM" { return true }
                word = ""
            }
        }
        return word == "CLONE_VM"
    }

    /// Gives `child` a fork of `parent`'s space, or that space itself.
    func createChild(_ child: Int, of parent: Int, sharing: Bool, line: Int) throws(ReplayError) {
        knownPIDs.insert(child)
        if let old = spaceOf[child] { detach(child, from: old) }
        guard let state = spaceOf[parent] else { return }  // the parent has no space yet: the child starts fresh
        if sharing {
            state.members.append(child)
            state.pids.append(child)
            spaceOf[child] = state
            return
        }
        try checkSpaceLimit(line: line)
        let forked: AddressSpace
        do throws(MemoryError) {
            forked = try state.space.fork()
        } catch {
            throw .spaceCreation(line: line, error)
        }
        let copy = SpaceState(space: forked, index: report.spaces.count, pid: child, owned: true)
        copy.known = state.known
        copy.breakStart = state.breakStart
        copy.currentBreak = state.currentBreak
        copy.used = true
        register(copy, pid: child)
    }

    func register(_ state: SpaceState, pid: Int) {
        spaceCreated?(state.space, pid == -1 ? nil : pid)
        report.spaces.append(ReplayReport.SpaceResult(
            pids: [pid == -1 ? nil : pid], mappings: [], known: AddressRanges(), ended: false,
            isCallerSpace: !state.owned))
        report.addressSpaces += 1
        liveSpaces += 1
        states.append(state)
        spaceOf[pid] = state
        if pid != -1 { report.lastSpaceOfPID[pid] = state.index }
    }

    func checkSpaceLimit(line: Int) throws(ReplayError) {
        if liveSpaces >= options.maximumLiveSpaces {
            throw .tooManyProcesses(line: line, limit: options.maximumLiveSpaces)
        }
    }

    /// The space of `pid`, created if it has none (a fresh one: the first process, an exec).
    func space(for pid: Int, breakStart: UInt64?, line: Int) throws(ReplayError) -> SpaceState {
        if let state = spaceOf[pid] { return state }
        if let space = callerSpace {
            callerSpace = nil
            let state = SpaceState(space: space, index: report.spaces.count, pid: pid, owned: false)
            register(state, pid: pid)
            return state
        }
        try checkSpaceLimit(line: line)
        let start = breakStart.flatMap { $0 % AddressSpace.pageSize == 0 && $0 < AddressSpace.userLimit ? $0 : nil }
        let space: AddressSpace
        do throws(MemoryError) {
            space = try makeSpace(SpaceRequest(pid: pid == -1 ? nil : pid, programBreakStart: start, memory: memory))
        } catch {
            throw .spaceCreation(line: line, error)
        }
        let state = SpaceState(space: space, index: report.spaces.count, pid: pid, owned: true)
        register(state, pid: pid)
        return state
    }

    /// `pid` ends (exit, kill, superseded).
    func leave(_ pid: Int, line: Int) {
        clonesInProgress[pid] = nil
        guard let state = spaceOf[pid] else { return }
        detach(pid, from: state)
    }

    /// `pid` leaves `state`; the space ends with its last member.
    func detach(_ pid: Int, from state: SpaceState) {
        spaceOf[pid] = nil
        state.members.removeAll { $0 == pid }
        if state.members.isEmpty { end(state, ended: true) }
    }

    /// Records a space's final mappings and tears it down if the replay made it.
    func end(_ state: SpaceState, ended: Bool) {
        guard !state.over else { return }
        state.over = true
        report.spaces[state.index].mappings = state.space.mappings()
        report.spaces[state.index].known = state.known
        report.spaces[state.index].ended = ended
        report.spaces[state.index].pids = state.pids.map { $0 == -1 ? nil : $0 }
        liveSpaces -= 1
        if state.owned { state.space.teardown() }
    }

    /// A successful execve: a fresh space from the next memory call on, unless the current one
    /// is unused and the process's alone.
    func exec(_ pid: Int) {
        sawExecve = true
        guard let state = spaceOf[pid] else { return }
        if !state.used && state.members == [pid] && state.space.mappingCount == 0 { return }
        detach(pid, from: state)
    }
}

/// Why a replay stopped.
public enum ReplayError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The space factory (or a fork) failed for the process at this line.
    case spaceCreation(line: Int, MemoryError)
    /// More address spaces alive at once than ``Replayer/Options/maximumLiveSpaces``.
    case tooManyProcesses(line: Int, limit: Int)
    /// ``Replayer/finish()`` was called already.
    case finished

    public var description: String {
        switch self {
        case .spaceCreation(let line, let error):
            return "line \(line): could not create an address space (\(error))"
        case .tooManyProcesses(let line, let limit):
            return "line \(line): more than \(limit) address spaces alive at once"
        case .finished:
            return "the replay is finished"
        }
    }
}

/// One address space of a replay and what the replay knows about it.
final class SpaceState {
    let space: AddressSpace
    /// Index in the report's spaces.
    let index: Int
    /// Whether the replay made it (and tears it down).
    let owned: Bool
    /// Pids running in it now.
    var members: [Int]
    /// Every pid that ran in it.
    var pids: [Int]
    /// The ranges the log defined.
    var known = AddressRanges()
    /// The program break as the log reports it (`brk(NULL)` and brk results).
    var breakStart: UInt64?
    var currentBreak: UInt64?
    /// Whether a call ran in it.
    var used = false
    var over = false

    init(space: AddressSpace, index: Int, pid: Int, owned: Bool) {
        self.space = space
        self.index = index
        self.owned = owned
        members = [pid]
        pids = [pid]
    }

    /// Whether the engine's break follows the log's (its configured start is the log's).
    var breakIsNative: Bool {
        guard let start = space.configuration.programBreakStart, let breakStart else { return false }
        return start == breakStart
    }
}
