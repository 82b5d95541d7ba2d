import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// The per-VMA lock protocol step by step, on one thread: the bulk unlock at mmap write unlock,
/// detached VMAs sending readers back to the index, the abort cases of `lock_vma_under_rcu`, and
/// which faults complete under the VMA lock. (Threads against each other: `ConcurrentVMALocks`.)
@Suite("VMALocks")
struct VMALockTests {
    static let page = AddressSpace.pageSize
    static let base: UInt64 = 0x50_0000_0000

    /// A per-VMA-lock space with three separate 16-page VMAs at `base`, `base + 1 GiB`, `base + 2 GiB`.
    static func makeSpace(memory: PhysicalMemory = PhysicalMemory(capacity: 1 << 12)) throws -> (AddressSpace, [UInt64]) {
        let space = try AddressSpace(configuration: .init(faultPath: .perVMALock), memory: memory)
        let starts = (0..<3).map { base + UInt64($0) << 30 }
        for start in starts { try space.map(length: 16 * page, placement: .fixed(start)) }
        return (space, starts)
    }

    /// `startRead` (or only its part after the pre-check), dropping a lock it did take, so a
    /// broken protocol fails the expectation instead of leaking a reader a later writer waits for.
    static func tryRead(_ vma: VMA, _ lock: MmapLock, afterPreCheck: Bool = false) -> VMAReadLock {
        let result = afterPreCheck ? vma.startReadAfterPreCheck(lock) : vma.startRead(lock)
        if result == .locked { vma.endRead(lock) }
        return result
    }

    /// The VMA containing `address` (writer view; the test is the only thread).
    static func vma(_ space: AddressSpace, _ address: UInt64) -> VMA {
        space.mmapLock.withReadLock { space.index.find(containing: address)! }
    }

    @Test func writeUnlockReleasesEveryVMAWriteLockedDuringTheHold() throws {
        let (space, starts) = try Self.makeSpace()
        let vmas = starts.map { Self.vma(space, $0) }
        let lock = space.mmapLock
        let before = lock.sequence
        #expect(before & 1 == 0)

        lock.writeLock()
        #expect(lock.sequence == before + 1)
        space.writeLockVMA(vmas[0])
        space.writeLockVMA(vmas[1])
        space.writeLockVMA(vmas[1])  // already locked in this hold: nothing to do
        #expect(vmas[0].isWriteLocked(lock) && vmas[1].isWriteLocked(lock) && !vmas[2].isWriteLocked(lock))
        #expect(Self.tryRead(vmas[0], lock) == .writeLocked)
        #expect(Self.tryRead(vmas[1], lock) == .writeLocked)
        #expect(Self.tryRead(vmas[2], lock) == .locked)  // not write-locked: readers proceed during the hold
        // Failed attempts leave the count as they found it: attached, no reader, no writer.
        #expect(vmas.map(\.referenceCount) == [1, 1, 1])
        let aborts = space.statistics[.vmaLockAbort]
        let unexpected = space.lockVMAUnderRCU(starts[0])
        #expect(unexpected == nil)
        unexpected?._withUnsafeGuaranteedRef { $0.endRead(lock) }
        #expect(space.statistics[.vmaLockAbort] == aborts + 1)
        lock.writeUnlock()

        // One store to `mm_lock_seq`, no store to any VMA: both are readable again.
        #expect(lock.sequence == before + 2)
        #expect(vmas[0].vmLockSequence.load(ordering: .relaxed) == before + 1)
        #expect(vmas[1].vmLockSequence.load(ordering: .relaxed) == before + 1)
        for vma in vmas { #expect(Self.tryRead(vma, lock) == .locked) }

        // The same through the API: after mprotect returns, faults in the changed VMA take its lock.
        try space.protect(address: starts[1], length: 16 * Self.page, protection: .read)
        let statistics = space.statistics
        try space.fault(at: starts[1], access: .read)
        let delta = space.statistics.since(statistics)
        #expect(delta[.vmaLockSuccess] == 1)
        #expect(delta[.vmaLockAbort] == 0 && delta[.classicFaults] == 0)
        space.teardown()
    }

    /// The race the re-check closes: a reader passes the lock-free pre-check, then a writer
    /// write-locks the VMA (and has removed its offset again), then the reader's increment
    /// succeeds. Only the re-check against `mm_lock_seq` turns it away.
    @Test func aReaderThatPassedThePreCheckBacksOffAfterAWriterLockedTheVMA() throws {
        let (space, starts) = try Self.makeSpace()
        let vma = Self.vma(space, starts[0])
        let lock = space.mmapLock
        #expect(vma.vmLockSequence.load(ordering: .relaxed) != lock.sequence)  // the pre-check passes
        lock.writeLock()
        space.writeLockVMA(vma)
        #expect(vma.referenceCount == 1)  // the writer's offset is gone again: the increment succeeds
        #expect(vma.startReadAfterPreCheck(lock) == .writeLocked)
        #expect(vma.referenceCount == 1)  // and the reader dropped it
        if vma.referenceCount == 2 { vma.endRead(lock) }
        lock.writeUnlock()
        #expect(Self.tryRead(vma, lock, afterPreCheck: true) == .locked)
        space.teardown()
    }

    @Test func readersOfADetachedVMARetryTheLookup() throws {
        let (space, starts) = try Self.makeSpace()
        let address = starts[0] + 3 * Self.page
        // A strong reference keeps the stale VMA's memory alive across its removal (an unmap may
        // not run inside an RCU read section); the read section below covers the retried lookup.
        let staleVMA = space.index.lookup(address)!.takeUnretainedValue()
        defer { withExtendedLifetime(staleVMA) {} }
        let stale = Unmanaged.passUnretained(staleVMA)
        try space.unmap(address: starts[0], length: 16 * Self.page)
        stale._withUnsafeGuaranteedRef { vma in
            #expect(vma.referenceCount == 0)
            #expect(Self.tryRead(vma, space.mmapLock) == .detached)
        }
        // Something else is mapped there now: a reader that found the stale VMA retries and locks it.
        try space.map(length: 16 * Self.page, placement: .fixed(starts[0]))
        let before = space.statistics
        RCU.readLock()
        let locked = space.lockVMA(containing: address, found: stale)
        let delta = space.statistics.since(before)
        RCU.readUnlock()
        #expect(delta[.vmaLockMiss] == 1)
        #expect(delta[.vmaLockAbort] == 0)
        guard let locked else {
            Issue.record("no VMA locked after the retry")
            return
        }
        #expect(locked.toOpaque() != stale.toOpaque())
        locked._withUnsafeGuaranteedRef { vma in
            #expect(vma.start == starts[0])
            #expect(vma.referenceCount == 2)  // attached + this reader
            vma.endRead(space.mmapLock)
        }

        // Nothing mapped any more: the retry finds no VMA, which is an abort.
        let stale2VMA = space.index.lookup(address)!.takeUnretainedValue()
        defer { withExtendedLifetime(stale2VMA) {} }
        try space.unmap(address: starts[0], length: 16 * Self.page)
        let before2 = space.statistics
        RCU.readLock()
        #expect(space.lockVMA(containing: address, found: Unmanaged.passUnretained(stale2VMA)) == nil)
        RCU.readUnlock()
        let delta2 = space.statistics.since(before2)
        #expect(delta2[.vmaLockMiss] == 1 && delta2[.vmaLockAbort] == 1)
        space.teardown()
    }

    @Test func anAddressOutsideTheLockedVMAIsAnAbort() throws {
        let (space, starts) = try Self.makeSpace()
        RCU.readLock()
        let other = space.index.lookup(starts[1])!
        let before = space.statistics
        #expect(space.lockVMA(containing: starts[0], found: other) == nil)
        RCU.readUnlock()
        #expect(space.statistics.since(before)[.vmaLockAbort] == 1)
        #expect(other._withUnsafeGuaranteedRef { $0.referenceCount } == 1)  // the reference was dropped
        space.teardown()
    }

    @Test func everyFaultKindCompletesUnderTheVMALock() throws {
        let memory = PhysicalMemory(capacity: 1 << 13, swapSlots: 64)
        let space = try AddressSpace(configuration: .init(faultPath: .perVMALock), memory: memory)
        let page = Self.page
        let huge = AddressSpace.hugePageSize
        let anonymous = try space.map(length: 16 * page, placement: .fixed(Self.base))
        let shared = try space.map(length: 16 * page, placement: .fixed(Self.base + (1 << 30)), options: [.shared])
        let hugeBase = try space.map(length: huge, placement: .fixed(Self.base + (2 << 30)), options: [.hugePage])

        try space.fault(at: anonymous, access: .read)  // zero page
        try space.write(1, at: anonymous + page)  // fresh frame
        try space.write(2, at: shared)  // shared memory
        try space.write(3, at: hugeBase)  // huge page
        try space.advise(address: anonymous + page, length: page, advice: .pageOut)
        #expect(try space.read(at: anonymous + page) == 1)  // swap-in
        try space.write(4, at: anonymous + 2 * page)
        let child = try space.fork()
        try space.write(5, at: anonymous + 2 * page)  // copy-on-write
        try space.protect(address: anonymous + 3 * page, length: page, protection: .read)
        #expect(throws: MemoryError.segmentationFault) { try space.write(6, at: anonymous + 3 * page) }

        let statistics = space.statistics
        #expect(statistics[.zeroPageFaults] >= 1)
        #expect(statistics[.hugeFaults] == 1)
        #expect(statistics[.copyOnWriteFaults] == 1)
        #expect(statistics[.swapInFaults] == 1)
        #expect(statistics[.segmentationFaults] == 1)
        // Everything under the VMA lock, the violation included: no fallback, no mmap-lock fault.
        #expect(statistics[.classicFaults] == 0)
        #expect(statistics.vmaLockFallbacks == 0)
        #expect(statistics[.vmaLockSuccess] == statistics.faults)
        #expect(try child.read(at: anonymous + 2 * page) == 4)
        child.teardown()
        space.teardown()
        RCU.barrier()
        #expect(memory.framesInUse == 0)
    }

    /// Every writer changes page-table entries of a VMA only once it has write-locked the VMA:
    /// checked by a subscriber at the start of every invalidation a writer sends (while
    /// `mm_lock_seq` is odd; the test is the only thread, so no fault sends one meanwhile): each VMA
    /// of the index overlapping the range must be write-locked. (Split huge mappings before the VMA
    /// was locked would let a fault under the VMA lock install a huge mapping across the boundary.)
    @Test(arguments: ConcurrentVMALockTests.Writer.allCases)
    func writersInvalidateOnlyWriteLockedVMAs(writer: ConcurrentVMALockTests.Writer) throws {
        let memory = PhysicalMemory(capacity: 1 << 13)
        let space = try AddressSpace(configuration: .init(faultPath: .perVMALock), memory: memory)
        let base: UInt64 = 0xA0_0000_0000
        try space.map(length: AddressSpace.hugePageSize, placement: .fixed(base), options: [.hugePage])
        try space.map(length: AddressSpace.hugePageSize, placement: .fixed(base - AddressSpace.hugePageSize))
        for page in eachPage(base, base + 4 * Self.page) { try space.write(1, at: page) }
        #expect(space.statistics[.hugeFaults] == 1)
        let checker = WriterLockChecker(space: space)
        try space.registerNotifier(checker)
        try writer.run(space, base)
        #expect((checker.checked > 0) == writer.invalidates)
        #expect(checker.violations == [])
        space.unregisterNotifier(checker)
        space.teardown()
        RCU.barrier()
        #expect(memory.framesInUse == 0)
    }

    /// Zaps under the mmap read lock (madvise, reclaim, migration) change entries, not VMAs: they
    /// take no VMA write lock, so they complete while a fault holds the VMA's read lock.
    @Test func readLockEditsDoNotWaitForVMAReaders() throws {
        let memory = PhysicalMemory(capacity: 1 << 12, swapSlots: 64)
        let (space, starts) = try Self.makeSpace(memory: memory)
        for page in eachPage(starts[0], starts[0] + 16 * Self.page) { try space.write(9, at: page) }
        let errors = ConcurrentLocked<[String]>([])
        let thread = TestThread("read-lock-edits") {
            guard let locked = space.lockVMAUnderRCU(starts[0]) else {
                errors.withLock { $0.append("could not lock the VMA") }
                return
            }
            do {
                try space.advise(address: starts[0], length: 4 * Self.page, advice: .dontNeed)
                try space.advise(address: starts[0] + 4 * Self.page, length: 4 * Self.page, advice: .pageOut)
                _ = try space.migrate(address: starts[0] + 8 * Self.page, length: 4 * Self.page)
                _ = try space.reclaim(pages: 4)
            } catch {
                errors.withLock { $0.append("\(error)") }
            }
            locked._withUnsafeGuaranteedRef { $0.endRead(space.mmapLock) }
        }
        #expect(thread.join(within: 60), "a read-lock edit waited for a VMA reader")
        #expect(errors.withLock { $0 } == [])
        space.teardown()
    }
}

/// For ``VMALockTests/writersInvalidateOnlyWriteLockedVMAs(writer:)``: at each invalidation start
/// made under the mmap write lock, every indexed VMA overlapping the range must be write-locked.
/// Single-threaded use only (it reads the writer's view of the index from inside the writer).
final class WriterLockChecker: MMUNotifier, @unchecked Sendable {
    unowned let space: AddressSpace
    var checked = 0
    var violations: [String] = []

    init(space: AddressSpace) { self.space = space }

    var callbacks: NotifierCallbacks { [.invalidateRangeStart] }

    func invalidateRangeStart(_ range: InvalidationRange) -> Bool {
        guard space.mmapLock.sequence & 1 == 1, range.event != .release else { return true }
        checked += 1
        for vma in space.index.intersecting(range.start, range.end) where !vma.isWriteLocked(space.mmapLock) {
            violations.append("\(range): VMA [\(vma.start.hex), \(vma.end.hex)) not write-locked")
        }
        return true
    }
}
