import Synchronization
import CInterop

/// The grace-period domain that protects VMAs, VMA-index nodes and page-table blocks: liburcu's
/// memb flavor, with its read side inlined (about 1 ns per section).
///
/// Threads are registered with liburcu automatically the first time they enter a read section and
/// unregistered automatically when they exit; users of the library never register anything.
///
/// Read sections nest, must not be held across `await` (the state is per thread), and must not
/// call ``synchronize()`` or ``barrier()``. Notifier callbacks never run inside this domain: they
/// run in ``SleepableRCU`` sections so that a sleeping callback cannot delay reclamation here.
@usableFromInline
enum RCU {
    /// Enters a read-side section. Pair with ``readUnlock()`` on the same thread.
    @inlinable @inline(__always)
    static func readLock() { cinterop_rcu_read_lock() }

    /// Leaves a read-side section.
    @inlinable @inline(__always)
    static func readUnlock() { cinterop_rcu_read_unlock() }

    /// Runs `body` inside a read-side section.
    @inlinable @inline(__always)
    @available(*, noasync, message: "RCU read sections are per thread and cannot span a suspension point")
    static func withReadSection<R: ~Copyable, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        cinterop_rcu_read_lock()
        defer { cinterop_rcu_read_unlock() }
        return try body()
    }

    /// Whether the calling thread is inside a read-side section.
    @inlinable
    static var isReadSectionActive: Bool { cinterop_rcu_read_ongoing() }

    /// Waits until every read-side section that began before the call has ended.
    ///
    /// - Precondition: not inside a read-side section.
    static func synchronize() {
        checkInvariant(!isReadSectionActive, "synchronize() inside an RCU read section deadlocks")
        LockContext.mightSleep("waiting for an RCU grace period")
        cinterop_rcu_synchronize()
    }

    /// Waits until every callback queued with ``call(afterGracePeriod:)`` has run (about 10 ms).
    static func barrier() {
        checkInvariant(!isReadSectionActive, "barrier() inside an RCU read section")
        LockContext.mightSleep("waiting for deferred reclamation")
        cinterop_rcu_barrier()
    }

    /// Whether liburcu found `membarrier(PRIVATE_EXPEDITED)`; without it read sections cost ~70 ns.
    static var hasSysMembarrier: Bool { cinterop_rcu_has_sys_membarrier() }

    /// Runs `work` on liburcu's worker thread after a grace period.
    static func call(afterGracePeriod work: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(DeferredWork(work)).toOpaque()
        cinterop_rcu_call(runDeferredWork, box)
    }
}

/// Heap box carrying a closure through liburcu's `call_rcu`.
private final class DeferredWork: Sendable {
    let work: @Sendable () -> Void
    init(_ work: @escaping @Sendable () -> Void) { self.work = work }
}

/// `call_rcu` callback; runs on liburcu's worker thread (never declared in main.swift, P1).
private func runDeferredWork(_ context: UnsafeMutableRawPointer?) {
    guard let context else { return }
    Unmanaged<DeferredWork>.fromOpaque(context).takeRetainedValue().work()
}
