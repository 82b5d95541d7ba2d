import Dispatch
import Foundation
import Synchronization
import Testing

@testable import Shootdown

// Reusable pieces for the notifier and invalidation-source suites: a classic subscriber and an
// interval handler that record every callback, a shared call log, gates to hold a callback open
// from another thread, and small helpers.

/// One callback as a subscriber saw it.
enum NotifierCall: Hashable, Sendable, CustomStringConvertible {
    case start(String, InvalidationRange)
    case end(String, InvalidationRange)
    case secondaryTLB(String, start: UInt64, end: UInt64)
    case clearFlushYoung(String, start: UInt64, end: UInt64)
    case clearYoung(String, start: UInt64, end: UInt64)
    case testYoung(String, address: UInt64)
    case release(String, space: UInt64)
    /// An interval handler's `invalidate`.
    case interval(String, InvalidationRange, sequence: UInt64)

    var subscriber: String {
        switch self {
        case .start(let name, _), .end(let name, _), .secondaryTLB(let name, _, _),
            .clearFlushYoung(let name, _, _), .clearYoung(let name, _, _), .testYoung(let name, _),
            .release(let name, _), .interval(let name, _, _):
            name
        }
    }

    /// The range of a start, end or interval call.
    var range: InvalidationRange? {
        switch self {
        case .start(_, let range), .end(_, let range), .interval(_, let range, _): range
        default: nil
        }
    }

    var isStart: Bool { if case .start = self { true } else { false } }
    var isEnd: Bool { if case .end = self { true } else { false } }

    var description: String {
        switch self {
        case .start(let name, let range): "\(name).start(\(range))"
        case .end(let name, let range): "\(name).end(\(range))"
        case .secondaryTLB(let name, let start, let end): "\(name).secondaryTLB(\(start.hex)-\(end.hex))"
        case .clearFlushYoung(let name, let start, _): "\(name).clearFlushYoung(\(start.hex))"
        case .clearYoung(let name, let start, _): "\(name).clearYoung(\(start.hex))"
        case .testYoung(let name, let address): "\(name).testYoung(\(address.hex))"
        case .release(let name, _): "\(name).release"
        case .interval(let name, let range, let sequence): "\(name).interval(\(range), seq \(sequence))"
        }
    }
}

/// An ordered log shared by several subscribers, so relative order across them is visible.
final class NotifierCallLog: Sendable {
    private let calls = Mutex<[NotifierCall]>([])

    func append(_ call: NotifierCall) { calls.withLock { $0.append(call) } }

    var all: [NotifierCall] { calls.withLock { $0 } }

    /// Returns the calls so far and forgets them.
    @discardableResult
    func drain() -> [NotifierCall] {
        calls.withLock { calls in
            defer { calls.removeAll() }
            return calls
        }
    }

    func calls(of subscriber: String) -> [NotifierCall] { all.filter { $0.subscriber == subscriber } }

    /// The ranges `subscriber`'s start callback received, in order.
    func startRanges(of subscriber: String) -> [InvalidationRange] {
        all.compactMap { if case .start(subscriber, let range) = $0 { range } else { nil } }
    }

    /// The ranges `subscriber`'s interval handler received, in order.
    func intervalRanges(of subscriber: String) -> [InvalidationRange] {
        all.compactMap { if case .interval(subscriber, let range, _) = $0 { range } else { nil } }
    }
}

/// Problems with the start/end pairing of `subscriber` in `calls`: every end must close an open
/// start with an identical range, and nothing may stay open.
func pairingProblems(in calls: [NotifierCall], of subscriber: String) -> [String] {
    var open: [InvalidationRange] = []
    var problems: [String] = []
    for call in calls where call.subscriber == subscriber {
        switch call {
        case .start(_, let range):
            open.append(range)
        case .end(_, let range):
            if let position = open.lastIndex(of: range) {
                open.remove(at: position)
            } else {
                problems.append("end without a matching start: \(range)")
            }
        default:
            break
        }
    }
    problems += open.map { "start never ended: \($0)" }
    return problems
}

/// Whether the split lock covering `address` (the PMD table's lock, and the PTE table's lock if
/// a PTE table maps it) is held by anyone.
func splitLockHeld(_ space: AddressSpace, at address: UInt64) -> Bool {
    guard address < AddressSpace.userLimit else { return false }
    return RCU.withReadSection {
        guard let (pmd, index) = space.pageTable.existingPMDSlot(address) else { return false }
        if space.pageTable.pmdLock(pmd).isLocked { return true }
        let entry = pmd.load(index)
        if entry.isNone || entry.isHuge { return false }
        return space.pageTable.pteLock(TableBlock(entry: entry)).isLocked
    }
}

/// What a ``RecordingNotifier`` observed from inside a start or end callback.
struct CallbackObservation: Sendable {
    var isStart: Bool
    var range: InvalidationRange
    /// `space.translate(range.start)` from inside the callback.
    var firstPage: PageTableEntry?
    /// Whether the calling thread was inside a memb RCU read section (it must not be).
    var insideRCUReadSection: Bool
    /// Whether any split lock covering the range's first, last or 2 MiB-stepped pages was held.
    var splitLockHeld: Bool
    /// `memory.framesInUse` from inside the callback (frames are freed only after end returns).
    var framesInUse: Int
}

/// A classic subscriber recording every callback, with switches for the behaviours tests need:
/// refusing non-blockable ranges, reporting pages young, blocking once inside a start.
final class RecordingNotifier: MMUNotifier, @unchecked Sendable {
    let name: String
    let callbacks: NotifierCallbacks
    let log: NotifierCallLog
    /// When set, start/end probe this space from inside the callback (see ``observations``).
    weak var probedSpace: AddressSpace?
    /// Refuse (return `false` from start) non-blockable ranges.
    let refusesNonBlockable = Atomic<Bool>(false)
    /// When not 0, refuse only non-blockable ranges containing this address.
    let refusalAddress = Atomic<UInt64>(0)
    /// Pages this subscriber reports young (test-and-clear for the clear callbacks).
    let youngPages = Mutex<Set<UInt64>>([])
    /// When armed, the next start blocks on it.
    let startGate = Gate()
    private let observed = Mutex<[CallbackObservation]>([])

    init(
        _ name: String, callbacks: NotifierCallbacks = [.invalidateRangeStart, .invalidateRangeEnd, .release],
        log: NotifierCallLog, probing space: AddressSpace? = nil
    ) {
        self.name = name
        self.callbacks = callbacks
        self.log = log
        probedSpace = space
    }

    var observations: [CallbackObservation] { observed.withLock { $0 } }

    private func probe(_ range: InvalidationRange, isStart: Bool) {
        let insideRCU = RCU.isReadSectionActive
        guard let space = probedSpace else { return }
        var held = false
        var probes = [range.start, range.end &- AddressSpace.pageSize]
        if range.end &- range.start <= 64 * AddressSpace.hugePageSize {
            probes += stride(from: range.start, to: range.end, by: Int(AddressSpace.hugePageSize))
        }
        for address in probes where address >= range.start && address < range.end {
            held = held || splitLockHeld(space, at: address)
        }
        let firstPage = space.translate(range.start)
        // A call that goes back into the engine through a documented lock-free entry point: it
        // would spin forever if the caller held the split lock of that page and the engine took it.
        _ = space.testYoung(at: range.start)
        observed.withLock {
            $0.append(CallbackObservation(
                isStart: isStart, range: range, firstPage: firstPage, insideRCUReadSection: insideRCU,
                splitLockHeld: held, framesInUse: space.memory.framesInUse))
        }
    }

    func invalidateRangeStart(_ range: InvalidationRange) -> Bool {
        log.append(.start(name, range))
        probe(range, isStart: true)
        startGate.passIfArmed()
        if !range.isBlockable && refusesNonBlockable.load(ordering: .acquiring) {
            let address = refusalAddress.load(ordering: .acquiring)
            if address == 0 || (range.start <= address && address < range.end) { return false }
        }
        return true
    }

    func invalidateRangeEnd(_ range: InvalidationRange) {
        log.append(.end(name, range))
        probe(range, isStart: false)
    }

    func invalidateSecondaryTLBs(space: UInt64, start: UInt64, end: UInt64) {
        log.append(.secondaryTLB(name, start: start, end: end))
    }

    func clearFlushYoung(space: UInt64, start: UInt64, end: UInt64) -> Bool {
        log.append(.clearFlushYoung(name, start: start, end: end))
        return takeYoung(start, end)
    }

    func clearYoung(space: UInt64, start: UInt64, end: UInt64) -> Bool {
        log.append(.clearYoung(name, start: start, end: end))
        return takeYoung(start, end)
    }

    func testYoung(space: UInt64, address: UInt64) -> Bool {
        log.append(.testYoung(name, address: address))
        return youngPages.withLock { $0.contains(address) }
    }

    func release(space: UInt64) {
        log.append(.release(name, space: space))
    }

    private func takeYoung(_ start: UInt64, _ end: UInt64) -> Bool {
        youngPages.withLock { pages in
            let hits = pages.filter { $0 >= start && $0 < end }
            pages.subtract(hits)
            return !hits.isEmpty
        }
    }
}

/// An interval handler recording every invalidation, following the protocol (user lock,
/// `setSequence` under it), optionally refusing non-blockable ranges or blocking once.
final class RecordingIntervalHandler: IntervalNotifierHandler, @unchecked Sendable {
    let name: String
    let log: NotifierCallLog
    /// The driver's "user lock": taken by `invalidate` and by commits.
    let userLock = Mutex<Void>(())
    let refusesNonBlockable = Atomic<Bool>(false)
    /// When armed, the next invalidate blocks on it (after `setSequence`).
    let gate = Gate()
    /// Whether `invalidate` calls `setSequence` (the protocol requires it).
    let setsSequence: Bool

    init(_ name: String, log: NotifierCallLog, setsSequence: Bool = true) {
        self.name = name
        self.log = log
        self.setsSequence = setsSequence
    }

    func invalidate(_ notifier: IntervalNotifier, range: InvalidationRange, currentSequence: UInt64) -> Bool {
        log.append(.interval(name, range, sequence: currentSequence))
        if !range.isBlockable && refusesNonBlockable.load(ordering: .acquiring) { return false }
        if setsSequence { userLock.withLock { _ in notifier.setSequence(currentSequence) } }
        gate.passIfArmed()
        return true
    }

    /// The commit step of the read protocol: `readRetry` under the user lock.
    func commitWouldSucceed(_ notifier: IntervalNotifier, _ sequence: UInt64) -> Bool {
        userLock.withLock { _ in !notifier.readRetry(sequence) }
    }
}

/// Holds one callback open: the callback signals `entered` and waits for `open()`.
final class Gate: @unchecked Sendable {
    private let armed = Atomic<Bool>(false)
    private let enteredSemaphore = DispatchSemaphore(value: 0)
    private let proceedSemaphore = DispatchSemaphore(value: 0)

    /// The next ``passIfArmed()`` will block.
    func arm() { armed.store(true, ordering: .releasing) }

    /// Called from the callback.
    func passIfArmed() {
        guard armed.exchange(false, ordering: .acquiringAndReleasing) else { return }
        enteredSemaphore.signal()
        proceedSemaphore.wait()
    }

    /// Waits until a callback is held at the gate (with a generous guard against a hang).
    func waitUntilEntered(sourceLocation: SourceLocation = #_sourceLocation) {
        let entered = enteredSemaphore.wait(timeout: .now() + 60) == .success
        #expect(entered, "no callback reached the gate", sourceLocation: sourceLocation)
    }

    /// Lets the held callback go on.
    func open() { proceedSemaphore.signal() }
}

/// Spins (yielding the processor, never sleeping for a fixed time) until `condition` holds.
/// Returns `false` only if it still does not hold after a generous guard period (a broken engine
/// must fail the test, not hang it; this is not a timing assertion).
@discardableResult
func spinUntil(_ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + .seconds(60)
    while !condition() {
        if ContinuousClock.now > deadline { return false }
        sched_yield()
    }
    return true
}

enum NotifierTestConstants {
    static let page = AddressSpace.pageSize
    static let huge = AddressSpace.hugePageSize
    /// A 2 MiB-aligned address well inside the user range, for fixed mappings.
    static let base: UInt64 = 0x4000_0000
}

/// The address of page `index` counted from ``NotifierTestConstants/base``.
func pageAddress(_ index: Int) -> UInt64 { NotifierTestConstants.base + UInt64(index) * NotifierTestConstants.page }

extension AddressSpace {
    /// The VMA snapshot the engine would pass for the mapping containing `address`.
    func expectedVMASnapshot(containing address: UInt64) -> VMASnapshot? {
        mappings().first { $0.start <= address && address < $0.end }.map {
            VMASnapshot(start: $0.start, end: $0.end, protection: $0.protection, flags: $0.flags)
        }
    }

    /// The interval-notifier state (internal), if any notifier was ever inserted.
    var intervalState: IntervalNotifierState? { subscriptionsPointer?.takeUnretainedValue().intervals }
}

/// A flag set by one thread and read by another (Atomics are non-copyable, which `#expect` cannot
/// decompose).
final class SharedFlag: Sendable {
    private let storage = Atomic<Bool>(false)
    func set() { storage.store(true, ordering: .releasing) }
    var isSet: Bool { storage.load(ordering: .acquiring) }
}

/// A value published by one thread and read by another.
final class SharedValue: Sendable {
    private let storage = Atomic<UInt64>(0)
    func store(_ value: UInt64) { storage.store(value, ordering: .releasing) }
    func increment() { storage.add(1, ordering: .releasing) }
    var value: UInt64 { storage.load(ordering: .acquiring) }
}
