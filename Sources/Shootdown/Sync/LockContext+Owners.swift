import CInterop

/// Debug-build checks of the notifier-callback context and of mmap-lock ownership (the kernel's
/// lockdep, reduced to the deadlocks a subscriber can walk into): the dispatcher marks the threads
/// running a callback, and each mmap lock records itself in a per-thread list of held locks.
/// Release builds compile every check away.
extension LockContext {
    // MARK: Notifier callbacks

    /// A notifier callback begins on this thread: an interval handler, or (`classic`) a classic
    /// subscriber's callback, which runs inside a read section of the notifier list (the notifier
    /// domain, or the list's reader lock). The per-thread word counts both: callbacks in the low
    /// 16 bits, classic ones again in the high 16.
    @inlinable @inline(__always)
    static func callbackEntered(classic: Bool = false) {
        #if SHOOTDOWN_INTERNAL_CHECKS
        cinterop_callback_depth_add(classic ? 1 &+ 1 << 16 : 1)
        #endif
    }

    /// The callback begun by ``callbackEntered(classic:)`` returned.
    @inlinable @inline(__always)
    static func callbackExited(classic: Bool = false) {
        #if SHOOTDOWN_INTERNAL_CHECKS
        cinterop_callback_depth_add(classic ? -(1 &+ 1 << 16) : -1)
        #endif
    }

    /// Whether the calling thread is running a notifier callback (debug builds; always `false` in
    /// release).
    @inlinable
    static var inCallback: Bool {
        #if SHOOTDOWN_INTERNAL_CHECKS
        cinterop_callback_depth_get() != 0
        #else
        false
        #endif
    }

    /// Traps (debug builds) if the calling thread is running a notifier callback of any kind.
    /// `what` names the operation and why it cannot run there.
    @inlinable @inline(__always)
    static func notInCallback(_ what: @autoclosure () -> String) {
        #if SHOOTDOWN_INTERNAL_CHECKS
        if cinterop_callback_depth_get() != 0 { calledFromCallback(what()) }
        #endif
    }

    /// Traps (debug builds) if the calling thread is running a classic subscriber's callback, that
    /// is, inside a read section of the notifier domain, which a grace period of that (process-wide)
    /// domain would wait for. Interval handlers run outside it.
    @inlinable @inline(__always)
    static func notInNotifierReadSection(_ what: @autoclosure () -> String) {
        #if SHOOTDOWN_INTERNAL_CHECKS
        if cinterop_callback_depth_get() >> 16 != 0 { calledFromCallback(what()) }
        #endif
    }

    @usableFromInline @inline(never)
    static func calledFromCallback(_ what: String) -> Never {
        preconditionFailure("Shootdown: \(what) called from inside a notifier callback: it would wait for that callback to return (a deadlock). Hand it to another thread, or do it after the callback")
    }

    // MARK: Mmap-lock owners

    /// About to take the mmap lock at `lock` (debug builds): traps if this thread holds it already.
    @inlinable @inline(__always)
    static func mmapLockAcquiring(_ lock: UnsafeRawPointer, write: Bool) {
        #if SHOOTDOWN_INTERNAL_CHECKS
        let held = cinterop_mmap_lock_held(lock)
        if held != 0 { reenteredMmapLock(heldForWriting: held & 1 != 0, wantsWrite: write) }
        #endif
    }

    /// The mmap lock at `lock` was taken (debug builds record it for the calling thread).
    @inlinable @inline(__always)
    static func mmapLockAcquired(_ lock: UnsafeRawPointer, write: Bool) {
        #if SHOOTDOWN_INTERNAL_CHECKS
        cinterop_mmap_lock_push(lock, write)
        #endif
    }

    /// The mmap lock at `lock` is being released by the calling thread.
    @inlinable @inline(__always)
    static func mmapLockReleased(_ lock: UnsafeRawPointer) {
        #if SHOOTDOWN_INTERNAL_CHECKS
        cinterop_mmap_lock_pop(lock)
        #endif
    }

    /// Whether the calling thread holds the mmap lock at `lock` (debug builds; `false` in release).
    static func holdsMmapLock(_ lock: UnsafeRawPointer) -> Bool {
        #if SHOOTDOWN_INTERNAL_CHECKS
        cinterop_mmap_lock_held(lock) != 0
        #else
        false
        #endif
    }

    /// Runs `body` as if on another thread as far as mmap-lock ownership goes: the locks this thread
    /// holds are hidden from the re-entry check meanwhile (test interleaving hooks, which run "the
    /// other thread's" steps in a race window).
    static func withMmapLocksHidden<R>(_ body: () -> R) -> R {
        #if SHOOTDOWN_INTERNAL_CHECKS
        let floor = cinterop_mmap_lock_floor_get()
        cinterop_mmap_lock_floor_set(min(cinterop_mmap_lock_count_get(), CINTEROP_HELD_MMAP_LOCKS))
        defer { cinterop_mmap_lock_floor_set(floor) }
        #endif
        return body()
    }

    @usableFromInline @inline(never)
    static func reenteredMmapLock(heldForWriting: Bool, wantsWrite: Bool) -> Never {
        let held = heldForWriting ? "for writing" : "for reading"
        let wanted = wantsWrite ? "for writing" : "for reading"
        preconditionFailure("Shootdown: taking an address space's mmap lock \(wanted) on a thread that already holds it \(held): this deadlocks. Notifier callbacks run with their space's mmap lock held (see MMUNotifier and IntervalNotifierHandler): from a callback, do not call operations of the same space that take it (faults, read/write, map/unmap/protect/advise, mapping(containing:), mappings(), faultRange/mirror, registerNotifier, teardown); use the InvalidationRange's vma snapshot instead of mapping(containing:)")
    }
}
