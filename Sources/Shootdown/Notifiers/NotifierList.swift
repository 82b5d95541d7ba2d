import Synchronization

/// An immutable snapshot of a space's classic subscribers. Published with one pointer store and
/// replaced (never modified) by registration changes, so readers walk it without locks.
///
/// Each subscriber sits in a ``NotifierBox`` that the snapshot owns; entries reach the boxes
/// through `Unmanaged` and call them with `_withUnsafeGuaranteedRef`, which borrows the box and its
/// `let` existential: dispatch performs no retain or release (callgrind-checked in `perf/`).
@usableFromInline
final class NotifierSnapshot: @unchecked Sendable {
    @frozen @usableFromInline
    struct Entry {
        @usableFromInline let box: Unmanaged<NotifierBox>
        @usableFromInline let callbacks: NotifierCallbacks

        /// Runs `body` with the subscriber, borrowed (no ARC traffic).
        @inlinable @inline(__always)
        func with<R>(_ body: (any MMUNotifier) -> R) -> R {
            box._withUnsafeGuaranteedRef { body($0.notifier) }
        }

        /// The subscriber, retained (for slow paths).
        var notifier: any MMUNotifier { box.takeUnretainedValue().notifier }
    }

    @usableFromInline let entries: UnsafeMutableBufferPointer<Entry>
    /// Union of every subscriber's callbacks, to skip whole dispatches.
    @usableFromInline let union: NotifierCallbacks
    /// The boxes, owned by the snapshot for as long as it lives, which is at least until no reader
    /// can see it.
    let boxes: [NotifierBox]

    init(_ owners: [any MMUNotifier], callbacks: [NotifierCallbacks]) {
        boxes = owners.map(NotifierBox.init)
        entries = .allocate(capacity: max(owners.count, 1))
        var union: NotifierCallbacks = []
        for index in owners.indices {
            (entries.baseAddress! + index).initialize(
                to: Entry(box: Unmanaged.passUnretained(boxes[index]), callbacks: callbacks[index]))
            union.formUnion(callbacks[index])
        }
        self.union = union
    }

    deinit {
        entries.baseAddress!.deinitialize(count: boxes.count)
        entries.deallocate()
    }

    var count: Int { boxes.count }
    var owners: [any MMUNotifier] { boxes.map(\.notifier) }
}

/// Holds one subscriber for a ``NotifierSnapshot``.
@usableFromInline
final class NotifierBox: @unchecked Sendable {
    @usableFromInline let notifier: any MMUNotifier
    init(_ notifier: any MMUNotifier) { self.notifier = notifier }
}

/// A space's list of classic subscribers (the kernel's `subscriptions->list`), walked in read
/// sections of ``SleepableRCU/notifiers`` (or under a reader-writer lock, for comparison).
@usableFromInline
final class NotifierList: @unchecked Sendable {
    @usableFromInline let protection: NotifierListProtection
    @usableFromInline let domain: SleepableRCU
    /// `Unmanaged<NotifierSnapshot>` bits; always a valid snapshot (possibly empty).
    @usableFromInline let current: Atomic<UInt>
    /// Whether the published snapshot has any subscriber: dispatchers skip the read section
    /// entirely when it does not (a space with interval notifiers only). A dispatcher that sees a
    /// stale value either walks an empty snapshot or, like the kernel's list walk after
    /// `hlist_del_rcu`, misses the end of a subscriber being unregistered.
    @usableFromInline let populated = Atomic<Bool>(false)
    /// Readers' lock in ``NotifierListProtection/rwlock`` mode (reader-preferring: callbacks may
    /// re-enter the list while a registration change waits).
    let lock = SpinRWLock()
    /// Serialises registration changes.
    private let writers = FutexMutex()

    init(protection: NotifierListProtection, domain: SleepableRCU) {
        self.protection = protection
        self.domain = domain
        current = Atomic(UInt(bitPattern: Unmanaged.passRetained(NotifierSnapshot([], callbacks: [])).toOpaque()))
    }

    deinit {
        Unmanaged<NotifierSnapshot>.fromOpaque(UnsafeRawPointer(bitPattern: current.load(ordering: .acquiring))!)
            .release()
    }

    /// Runs `body` with the current snapshot inside a read section. `body` may sleep.
    func withSnapshot<R>(_ body: (NotifierSnapshot) -> R) -> R {
        if protection == .rcu {
            let token = domain.readLock()
            defer { domain.readUnlock(token) }
            // Sequentially consistent: required by SleepableRCU's grace-period argument.
            let bits = current.load(ordering: .sequentiallyConsistent)
            return Unmanaged<NotifierSnapshot>.fromOpaque(UnsafeRawPointer(bitPattern: bits).unsafelyUnwrapped)
                ._withUnsafeGuaranteedRef(body)
        } else {
            lock.readLock()
            defer { lock.readUnlock() }
            let bits = current.load(ordering: .acquiring)
            return Unmanaged<NotifierSnapshot>.fromOpaque(UnsafeRawPointer(bitPattern: bits).unsafelyUnwrapped)
                ._withUnsafeGuaranteedRef(body)
        }
    }

    /// Whether a registration change is waiting for readers in ``NotifierListProtection/rwlock``
    /// mode (diagnostics and tests).
    var writerIsWaiting: Bool { lock.writerIsWaiting }

    /// Subscribers currently registered.
    var subscribers: [any MMUNotifier] { withSnapshot { $0.owners } }

    /// Adds `notifier`. Throws `invalidArgument` if it is already registered or mixes the
    /// secondary-TLB hook with start/end.
    func add(_ notifier: any MMUNotifier) throws(MemoryError) {
        let callbacks = notifier.callbacks
        if callbacks.contains(.invalidateSecondaryTLBs) && !callbacks.isDisjoint(with: .invalidateRange) {
            throw .invalidArgument
        }
        try writers.withLock { () throws(MemoryError) in
            let old = snapshot
            if old.owners.contains(where: { $0 === notifier }) { throw .invalidArgument }
            publish(NotifierSnapshot(old.owners + [notifier], callbacks: old.callbacksList + [callbacks]), wait: false)
        }
    }

    /// Removes `notifier` and waits until no reader can still be running one of its callbacks.
    /// Returns whether it was registered.
    @discardableResult
    func remove(_ notifier: any MMUNotifier) -> Bool {
        writers.withLock {
            let old = snapshot
            guard let position = old.owners.firstIndex(where: { $0 === notifier }) else { return false }
            var owners = old.owners
            var callbacks = old.callbacksList
            owners.remove(at: position)
            callbacks.remove(at: position)
            publish(NotifierSnapshot(owners, callbacks: callbacks), wait: true)
            return true
        }
    }

    /// Removes every subscriber (teardown), waiting for readers.
    func removeAll() {
        writers.withLock { publish(NotifierSnapshot([], callbacks: []), wait: true) }
    }

    /// The current snapshot (writers only).
    private var snapshot: NotifierSnapshot {
        Unmanaged<NotifierSnapshot>.fromOpaque(UnsafeRawPointer(bitPattern: current.load(ordering: .acquiring))!)
            .takeUnretainedValue()
    }

    /// Publishes `replacement` and releases the old snapshot once no reader can use it: after
    /// waiting for a grace period of the notifier domain here when `wait` (unregistration: no
    /// callback of a removed subscriber may run after the caller returns), or from the domain's
    /// worker after one (registration: the caller, often holding the mmap write lock, must not wait
    /// for callbacks that may sleep in any space).
    private func publish(_ replacement: NotifierSnapshot, wait: Bool) {
        let bits = UInt(bitPattern: Unmanaged.passRetained(replacement).toOpaque())
        // Relaxed: registration runs under the mmap write lock, so no invalidation is in flight;
        // for unregistration see `populated`.
        if replacement.count > 0 { populated.store(true, ordering: .relaxed) }
        defer { if replacement.count == 0 { populated.store(false, ordering: .relaxed) } }
        let oldBits: UInt
        if protection == .rcu {
            // Sequentially consistent: the publication store of SleepableRCU's argument.
            oldBits = current.exchange(bits, ordering: .sequentiallyConsistent)
            if !wait {
                let old = Unmanaged<NotifierSnapshot>.fromOpaque(UnsafeRawPointer(bitPattern: oldBits)!)
                domain.call(afterGracePeriod: { old.release() })
                return
            }
            domain.synchronize()
        } else {
            lock.writeLock()
            oldBits = current.exchange(bits, ordering: .acquiringAndReleasing)
            lock.writeUnlock()
        }
        Unmanaged<NotifierSnapshot>.fromOpaque(UnsafeRawPointer(bitPattern: oldBits)!).release()
    }
}

extension NotifierSnapshot {
    var callbacksList: [NotifierCallbacks] { (0..<count).map { entries[$0].callbacks } }
}
