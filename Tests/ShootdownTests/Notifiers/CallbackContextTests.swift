import Synchronization
import Testing

@testable import Shootdown

private let p = NotifierTestConstants.page
private let base = NotifierTestConstants.base

/// What a test subscriber does from inside its callbacks.
private enum Misstep: Int, Sendable {
    /// Nothing forbidden (the control).
    case none
    /// `notifier.remove()` of the notifier being called.
    case removeSelf
    /// `notifier.readBegin()` of the notifier being called.
    case readBegin
    /// `space.unregisterNotifier(self)`.
    case unregisterSelf
    /// `space.mapping(containing:)` (falls back to the mmap read lock when the VMA is busy).
    case mappingContaining
    /// `space.registerNotifier(_:)` (takes the mmap write lock).
    case registerAnother
    /// `space.read(at:)` of a page never touched (a fault: the mmap lock; and the split lock).
    case read
    /// `other.teardown()` of a space with subscribers (waits for the notifier domain).
    case teardownOther
}

/// A subscriber (classic and interval) that takes one misstep from inside its start or young
/// callbacks, and records what it saw when allowed.
private final class MisbehavingSubscriber: MMUNotifier, IntervalNotifierHandler, @unchecked Sendable {
    weak var space: AddressSpace?
    var other: AddressSpace?
    let misstep: Misstep
    let callbacks: NotifierCallbacks
    let observed = Mutex<[String]>([])

    init(space: AddressSpace, misstep: Misstep, callbacks: NotifierCallbacks) {
        self.space = space
        self.misstep = misstep
        self.callbacks = callbacks
    }

    private func act(_ notifier: IntervalNotifier?, _ range: InvalidationRange?) {
        guard let space else { return }
        switch misstep {
        case .none:
            // Allowed: the range's VMA snapshot, a lock-free translation.
            let entry = space.translate(range?.start ?? base)
            observed.withLock { $0.append("vma \(range?.vma != nil), present \(entry?.isPresent == true)") }
        case .removeSelf: notifier?.remove()
        case .readBegin: _ = notifier?.readBegin()
        case .unregisterSelf: space.unregisterNotifier(self)
        case .mappingContaining: _ = space.mapping(containing: range?.start ?? base)
        case .registerAnother: try? space.registerNotifier(NullNotifier())
        case .read: _ = try? space.read(at: base + 14 * p)
        case .teardownOther: other?.teardown()
        }
    }

    func invalidateRangeStart(_ range: InvalidationRange) -> Bool {
        act(nil, range)
        return true
    }

    func invalidate(_ notifier: IntervalNotifier, range: InvalidationRange, currentSequence: UInt64) -> Bool {
        notifier.setSequence(currentSequence)
        act(notifier, range)
        return true
    }

    func clearYoung(space: UInt64, start: UInt64, end: UInt64) -> Bool {
        act(nil, nil)
        return false
    }

    func clearFlushYoung(space: UInt64, start: UInt64, end: UInt64) -> Bool {
        act(nil, nil)
        return false
    }
}

/// Runs one scenario: a space with 16 pages, the first 12 written, a subscriber taking `misstep` from its
/// `classic` start callback or its interval handler (or its young callbacks when `young`), then the
/// operation that calls it. Exits the process cleanly when nothing trapped.
private func scenario(_ misstep: Misstep, classic: Bool, young: Bool = false, protect: Bool = false) {
    let space = try! AddressSpace(memory: PhysicalMemory(capacity: 1024, swapSlots: 8))
    try! space.map(length: 16 * p, placement: .fixed(base))
    for index in 0..<12 { try! space.write(UInt64(index), at: base + UInt64(index) * p) }
    let callbacks: NotifierCallbacks = young ? [.clearFlushYoung, .clearYoung] : classic ? [.invalidateRangeStart] : []
    let subscriber = MisbehavingSubscriber(space: space, misstep: misstep, callbacks: callbacks)
    if misstep == .teardownOther {
        let other = try! AddressSpace(memory: space.memory)
        try! other.registerNotifier(NullNotifier())
        subscriber.other = other
    }
    var notifier: IntervalNotifier?
    if classic || young {
        try! space.registerNotifier(subscriber)
    } else {
        notifier = try! space.insertIntervalNotifier(start: base, length: 16 * p, handler: subscriber)
    }
    if young {
        _ = try! space.age(address: base, length: 16 * p, flush: true)
    } else if protect {
        try! space.protect(address: base, length: 4 * p, protection: .read)
    } else {
        try! space.advise(address: base, length: 4 * p, advice: .dontNeed)
    }
    if misstep == .none { precondition(!subscriber.observed.withLock { $0 }.isEmpty || young) }
    notifier?.remove()
    space.unregisterNotifier(subscriber)
    space.teardown()
}

/// Whether an exit test's standard error holds `message` (the trap is the one intended, not some
/// other failure).
private func stderr(_ result: ExitTest.Result?, contains message: String) -> Bool {
    guard let result else { return false }
    return String(decoding: result.standardErrorContent, as: UTF8.self).contains(message)
}

private let callbackTrap = "called from inside a notifier callback"
private let reentryTrap = "on a thread that already holds it"
private let sleepTrap = "may sleep, called while holding a spin lock"

/// Callbacks run in a restricted context (see `MMUNotifier` and `IntervalNotifierHandler`): calls
/// that would wait for the callback itself, re-enter the space's mmap lock, or sleep under a
/// split lock hang in production; debug builds trap with a message instead. Each exit test has a
/// control that takes the same steps without the forbidden call and exits cleanly.
@Suite struct CallbackContextTests {
    @Test func theControlsExitCleanly() async {
        await #expect(processExitsWith: .success) { scenario(.none, classic: false) }
        await #expect(processExitsWith: .success) { scenario(.none, classic: true) }
        await #expect(processExitsWith: .success) { scenario(.none, classic: true, protect: true) }
        await #expect(processExitsWith: .success) { scenario(.none, classic: false, young: true) }
    }

    @Test func removingANotifierFromItsOwnCallbackTraps() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            scenario(.removeSelf, classic: false)
        }
        #expect(stderr(result, contains: callbackTrap))
    }

    @Test func readBeginFromACallbackTraps() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            scenario(.readBegin, classic: false)
        }
        #expect(stderr(result, contains: callbackTrap))
    }

    @Test func unregisteringFromACallbackTraps() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            scenario(.unregisterSelf, classic: true)
        }
        #expect(stderr(result, contains: callbackTrap))
    }

    @Test func tearingDownASpaceWithSubscribersFromAClassicCallbackTraps() async {
        // Classic callbacks run inside a read section of the process-wide notifier domain; the
        // teardown of any space with subscribers waits for a grace period of that domain.
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            scenario(.teardownOther, classic: true)
        }
        #expect(stderr(result, contains: callbackTrap))
        // Interval handlers run outside it: tearing another space down there is allowed.
        await #expect(processExitsWith: .success) { scenario(.teardownOther, classic: false) }
    }

    @Test func mappingContainingFromAnMprotectCallbackTraps() async {
        // mprotect holds the VMA's sequence count odd and the mmap lock for writing: the lookup
        // falls back to the mmap read lock, which this thread holds for writing.
        let classic = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            scenario(.mappingContaining, classic: true, protect: true)
        }
        #expect(stderr(classic, contains: reentryTrap))
        let interval = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            scenario(.mappingContaining, classic: false, protect: true)
        }
        #expect(stderr(interval, contains: reentryTrap))
    }

    @Test func registeringFromACallbackUnderTheMmapLockTraps() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            scenario(.registerAnother, classic: true, protect: true)
        }
        #expect(stderr(result, contains: reentryTrap))
    }

    @Test func faultingFromACallbackTraps() async {
        // madvise holds the mmap lock for reading: a fault re-enters it.
        let underMmapLock = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            scenario(.read, classic: true)
        }
        #expect(stderr(underMmapLock, contains: reentryTrap))
        // A young callback runs under the split lock: the read takes it again (or sleeps).
        let underSplitLock = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            scenario(.read, classic: false, young: true)
        }
        #expect(stderr(underSplitLock, contains: sleepTrap))
    }

    @Test func mmapLockOwnershipIsTrackedPerThreadAndLock() throws {
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 512, swapSlots: 8))
        let other = try AddressSpace(memory: space.memory)
        #expect(!LockContext.holdsMmapLock(space.mmapLock.words))
        space.mmapLock.withWriteLock {
            #expect(LockContext.holdsMmapLock(space.mmapLock.words))
            // Another space's lock nests fine (fork holds the parent's while it builds the child).
            other.mmapLock.withReadLock {
                #expect(LockContext.holdsMmapLock(other.mmapLock.words))
            }
            #expect(!LockContext.holdsMmapLock(other.mmapLock.words))
            // Another thread does not hold it.
            let seen = SharedFlag()
            let thread = TestThread { if LockContext.holdsMmapLock(space.mmapLock.words) { seen.set() } }
            thread.join()
            #expect(!seen.isSet)
        }
        #expect(!LockContext.holdsMmapLock(space.mmapLock.words))
    }
}
