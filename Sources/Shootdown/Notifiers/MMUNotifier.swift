import Synchronization
/// The callbacks a subscriber implements (the non-NULL members of the kernel's
/// `struct mmu_notifier_ops`). Declared by the subscriber and read once at registration; the
/// engine calls only what is declared, so an unused callback costs nothing.
public struct NotifierCallbacks: OptionSet, Hashable, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let invalidateRangeStart = NotifierCallbacks(rawValue: 1 << 0)
    public static let invalidateRangeEnd = NotifierCallbacks(rawValue: 1 << 1)
    /// Called under the split lock at every entry change; must not sleep. Exclusive with
    /// start/end (for secondary TLBs that share the CPU page table, like IOMMU SVA).
    public static let invalidateSecondaryTLBs = NotifierCallbacks(rawValue: 1 << 2)
    public static let clearFlushYoung = NotifierCallbacks(rawValue: 1 << 3)
    public static let clearYoung = NotifierCallbacks(rawValue: 1 << 4)
    public static let testYoung = NotifierCallbacks(rawValue: 1 << 5)
    public static let release = NotifierCallbacks(rawValue: 1 << 6)

    /// Start and end.
    public static let invalidateRange: NotifierCallbacks = [.invalidateRangeStart, .invalidateRangeEnd]
    /// The three aging callbacks.
    public static let young: NotifierCallbacks = [.clearFlushYoung, .clearYoung, .testYoung]
}

/// A subscriber to an address space's invalidations (the kernel's `struct mmu_notifier` + ops):
/// a secondary MMU, a registration cache, a code cache.
///
/// Contexts:
/// - ``invalidateRangeStart(_:)`` and ``invalidateRangeEnd(_:)`` run outside any page-table lock,
///   inside a sleepable read section of ``SleepableRCU/notifiers``; they may sleep when the range is
///   blockable. Between start and end the subscriber must not create translations in the range.
/// - In a non-blockable range, start may refuse by returning `false` (it would have to sleep). A
///   subscriber that may refuse must not implement end. The engine then calls every other
///   subscriber's start anyway, calls end on each subscriber that has one, and the caller leaves
///   the range untouched (docs/protocols.md, "Non-blockable invalidations").
/// - ``invalidateSecondaryTLBs(space:start:end:)`` runs under the split lock: it must not sleep.
/// - ``clearFlushYoung(space:start:end:)`` and ``clearYoung(space:start:end:)`` run under the split
///   lock too; ``testYoung(space:address:)`` runs under no lock. None of them may sleep: take only
///   spin locks there. Debug builds of the engine trap when a callback running under a split lock
///   reaches one of the engine's sleeping locks (a mutex, the mmap lock, a wait or a grace period).
/// - ``release(space:)`` runs at teardown or unregistration, before the pages are freed.
///
/// Once ``AddressSpace/unregisterNotifier(_:)`` returns, no callback of the subscriber runs or
/// will run.
public protocol MMUNotifier: AnyObject, Sendable {
    /// The callbacks this subscriber implements.
    var callbacks: NotifierCallbacks { get }

    /// Translations in `range` are about to be removed or weakened. Return `false` only to refuse
    /// a non-blockable range.
    func invalidateRangeStart(_ range: InvalidationRange) -> Bool
    /// The change announced by the matching start is complete.
    func invalidateRangeEnd(_ range: InvalidationRange)
    /// Entries in `[start, end)` changed; flush TLBs that share the CPU page table. Must not sleep.
    func invalidateSecondaryTLBs(space: UInt64, start: UInt64, end: UInt64)
    /// Test and clear the accessed state of `[start, end)` in the secondary MMU, flushing it.
    func clearFlushYoung(space: UInt64, start: UInt64, end: UInt64) -> Bool
    /// Like ``clearFlushYoung(space:start:end:)`` but the flush may be skipped.
    func clearYoung(space: UInt64, start: UInt64, end: UInt64) -> Bool
    /// Whether `address` was accessed through the secondary MMU.
    func testYoung(space: UInt64, address: UInt64) -> Bool
    /// The space is going away (or the subscriber is being unregistered): drop every translation.
    func release(space: UInt64)
}

extension MMUNotifier {
    public func invalidateRangeStart(_ range: InvalidationRange) -> Bool { true }
    public func invalidateRangeEnd(_ range: InvalidationRange) {}
    public func invalidateSecondaryTLBs(space: UInt64, start: UInt64, end: UInt64) {}
    public func clearFlushYoung(space: UInt64, start: UInt64, end: UInt64) -> Bool { false }
    public func clearYoung(space: UInt64, start: UInt64, end: UInt64) -> Bool { false }
    public func testYoung(space: UInt64, address: UInt64) -> Bool { false }
    public func release(space: UInt64) {}
}

/// How a space's subscriber list is protected: sleepable RCU (default; readers write no shared
/// line) or a reader-preferring reader-writer spin lock (for comparison; callbacks may re-enter the
/// list while a registration change waits, and writers may starve while readers overlap). A design
/// knob chosen at space creation.
public enum NotifierListProtection: String, Sendable, CaseIterable {
    case rcu
    case rwlock
}
