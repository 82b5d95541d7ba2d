import Synchronization

/// Places on engine paths where another thread could run between two steps, and where a race
/// window is known to matter. Debug and test builds let a regression test run code at such a point
/// (see `TestHooks`); release builds compile every ``testHook(_:)`` call away.
@usableFromInline
enum TestHookPoint: Int, CaseIterable, Sendable {
    /// The swap-in fault read the swap entry and allocated its frame, and is about to take the PTE
    /// lock (the mmap read lock held).
    case swapInBeforeLock
    /// The speculative fault looked its VMA up and took its sequence snapshot, and is about to walk
    /// the page table (inside an RCU read section: the closure must not wait for a grace period).
    case speculativeAfterLookup
    /// A software-TLB access found its entry and is about to load or store through it (inside the
    /// access: the closure must not wait for a TLB shootdown of this space to return).
    case tlbHitBeforeAccess
    /// A device access (`deviceRead`/`deviceWrite`) checked that the space is alive and is about to
    /// validate the translation under the split lock (no lock held).
    case deviceAccessAfterAliveCheck
    /// A TLB shootdown bumped the generation and is about to store its flush record (no lock of
    /// its own; the caller's split lock if it flushes under one).
    case tlbShootdownBeforeRecord
    /// A guard installation zapped its range and is about to write the markers (the mmap read
    /// lock held, the VMA held exclusively and in its write section; no split lock): a classic
    /// fault may map a page of the range here.
    case guardInstallAfterZap
    /// The classic fault's fast path (``AddressSpace/anonymousFastFault(_:write:)``) found the
    /// entry empty and allocated its frame, and is about to take the PTE lock (the mmap read lock
    /// held, no split lock).
    case classicFastFaultBeforeLock
    /// The speculative fault's first write (``AddressSpace/speculativeFirstWrite``) found the
    /// entry empty and allocated its frame, and is about to take the PTE lock (inside the RCU read
    /// section, no lock held: the closure must not wait for a grace period).
    case speculativeFirstWriteBeforeLock
}

#if SHOOTDOWN_INTERNAL_CHECKS
/// Interleaving points for deterministic regression tests of races. A test arms a point with a
/// closure; the next thread that reaches it runs the closure once (the point disarms itself first),
/// which lets a single-threaded test perform "the other thread's" operations in exactly the window
/// the race needs. The closure runs with whatever the path holds at that point (documented per
/// point); it must not need those locks for writing.
enum TestHooks {
    nonisolated(unsafe) private static var armed: [(() -> Void)?] =
        Array(repeating: nil, count: TestHookPoint.allCases.count)
    /// Number of armed points: the unarmed path is one relaxed load.
    private static let armedCount = Atomic<Int>(0)
    private static let lock = SpinLock()

    /// Runs `body` the next time any thread reaches `point`.
    static func arm(_ point: TestHookPoint, _ body: @escaping () -> Void) {
        lock.withLock {
            if armed[point.rawValue] == nil { armedCount.add(1, ordering: .relaxed) }
            armed[point.rawValue] = body
        }
    }

    /// Removes a closure that never ran.
    static func disarm(_ point: TestHookPoint) { _ = take(point) }

    /// Takes the closure armed for `point`, if any.
    static func take(_ point: TestHookPoint) -> (() -> Void)? {
        if armedCount.load(ordering: .relaxed) == 0 { return nil }
        return lock.withLock {
            let body = armed[point.rawValue]
            if body != nil { armedCount.subtract(1, ordering: .relaxed) }
            armed[point.rawValue] = nil
            return body
        }
    }
}
#endif

/// Reaches the interleaving point `point` (see `TestHooks`); a no-op in release builds.
@inlinable @inline(__always)
func testHook(_ point: TestHookPoint) {
    #if SHOOTDOWN_INTERNAL_CHECKS
    runTestHook(point)
    #endif
}

#if SHOOTDOWN_INTERNAL_CHECKS
@usableFromInline
func runTestHook(_ point: TestHookPoint) {
    // The closure plays another thread: the mmap locks this one holds are not its own.
    if let body = TestHooks.take(point) { LockContext.withMmapLocksHidden(body) }
}
#endif
