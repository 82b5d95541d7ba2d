import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// Outside review of the per-VMA lock protocol (VMA+Lock.swift, the per-VMA-lock fault path,
/// VMAEdit's write-locking and detaching). These tests pin properties the review checked and
/// found correct; each drives the protocol into the corner it names, so a regression there fails.
/// (The review found no per-VMA-lock bug.)
@Suite
struct VMALockCornerTests {
    static let page = AddressSpace.pageSize
    static let base: UInt64 = 0x60_0000_0000

    static func makeSpace(_ memory: PhysicalMemory) throws -> (AddressSpace, VMA) {
        let space = try AddressSpace(configuration: .init(faultPath: .perVMALock), memory: memory)
        try space.map(length: 16 * page, placement: .fixed(base))
        let vma = space.mmapLock.withReadLock { space.index.find(containing: base)! }
        return (space, vma)
    }

    /// Refcount overflow: with as many readers as the count allows (`VMA_REF_LIMIT`), a further
    /// reader is refused as if write-locked (it falls back to the mmap lock) and the count does
    /// not move; one below the limit a reader still gets in. A reader that incremented past the
    /// limit would carry the count into the writer's offset bit and make a writer wait forever
    /// (or take the VMA for write-locked while readers are inside).
    @Test func readersAtTheReferenceLimitAreRefusedWithoutOverflow() throws {
        let memory = PhysicalMemory(capacity: 1 << 10)
        let (space, vma) = try Self.makeSpace(memory)
        let lock = space.mmapLock
        // Simulate 2^30 - 2 readers inside (attached + readers == the limit).
        vma.vmRefcount.store(VMA.referenceLimit, ordering: .relaxed)
        #expect(vma.startRead(lock) == .writeLocked)
        #expect(vma.referenceCount == VMA.referenceLimit)
        #expect(vma.referenceCount & VMA.lockOffset == 0)
        // The whole fault path falls back (VMA_LOCK_ABORT) instead of overflowing.
        #expect(space.lockVMAUnderRCU(Self.base) == nil)
        #expect(vma.referenceCount == VMA.referenceLimit)
        // One reader fewer: the next reader gets in, and reaches exactly the limit.
        vma.vmRefcount.store(VMA.referenceLimit - 1, ordering: .relaxed)
        #expect(vma.startRead(lock) == .locked)
        #expect(vma.referenceCount == VMA.referenceLimit)
        vma.endRead(lock)
        vma.vmRefcount.store(1, ordering: .relaxed)  // back to attached, no reader
        try space.write(1, at: Self.base)
        #expect(space.statistics[.vmaLockSuccess] >= 1)
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    /// Lost wake-up in the detach wait: a reader that found the VMA just before it was
    /// write-locked holds a transient reference when the writer detaches it (`vma_mark_detached`
    /// waits for it with target `VMA_LOCK_OFFSET`, not `VMA_LOCK_OFFSET + 1`). The detaching writer
    /// is made to wait first (the test sees its offset in the count), then the reader drops its
    /// reference: `endRead` must wake it for the detaching target too, and the count must end at 0
    /// so later readers retry the lookup. A missed wake-up hangs the detach (the watchdog reports
    /// it).
    @Test func detachWaitsForATransientReaderAndIsWoken() throws {
        let memory = PhysicalMemory(capacity: 1 << 10)
        let (space, vma) = try Self.makeSpace(memory)
        let lock = space.mmapLock
        let unretained = Unmanaged.passUnretained(vma)
        // The reader: its increment succeeded before the writer locked the VMA (white-box: the
        // increment of `startReadAfterPreCheck`, without its re-check).
        vma.vmRefcount.wrappingAdd(1, ordering: .acquiring)
        lock.writeLock()
        // startWrite would wait for this reader; lock the VMA the way a writer that came first
        // would have: drop the reader, lock, take the reader's reference back (a reader that
        // incremented after the writer's unlock-of-offset, about to fail its re-check).
        vma.vmRefcount.wrappingSubtract(1, ordering: .releasing)
        vma.startWrite(lock)
        #expect(vma.isWriteLocked(lock))
        vma.vmRefcount.wrappingAdd(1, ordering: .acquiring)
        #expect(vma.referenceCount == 2)
        let detached = Flag()
        let writer = TestThread("detach") {
            unretained._withUnsafeGuaranteedRef { $0.markDetached(lock) }
            detached.set()
        }
        // Wait (by observation, not by time) until the writer has dropped the index reference
        // and added its offset: it is now spinning or asleep waiting for the reader.
        while vma.referenceCount != VMA.lockOffset &+ 1 { cinterop_cpu_relax_for_tests() }
        #expect(!detached.isSet)
        // The transient reader fails its re-check and drops its reference.
        #expect(vma.startReadAfterPreCheck(lock) == .writeLocked)  // a second reader backs off too
        vma.endRead(lock)
        #expect(writer.join("markDetached waiting for the last transient reader"))
        #expect(detached.isSet)
        #expect(vma.referenceCount == 0)
        lock.writeUnlock()
        // Detached: every later reader retries the lookup instead of locking a removed VMA.
        #expect(vma.startRead(lock) == .detached)
        #expect(vma.referenceCount == 0)
        // (The VMA is still in the index: put it back to "attached" so teardown can remove it.)
        vma.vmRefcount.store(1, ordering: .relaxed)
        space.teardown()
        #expect(memory.framesInUse == 0)
    }
}

/// `cpu_relax` for test polling loops (the engine's CInterop wrapper is not imported here).
@inline(__always)
private func cinterop_cpu_relax_for_tests() { sched_yield() }

/// A one-way flag another thread sets.
private final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
}
