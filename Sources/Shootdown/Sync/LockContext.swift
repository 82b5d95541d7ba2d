import CInterop

/// Debug-build checks of the lock context (the kernel's `might_sleep()` and lockdep's atomic
/// context tracking, reduced to what the engine needs): every spin lock acquisition counts itself
/// per thread, and every operation that may sleep — a sleeping lock, a wait queue, a grace period —
/// traps with a message if the calling thread holds a spin lock (a split page-table lock, say) or
/// is inside an RCU (memb) read section. Callbacks that run under a split lock (the secondary-TLB
/// hook, the young callbacks) therefore trap at once in debug builds when they reach a sleeping
/// lock of the engine, instead of stalling other CPUs in production. Release builds compile every
/// check away.
@usableFromInline
enum LockContext {
    /// A spin lock was taken.
    @inlinable @inline(__always)
    static func spinLockAcquired() {
        #if SHOOTDOWN_INTERNAL_CHECKS
        cinterop_spin_depth_add(1)
        #endif
    }

    /// A spin lock was released.
    @inlinable @inline(__always)
    static func spinLockReleased() {
        #if SHOOTDOWN_INTERNAL_CHECKS
        cinterop_spin_depth_add(-1)
        #endif
    }

    /// Whether the calling thread holds a spin lock (debug builds; always `false` in release).
    @inlinable
    static var holdsSpinLock: Bool {
        #if SHOOTDOWN_INTERNAL_CHECKS
        cinterop_spin_depth_get() != 0
        #else
        false
        #endif
    }

    /// Traps (debug builds) if the calling thread may not sleep here: it holds a spin lock, or is
    /// inside an RCU (memb) read section. `what` names the operation that may sleep.
    @inlinable @inline(__always)
    static func mightSleep(_ what: @autoclosure () -> String) {
        #if SHOOTDOWN_INTERNAL_CHECKS
        if cinterop_spin_depth_get() != 0 || RCU.isReadSectionActive { sleepingInAtomicContext(what()) }
        #endif
    }

    @usableFromInline @inline(never)
    static func sleepingInAtomicContext(_ what: String) -> Never {
        let context = cinterop_spin_depth_get() != 0 ? "while holding a spin lock (a split page-table lock?)" : "inside an RCU read section"
        preconditionFailure("Shootdown: \(what) may sleep, called \(context): a callback that runs under a split lock must not take sleeping locks or call back into operations that do")
    }
}
