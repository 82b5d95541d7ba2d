import CInterop
import Synchronization

extension SleepableRCU {
    /// Callbacks waiting for a grace period of their domain, and whether a worker is draining them.
    struct DeferredQueue {
        var pending: [@Sendable () -> Void] = []
        var workerActive = false
        /// Callbacks queued and callbacks run, since the domain was created (for ``barrier()``).
        var queued: UInt64 = 0
        var completed: UInt64 = 0
    }

    /// Runs `work` after a grace period of this domain, on a worker thread (the kernel's
    /// `call_srcu`): the caller never waits, however long a reader sleeps. Callbacks queued close
    /// together share one grace period. A worker thread exists only while callbacks are pending.
    ///
    /// `work` runs outside any read section and may take locks; it must not call ``barrier()``.
    func call(afterGracePeriod work: @escaping @Sendable () -> Void) {
        let spawn = deferred.withLock { queue -> Bool in
            queue.pending.append(work)
            queue.queued &+= 1
            if queue.workerActive { return false }
            queue.workerActive = true
            return true
        }
        guard spawn else { return }
        let context = Unmanaged.passRetained(self).toOpaque()
        if !cinterop_thread_start(runSleepableRCUWorker, context) {
            // No thread to be had: drain here (the caller waits, as it would have without this).
            Unmanaged<SleepableRCU>.fromOpaque(context).release()
            drainDeferred()
        }
    }

    /// Waits until every callback queued with ``call(afterGracePeriod:)`` before this call has run
    /// (the kernel's `srcu_barrier`). Must not be called from such a callback or inside a read
    /// section of this domain.
    func barrier() {
        let target = deferred.withLock { $0.queued }
        deferredDone.wait { deferred.withLock { $0.completed } >= target }
    }

    /// The worker's loop: one grace period per batch of callbacks, until none is left.
    func drainDeferred() {
        while true {
            let batch = deferred.withLock { queue -> [@Sendable () -> Void]? in
                if queue.pending.isEmpty {
                    queue.workerActive = false
                    return nil
                }
                defer { queue.pending.removeAll() }
                return queue.pending
            }
            guard let batch else { return }
            synchronize()
            for work in batch { work() }
            deferred.withLock { $0.completed &+= UInt64(batch.count) }
            deferredDone.wakeAll()
        }
    }
}

/// Entry point of a ``SleepableRCU`` worker thread (never declared in main.swift).
private func runSleepableRCUWorker(_ context: UnsafeMutableRawPointer?) {
    guard let context else { return }
    let domain = Unmanaged<SleepableRCU>.fromOpaque(context).takeRetainedValue()
    domain.drainDeferred()
}
