import Synchronization
/// The callbacks a subscriber implements (the non-NULL members of the kernel's
/// `struct mmu_notifier_ops`). Declared by the subscriber and read once at registration; the
/// engine calls only what is declared, so an unused callback costs nothing.
public struct NotifierCallbacks: OptionSet, Hashable, Sendable {
    /// The bits.
    public let rawValue: UInt16
    /// The set with bits `rawValue`.
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// ``MMUNotifier/invalidateRangeStart(_:)``.
    public static let invalidateRangeStart = NotifierCallbacks(rawValue: 1 << 0)
    /// ``MMUNotifier/invalidateRangeEnd(_:)``.
    public static let invalidateRangeEnd = NotifierCallbacks(rawValue: 1 << 1)
    /// Called under the split lock at every entry change; must not sleep. Exclusive with
    /// start/end (for secondary TLBs that share the CPU page table, like IOMMU SVA).
    public static let invalidateSecondaryTLBs = NotifierCallbacks(rawValue: 1 << 2)
    /// ``MMUNotifier/clearFlushYoung(space:start:end:)`` (under the split lock; must not sleep).
    public static let clearFlushYoung = NotifierCallbacks(rawValue: 1 << 3)
    /// ``MMUNotifier/clearYoung(space:start:end:)`` (under the split lock; must not sleep).
    public static let clearYoung = NotifierCallbacks(rawValue: 1 << 4)
    /// ``MMUNotifier/testYoung(space:address:)``.
    public static let testYoung = NotifierCallbacks(rawValue: 1 << 5)
    /// ``MMUNotifier/release(space:)``.
    public static let release = NotifierCallbacks(rawValue: 1 << 6)

    /// Start and end.
    public static let invalidateRange: NotifierCallbacks = [.invalidateRangeStart, .invalidateRangeEnd]
    /// The three aging callbacks.
    public static let young: NotifierCallbacks = [.clearFlushYoung, .clearYoung, .testYoung]
}

/// A subscriber to an address space's invalidations (the kernel's `struct mmu_notifier` + ops):
/// a secondary MMU, a registration cache, a code cache.
///
/// Ownership: the space holds the subscriber strongly from ``AddressSpace/registerNotifier(_:)``
/// until ``AddressSpace/unregisterNotifier(_:)`` or the space's teardown (explicit, or when its last
/// reference goes away), and never after. Hold the space `weak`: a strong reference back is a
/// cycle that keeps both alive once the user drops them.
///
/// Every callback runs on the thread that changes the address space, inside a read section of the
/// process-wide notifier domain (or, with ``NotifierListProtection/rwlock``, under the list's
/// reader lock), and with that operation's locks held; each callback's documentation says which.
/// Rules common to all of them:
/// - Never call ``AddressSpace/unregisterNotifier(_:)``, ``IntervalNotifier/remove()``,
///   ``IntervalNotifier/readBegin()`` or ``AddressSpace/mirror(address:length:write:notifier:retryLimit:commit:)``,
///   and never tear down a space that has subscribers (or drop its last reference): each waits for
///   running callbacks, this one included. Hand such work to another thread.
/// - When the callback runs with the space's mmap lock held, never call an operation of that space
///   that takes it: faults, ``AddressSpace/read(at:)``, ``AddressSpace/write(_:at:)``, `map`,
///   `unmap`, `protect`, `advise`, `registerNotifier`, `teardown`, ``AddressSpace/mappings()``, and
///   ``AddressSpace/mapping(containing:)`` (it falls back to the lock while the VMA is being
///   changed, which it is during `protect`: read ``InvalidationRange/vma`` instead).
/// - Always allowed: ``AddressSpace/translate(_:)`` (lock-free), reading ``PhysicalMemory``, your
///   own locks (sleeping ones only where the callback may sleep).
/// - Debug builds of the engine trap with a message on each of these mistakes (waiting from a
///   callback, re-entering the mmap lock, sleeping under a split lock) instead of hanging.
///
/// Once ``AddressSpace/unregisterNotifier(_:)`` returns, no callback of the subscriber runs or
/// will run.
public protocol MMUNotifier: AnyObject, Sendable {
    /// The callbacks this subscriber implements (read once, at registration).
    var callbacks: NotifierCallbacks { get }

    /// Translations in `range` are about to be removed or weakened. Return `false` only to refuse
    /// a non-blockable range.
    ///
    /// Context: before any CPU entry in `range` changes, outside every page-table (split) lock,
    /// after the interval notifiers' handlers. The mmap lock is held for writing (`map` over a
    /// mapping, `unmap`, `protect`, `remap`, `fork`, `collapse`, `clearSoftDirty`), for reading
    /// (`advise`, faults that break copy-on-write, `pin` when it unshares, `reclaim`, `migrate`),
    /// or tried for reading (the OOM reaper's non-blockable ranges); the `release` range of a
    /// teardown never reaches this callback. May sleep when `range.isBlockable`; must not otherwise (refuse instead, and then
    /// do not implement the end callback). Between start and end the subscriber must not create
    /// translations in the range.
    func invalidateRangeStart(_ range: InvalidationRange) -> Bool
    /// The change announced by the matching start is complete (frames it removed are freed only
    /// after every end returned).
    ///
    /// Context: as the matching start (same thread, same locks), after the CPU entries changed.
    /// May sleep when `range.isBlockable`.
    func invalidateRangeEnd(_ range: InvalidationRange)
    /// Entries in `[start, end)` changed; flush TLBs that share the CPU page table (an IOMMU
    /// walking the same tables).
    ///
    /// Context: under the split lock of the changed entries (and the mmap lock): must not sleep,
    /// must take only spin locks, and must not touch the space except ``AddressSpace/translate(_:)``.
    /// Exclusive with start/end.
    func invalidateSecondaryTLBs(space: UInt64, start: UInt64, end: UInt64)
    /// Tests and clears the accessed state of `[start, end)` in the secondary MMU, flushing it.
    ///
    /// Context: under the split lock of the page table being aged, with the mmap lock held for
    /// reading (`age`, `reclaim`): must not sleep, must take only spin locks, and must not call
    /// into the space except ``AddressSpace/translate(_:)``.
    func clearFlushYoung(space: UInt64, start: UInt64, end: UInt64) -> Bool
    /// Like ``clearFlushYoung(space:start:end:)`` but the flush may be skipped. Same context.
    func clearYoung(space: UInt64, start: UInt64, end: UInt64) -> Bool
    /// Whether `address` was accessed through the secondary MMU.
    ///
    /// Context: no page-table lock and no mmap lock (``AddressSpace/testYoung(at:)``); must not
    /// sleep (it is an aging query: take only spin locks).
    func testYoung(space: UInt64, address: UInt64) -> Bool
    /// The space is going away, or the subscriber is being unregistered: drop every translation.
    ///
    /// Context: from ``AddressSpace/teardown()`` (the space is already dead: every operation on it
    /// throws; no mmap lock held, nothing zapped yet), or from ``AddressSpace/unregisterNotifier(_:)``
    /// on the unregistering thread (no engine lock held). May sleep.
    func release(space: UInt64)
}

/// Defaults for the callbacks a subscriber does not implement (it should not declare them in
/// ``MMUNotifier/callbacks`` either: the engine then never calls them).
extension MMUNotifier {
    /// Accepts (does nothing).
    public func invalidateRangeStart(_ range: InvalidationRange) -> Bool { true }
    /// Does nothing.
    public func invalidateRangeEnd(_ range: InvalidationRange) {}
    /// Does nothing.
    public func invalidateSecondaryTLBs(space: UInt64, start: UInt64, end: UInt64) {}
    /// Reports nothing young.
    public func clearFlushYoung(space: UInt64, start: UInt64, end: UInt64) -> Bool { false }
    /// Reports nothing young.
    public func clearYoung(space: UInt64, start: UInt64, end: UInt64) -> Bool { false }
    /// Reports nothing young.
    public func testYoung(space: UInt64, address: UInt64) -> Bool { false }
    /// Does nothing.
    public func release(space: UInt64) {}
}

/// How a space's subscriber list is protected: sleepable RCU (default; readers write no shared
/// line) or a reader-preferring reader-writer spin lock (for comparison; callbacks may re-enter the
/// list while a registration change waits, and writers may starve while readers overlap). A design
/// knob chosen at space creation.
public enum NotifierListProtection: String, Sendable, CaseIterable {
    /// An immutable array swapped by writers, read under sleepable RCU (default).
    case rcu
    /// The same array under a reader-preferring reader-writer spin lock.
    case rwlock
}
