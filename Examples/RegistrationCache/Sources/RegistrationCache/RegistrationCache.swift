import Shootdown
import Synchronization

/// Why a registration-cache call failed.
public enum RegistrationError: Error, Hashable, Sendable {
    /// ``RegistrationCache/close()`` ran: the cache takes no more work.
    case closed
    /// The handle's registration is gone: an invalidation of its range (munmap, mprotect, madvise,
    /// fork, migration, ...) dropped it. Register the range again.
    case invalidated
    /// The registration collided with invalidations `retryLimit` times in a row.
    case tooManyRetries
    /// The address space refused: ``MemoryError/badAddress`` for a page that is not mapped with
    /// the access, ``MemoryError/invalidArgument`` for a bad range, and so on.
    case memory(MemoryError)
}

/// What a cache has done since it was created.
public struct RegistrationStatistics: Hashable, Sendable {
    /// `register` calls answered by an existing registration.
    public var hits = 0
    /// `register` calls that created a registration.
    public var misses = 0
    /// Valid registrations that an invalidation took away.
    public var invalidations = 0
    /// Snapshots taken again because an invalidation collided with a registration in progress
    /// (interval-notifier collisions, plus pins that went stale before the snapshot).
    public var retries = 0
    /// Invalidated registrations whose notifier was removed and pins released (by ``RegistrationCache/sweep()``,
    /// on the next use of their handle, or on the next miss).
    public var deregistrations = 0
}

/// A registration: what a caller hands to the device (an RDMA memory region's key, in effect).
/// Valid until an invalidation of its range; the cache answers ``RegistrationError/invalidated``
/// for it afterwards.
public struct RegistrationHandle: Hashable, Sendable {
    /// Unique among the cache's registrations.
    public let id: UInt64
    /// First registered address (page-aligned: the registration covers whole pages).
    public let address: UInt64
    /// Bytes registered (whole pages).
    public let length: UInt64
    /// Whether the device may write through it.
    public let isWritable: Bool
}

/// An RDMA-style memory registration cache on Shootdown's public API.
///
/// `register(address:length:write:)` answers from an existing registration that covers the
/// request (a hit) or creates one (a miss): it inserts an interval notifier on the page range,
/// pins the pages (``AddressSpace/pin(address:length:write:)``, so the frames cannot move while
/// the device uses them), and commits the registration through
/// ``AddressSpace/mirror(address:length:write:notifier:retryLimit:commit:)``, whose commit step
/// checks, under the cache lock that the notifier's handler also takes, that no invalidation
/// collided and that the pinned frames are the ones the page table maps.
///
/// **Invalidation and lazy deregistration.** The interval handler runs inside the invalidation
/// (with the mmap lock held), so it only marks the registration invalid and moves it to a list:
/// removing its notifier must not happen in a callback (it waits for the callback) and neither
/// may anything else that sleeps on the space. The notifier removal and the unpinning happen later,
/// outside every callback: in ``sweep()``, when the stale handle is next used, or on the next miss.
/// Until then the device keeps the old frames pinned (they cannot be reused for anything else),
/// but the cache refuses every access through the invalidated handle.
///
/// **Fork.** Shootdown has no `MADV_DONTFORK` (``AddressSpace/Advice`` has no such case), so
/// registered ranges are not kept out of a child. They do not need to be for correctness: a
/// fork copies pinned pages for the child and leaves the parent's pinned frames mapped and
/// writable (``AddressSpace/fork()``), so the parent and the device keep sharing the page. The
/// fork still write-protects the rest of each private mapping under a `protectionPage`
/// invalidation, which this cache treats like any other invalidation: registrations in forked
/// mappings are dropped and re-created on next use (one miss each). A cache that wants to keep
/// them could skip `protectionPage` events for ranges it has pinned; this one stays conservative.
///
/// **Close.** ``close()`` refuses new work, removes every notifier and releases every pin; later
/// calls throw ``RegistrationError/closed``.
///
/// Ownership: the cache holds its space strongly; the space holds each registration's handler,
/// which holds only the cache's shared state, so there is no cycle. Thread-safe: every method may
/// be called from any thread except from a notifier callback (``register(address:length:write:)``,
/// ``sweep()``, ``close()`` and the device accesses may sleep or remove notifiers).
public final class RegistrationCache: Sendable {
    /// The address space whose memory is registered.
    public let space: AddressSpace
    /// Collisions tolerated per registration before ``RegistrationError/tooManyRetries``.
    public let retryLimit: Int

    private let shared: Shared
    private let nextID = Atomic<UInt64>(1)

    /// A cache for `space`.
    ///
    /// - Parameter retryLimit: collisions tolerated per registration (at least 0).
    public init(space: AddressSpace, retryLimit: Int = 64) {
        precondition(retryLimit >= 0, "retryLimit must not be negative")
        self.space = space
        self.retryLimit = retryLimit
        shared = Shared()
    }

    /// A registration covering the pages of `[address, address + length)`, for device writes too
    /// if `write`: an existing one that covers the range (with write access if asked), or a new one.
    ///
    /// - Throws: ``RegistrationError/closed`` after ``close()``; ``RegistrationError/memory(_:)``
    ///   for a bad range or pages not mapped with the access; ``RegistrationError/tooManyRetries``.
    public func register(address: UInt64, length: UInt64, write: Bool) throws(RegistrationError) -> RegistrationHandle {
        let (start, bytes): (UInt64, UInt64)
        do {
            (start, bytes) = try AddressSpace.pageRange(covering: address, length: length)
        } catch {
            throw .memory(error)
        }
        let end = start + bytes
        let hit = try shared.state.withLock { state throws(RegistrationError) -> RegistrationHandle? in
            if state.closed { throw .closed }
            for registration in state.valid.values
            where registration.start <= start && end <= registration.end && (registration.writable || !write) {
                state.statistics.hits += 1
                return registration.handle
            }
            state.statistics.misses += 1
            return nil
        }
        if let hit { return hit }
        sweep()
        return try establish(start, end, write)
    }

    /// Creates, pins and commits a registration of `[start, end)`.
    private func establish(_ start: UInt64, _ end: UInt64, _ write: Bool) throws(RegistrationError) -> RegistrationHandle {
        let registration = Registration(
            id: nextID.wrappingAdd(1, ordering: .relaxed).oldValue, start: start, end: end, writable: write,
            shared: shared)
        let notifier: IntervalNotifier
        do {
            notifier = try space.insertIntervalNotifier(start: start, length: end - start, handler: registration)
        } catch {
            throw .memory(error)
        }
        var stalePins = 0
        while true {
            // Pin first, outside the cache lock: pinning takes the mmap lock and may invalidate
            // (unsharing copy-on-write pages), and invalidations take the cache lock.
            let pin: PinnedRange
            do {
                pin = try space.pin(address: start, length: end - start, write: write)
            } catch {
                notifier.remove()
                throw .memory(error)
            }
            var stale = false
            let outcome: MirrorOutcome
            do {
                outcome = try space.mirror(
                    address: start, length: end - start, write: write, notifier: notifier,
                    retryLimit: retryLimit - stalePins
                ) { pages, sequence in
                    shared.state.withLock { state -> MirrorCommit in
                        if state.closed { return .abort }
                        // Under the lock the handler takes: no invalidation can slip in between.
                        if notifier.readRetry(sequence) { return .retry }
                        // An invalidation between the pin and `readBegin` is not a collision, but
                        // it replaced frames: the pin holds old pages. Pin again.
                        for page in pages where (try? pin.frame(at: page.address)) != page.frame {
                            stale = true
                            return .abort
                        }
                        registration.pin = pin
                        registration.notifier = notifier
                        registration.isValid = true
                        state.valid[registration.id] = registration
                        return .committed
                    }
                }
            } catch {
                pin.unpin()
                notifier.remove()
                throw .memory(error)
            }
            shared.state.withLock { $0.statistics.retries += outcome.retries + (stale ? 1 : 0) }
            switch outcome {
            case .committed:
                return registration.handle
            case .aborted where stale:
                pin.unpin()
                stalePins += 1
                if stalePins > retryLimit - outcome.retries {
                    notifier.remove()
                    throw .tooManyRetries
                }
            case .aborted:
                pin.unpin()
                notifier.remove()
                throw .closed
            case .retryLimitReached:
                pin.unpin()
                notifier.remove()
                throw .tooManyRetries
            }
        }
    }

    /// Whether `handle`'s registration is still valid.
    public func isValid(_ handle: RegistrationHandle) -> Bool {
        shared.state.withLock { $0.valid[handle.id] != nil }
    }

    /// A device load (DMA read) of the page at `address` through `handle`'s registration.
    ///
    /// - Throws: ``RegistrationError/invalidated`` if an invalidation dropped the registration
    ///   (which is then deregistered); ``RegistrationError/closed``;
    ///   ``RegistrationError/memory(_:)`` with ``MemoryError/invalidArgument`` outside the range.
    public func read(_ handle: RegistrationHandle, at address: UInt64) throws(RegistrationError) -> UInt64 {
        try access(handle) { pin throws(MemoryError) in try pin.read(at: address) }
    }

    /// A device store (DMA write) of `token` to the page at `address` through `handle`'s
    /// registration; the CPU sees it at once (the registration's frames are the ones it maps).
    ///
    /// - Throws: as ``read(_:at:)``; ``RegistrationError/memory(_:)`` with
    ///   ``MemoryError/badAddress`` through a read-only registration.
    public func write(_ handle: RegistrationHandle, _ token: UInt64, at address: UInt64) throws(RegistrationError) {
        try access(handle) { pin throws(MemoryError) in try pin.write(token, at: address) }
    }

    /// Runs a device access under the cache lock, so it cannot overlap an invalidation of the
    /// registration (the handler waits for the lock).
    private func access<R>(
        _ handle: RegistrationHandle, _ body: (PinnedRange) throws(MemoryError) -> R
    ) throws(RegistrationError) -> R {
        let result = shared.state.withLock { state -> Result<R, RegistrationError> in
            if state.closed { return .failure(.closed) }
            guard let registration = state.valid[handle.id], let pin = registration.pin else {
                return .failure(.invalidated)
            }
            do throws(MemoryError) {
                return .success(try body(pin))
            } catch {
                return .failure(.memory(error))
            }
        }
        if case .failure(.invalidated) = result { sweep() }
        return try result.get()
    }

    /// Deregisters every invalidated registration: removes its notifier and releases its pins.
    /// Runs by itself on the next miss and on the next use of a stale handle.
    ///
    /// Context: may sleep (notifier removal waits for running callbacks); not from a notifier
    /// callback.
    ///
    /// - Returns: registrations deregistered.
    @discardableResult
    public func sweep() -> Int {
        let dropped = shared.state.withLock { state -> [(IntervalNotifier, PinnedRange)] in
            let dropped = state.invalid.compactMap { registration in
                registration.notifier.map { ($0, registration.pin!) }
            }
            state.invalid.removeAll()
            state.statistics.deregistrations += dropped.count
            return dropped
        }
        for (notifier, pin) in dropped {
            notifier.remove()
            pin.unpin()
        }
        return dropped.count
    }

    /// Closes the cache: refuses every later call (they throw ``RegistrationError/closed``),
    /// removes every registration's notifier and releases every pin. Idempotent.
    ///
    /// Context: may sleep; not from a notifier callback.
    public func close() {
        let all = shared.state.withLock { state -> [(IntervalNotifier, PinnedRange)] in
            if state.closed { return [] }
            state.closed = true
            let all = (Array(state.valid.values) + state.invalid).compactMap { registration in
                registration.notifier.map { ($0, registration.pin!) }
            }
            state.valid.removeAll()
            state.invalid.removeAll()
            return all
        }
        for (notifier, pin) in all {
            notifier.remove()
            pin.unpin()
        }
    }

    /// Whether ``close()`` ran.
    public var isClosed: Bool { shared.state.withLock { $0.closed } }

    /// A snapshot of the statistics.
    public var statistics: RegistrationStatistics { shared.state.withLock { $0.statistics } }

    /// The valid registrations.
    public var validRegistrations: [RegistrationHandle] {
        shared.state.withLock { $0.valid.values.map(\.handle).sorted { $0.id < $1.id } }
    }

    /// Invalidated registrations not yet deregistered.
    public var pendingDeregistrations: Int { shared.state.withLock { $0.invalid.count } }

    /// The valid registrations that intersect `[start, end)`. Takes only the cache lock, so a
    /// classic notifier's blockable start callback may call it (tests use that to check that no
    /// registration outlives the start of an invalidation of its range).
    public func validRegistrations(intersecting start: UInt64, _ end: UInt64) -> [RegistrationHandle] {
        shared.state.withLock { state in
            state.valid.values.filter { $0.start < end && start < $0.end }.map(\.handle)
        }
    }

    /// Checks every valid registration against the page table: each page is still pinned and the
    /// CPU maps exactly the pinned frame there. Returns one line per problem (none when coherent).
    /// Meaningful when nothing changes the space concurrently.
    public func audit() -> [String] {
        shared.state.withLock { state in
            var problems: [String] = []
            for registration in state.valid.values {
                guard let pin = registration.pin, pin.isPinned else {
                    problems.append("registration \(registration.id): valid without a pin")
                    continue
                }
                var page = registration.start
                while page < registration.end {
                    let pinned = try? pin.frame(at: page)
                    let mapped = space.translate(page)?.frame
                    if pinned == nil || pinned != mapped {
                        problems.append(
                            "registration \(registration.id) page 0x\(String(page, radix: 16)): pinned \(pinned.map(String.init) ?? "-"), mapped \(mapped.map(String.init) ?? "-")")
                    } else if let pinned, space.memory.pinCount(pinned) == 0 {
                        problems.append("registration \(registration.id): frame \(pinned) has no pin")
                    }
                    page += AddressSpace.pageSize
                }
            }
            return problems
        }
    }
}

/// What the cache and its registrations' handlers share: the lock and what it guards.
private final class Shared: Sendable {
    struct State {
        var valid: [UInt64: Registration] = [:]
        var invalid: [Registration] = []
        var statistics = RegistrationStatistics()
        var closed = false
    }
    let state = Mutex(State())
}

/// One registration, and the interval-notifier handler that follows its range.
private final class Registration: IntervalNotifierHandler, @unchecked Sendable {
    // @unchecked: the mutable fields are written and read only under `shared.state`'s lock.
    let id: UInt64
    let start: UInt64
    let end: UInt64
    let writable: Bool
    let shared: Shared
    var notifier: IntervalNotifier?
    var pin: PinnedRange?
    var isValid = false

    init(id: UInt64, start: UInt64, end: UInt64, writable: Bool, shared: Shared) {
        self.id = id
        self.start = start
        self.end = end
        self.writable = writable
        self.shared = shared
    }

    var handle: RegistrationHandle {
        RegistrationHandle(id: id, address: start, length: end - start, isWritable: writable)
    }

    /// Marks the registration invalid. Runs inside the invalidation, before the CPU page table
    /// changes, with the mmap lock usually held: it takes only the cache lock (a sleeping lock,
    /// which blockable ranges allow; a non-blockable range is refused if the lock is busy) and
    /// leaves removal and unpinning to `sweep`.
    func invalidate(_ notifier: IntervalNotifier, range: InvalidationRange, currentSequence: UInt64) -> Bool {
        let apply = { (state: inout Shared.State) in
            notifier.setSequence(currentSequence)
            guard self.isValid else { return }  // not committed yet: its commit will see the collision
            self.isValid = false
            state.valid[self.id] = nil
            state.invalid.append(self)
            state.statistics.invalidations += 1
        }
        if range.isBlockable {
            shared.state.withLock { apply(&$0) }
            return true
        }
        return shared.state.withLockIfAvailable { apply(&$0) } != nil
    }
}
