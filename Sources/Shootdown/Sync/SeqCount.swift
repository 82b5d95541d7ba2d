import Synchronization

/// A sequence count (the kernel's `seqcount_t`, used as the VMA sequence count of speculative faults).
///
/// Writers must be serialised by the caller (the mmap write lock, or a VMA's writer lock); they
/// make the count odd for the duration of a change. Readers never block: they take a snapshot
/// with ``readBegin()``, treat an odd snapshot as "a writer is active", read the protected fields
/// (which are themselves atomics read with relaxed ordering) and validate with
/// ``hasChanged(since:)``.
///
/// Ordering: ``writeBegin()`` increments, then issues a releasing fence (the kernel's `smp_wmb`
/// after the increment): a reader that observes any later store of the writer (a changed field, a
/// cleared page-table entry) and then passes an acquiring fence sees the odd count. ``writeEnd()``
/// is a releasing store, so a reader that sees the even value sees every change of the section.
/// Page-table entries a speculative fault installs are ordered against zaps by the split lock, not
/// by this count: the fault re-checks the count under the lock, and a zap holds the count odd while
/// it takes that lock.
@usableFromInline
struct SeqCount: ~Copyable, @unchecked Sendable {
    @usableFromInline let value: Atomic<UInt32>

    @inlinable init() { value = Atomic(0) }

    // MARK: Readers

    /// Takes a snapshot. An odd result means a writer is active.
    @inlinable @inline(__always)
    func readBegin() -> UInt32 {
        // Acquiring: fields read after this are at least as new as the snapshot.
        value.load(ordering: .acquiring)
    }

    /// Whether a writer ran (or is running) since `snapshot` was taken.
    @inlinable @inline(__always)
    func hasChanged(since snapshot: UInt32) -> Bool {
        // The acquiring fence keeps the protected (relaxed) reads before the re-read of the count
        // (the kernel's `smp_rmb` in `read_seqcount_retry`); a load alone, even sequentially
        // consistent, would not order earlier loads. No instruction on x86.
        atomicMemoryFence(ordering: .acquiring)
        // Relaxed: the fence above orders it after the protected reads.
        return value.load(ordering: .relaxed) != snapshot
    }

    // MARK: Writers (externally serialised)

    /// Makes the count odd. Pair with ``writeEnd()``.
    @inlinable
    func writeBegin() {
        let old = value.wrappingAdd(1, ordering: .relaxed).oldValue
        checkInvariant(old & 1 == 0, "nested or concurrent seqcount writer")
        // Releasing fence: the odd value is ordered before every later store of the section.
        atomicMemoryFence(ordering: .releasing)
    }

    /// Makes the count even again, publishing the change.
    @inlinable
    func writeEnd() {
        let old = value.load(ordering: .relaxed)
        checkInvariant(old & 1 == 1, "seqcount writeEnd without writeBegin")
        // Releasing: every write of the section is visible to a reader that sees the new value.
        value.store(old &+ 1, ordering: .releasing)
    }

    /// ``writeBegin()`` without the parity check, for a writer that deliberately leaves the count
    /// odd for good (a VMA that was removed) or re-enters a section it already holds.
    @inlinable
    func rawWriteBegin() {
        _ = value.wrappingAdd(1, ordering: .relaxed)
        atomicMemoryFence(ordering: .releasing)  // as in writeBegin()
    }

    /// The current value, for invariant checks and tests.
    @inlinable
    var current: UInt32 { value.load(ordering: .relaxed) }
}
