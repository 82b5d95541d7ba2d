import Testing

@testable import Shootdown

private let p = NotifierTestConstants.page
private let huge = NotifierTestConstants.huge
private let base = NotifierTestConstants.base

/// Regression tests for findings of an outside review that need no concurrency to show (the
/// concurrent ones live in the `Concurrent*` suites). Each test is named after its bug and failed on
/// the code before the fix.
@Suite struct ReviewFindingsTests {
    /// Whether `log` holds a secondary-TLB flush of `tlb` covering every page of `[start, end)`
    /// before the end of the `unmap` invalidation whose range contains `start` (the flush must
    /// happen while the entries change, inside the invalidation that removes them).
    private func flushedBeforeUnmapEnd(_ log: [NotifierCall], _ start: UInt64, _ end: UInt64) -> Bool {
        var covered: [ClosedRange<UInt64>] = []
        for call in log {
            switch call {
            case .secondaryTLB("tlb", let flushStart, let flushEnd) where flushEnd > flushStart:
                covered.append(flushStart...(flushEnd - 1))
            case .end("rec", let range) where range.event == .unmap && range.start <= start && start < range.end:
                return eachPage(start, end).allSatisfy { page in covered.contains { $0.contains(page) } }
            default:
                continue
            }
        }
        return false
    }

    /// Review finding 1: mremap moving a whole 2 MiB mapping cleared the source PMD entry without
    /// calling the secondary-TLB hook, and the follow-up zap found the slot empty: a TLB sharing the
    /// CPU page table kept the old address's translation for good.
    @Test func mremapOfAWholeHugeMappingNeverFlushedSecondaryTLBs() throws {
        let memory = PhysicalMemory(capacity: 4096, swapSlots: 0)
        let space = try AddressSpace(memory: memory)
        let log = NotifierCallLog()
        try space.registerNotifier(RecordingNotifier("tlb", callbacks: [.invalidateSecondaryTLBs], log: log))
        try space.registerNotifier(RecordingNotifier("rec", callbacks: [.invalidateRangeStart, .invalidateRangeEnd], log: log))
        try space.map(length: huge, placement: .fixed(base), options: .hugePage)
        try space.write(7, at: base)
        #expect(space.statistics[.hugeFaults] == 1)
        log.drain()

        let target = base + 64 * huge
        #expect(try space.remap(address: base, oldLength: huge, newLength: huge, move: .fixed(target)) == target)
        #expect(space.statistics[.hugeFaults] == 1 && space.translate(target)?.isHuge == true)
        #expect(flushedBeforeUnmapEnd(log.all, base, base + huge), "no secondary-TLB flush of \(base.hex): \(log.all)")
        #expect(try space.read(at: target) == 7)
    }

    /// Review finding 1, 4 KiB sibling: the moved entries' old addresses were flushed only by the
    /// follow-up zap, after the move's `unmap` invalidation had ended.
    @Test func mremapOfSmallPagesFlushedSecondaryTLBsOnlyAfterTheInvalidationEnded() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 0)
        let space = try AddressSpace(memory: memory)
        let log = NotifierCallLog()
        try space.registerNotifier(RecordingNotifier("tlb", callbacks: [.invalidateSecondaryTLBs], log: log))
        try space.registerNotifier(RecordingNotifier("rec", callbacks: [.invalidateRangeStart, .invalidateRangeEnd], log: log))
        try space.map(length: 4 * p, placement: .fixed(base))
        for index in 0..<4 { try space.write(UInt64(index) + 1, at: base + UInt64(index) * p) }
        log.drain()

        let target = base + 1024 * p
        #expect(try space.remap(address: base, oldLength: 4 * p, newLength: 4 * p, move: .fixed(target)) == target)
        #expect(flushedBeforeUnmapEnd(log.all, base, base + 4 * p), "flush of the old pages came late: \(log.all)")
        for index in 0..<4 { #expect(try space.read(at: target + UInt64(index) * p) == UInt64(index) + 1) }
    }

    /// Review finding 7: collapse built its writable huge entry with only the OR of the old
    /// soft-dirty bits, so after `clearSoftDirty` a write to the collapsed block did not fault and
    /// was never reported. A huge entry made dirty is soft-dirty (as x86's `pmd_mkdirty` makes it).
    @Test func collapseDroppedSoftDirty() throws {
        let memory = PhysicalMemory(capacity: 4096, swapSlots: 0)
        let space = try AddressSpace(memory: memory)
        try space.map(length: huge, placement: .fixed(base))
        for index in 0..<512 { try space.write(UInt64(index), at: base + UInt64(index) * p) }
        try space.clearSoftDirty()
        try space.advise(address: base, length: huge, advice: .hugePage)
        #expect(try space.collapse(address: base, length: huge) == 1)
        try space.write(99, at: base + 5 * p)
        #expect(try space.softDirtyPages(address: base, length: huge).contains(base + 5 * p))
        #expect(try space.read(at: base + 5 * p) == 99 && space.read(at: base + 6 * p) == 6)
    }

    /// Review finding 2: swap-in read the slot's token before taking the PTE lock. Swap slots are
    /// reused last-in-first-out, so another thread could swap the page in, write it, and page it
    /// out again into the same slot: the swap entry was bit-identical, the recheck under the lock
    /// passed, and the stale token was installed (a lost write). The other thread's steps run here
    /// at the interleaving point between the entry read and the lock.
    @Test func swapInLostWritesThroughSwapSlotReuse() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 8)
        let space = try AddressSpace(memory: memory)
        try space.map(length: p, placement: .fixed(base))
        try space.write(1, at: base)
        try space.advise(address: base, length: p, advice: .pageOut)
        let firstSlot = try #require(space.translate(base)?.swapSlot)

        let ran = SharedFlag()
        TestHooks.arm(.swapInBeforeLock) {
            // "Thread B": swap in, write 2, page out again: the slot comes back.
            try? space.write(2, at: base)
            try? space.advise(address: base, length: p, advice: .pageOut)
            ran.set()
        }
        defer { TestHooks.disarm(.swapInBeforeLock) }
        let value = try space.read(at: base)
        #expect(ran.isSet)
        #expect(space.translate(base)?.swapSlot == nil)
        #expect(value == 2, "swap-in installed the token of slot \(firstSlot) as it was before the page was rewritten")
        space.teardown()
        #expect(memory.framesInUse == 0 && memory.swap.slotsInUse == 0)
    }

    /// Review (this round): a classic fault that mapped a page of a guard installation's range
    /// between its zap and its markers left that page mapped, no guard, and the call succeeded;
    /// Linux zaps again and retries the markers until none is skipped. The fault runs here at the
    /// interleaving point, on the installing thread (the mmap read lock is shared).
    @Test func guardInstallLeftAPageAFaultMappedAfterItsZap() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 0)
        let space = try AddressSpace(memory: memory)
        try space.map(length: 4 * p, placement: .fixed(base))
        for index in 0..<4 as Range<UInt64> { try space.write(index + 1, at: base + index * p) }
        let ran = SharedFlag()
        TestHooks.arm(.guardInstallAfterZap) {
            try? space.write(9, at: base + p)  // "thread B" faults a page of the range back in
            ran.set()
        }
        defer { TestHooks.disarm(.guardInstallAfterZap) }
        try space.advise(address: base, length: 2 * p, advice: .guardInstall)
        #expect(ran.isSet)
        #expect(space.translate(base)?.isGuard == true)
        #expect(space.translate(base + p)?.isGuard == true, "the page faulted in after the zap stayed mapped")
        #expect(throws: MemoryError.segmentationFault) { try space.write(1, at: base + p) }
        #expect(try space.read(at: base + 2 * p) == 3)
        let audit = space.audit()
        #expect(audit.entriesOutsideVMAs == 0, "\(audit)")
        space.teardown()
        RCU.barrier()
        #expect(memory.framesInUse == 0)
    }

    /// Review finding 6: a speculative fault that found its VMA just before munmap published the
    /// removal walked the range after `freeTables` and installed fresh upper and PTE tables by CAS
    /// into the hole; validation then aborted, but the tables stayed (blocking huge mappings there,
    /// and a whole-2 MiB mremap into the slot would overwrite and leak the table). The munmap runs
    /// here between the speculative lookup and the walk.
    @Test func speculativeFaultsLeakedPageTablesIntoHoles() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 0)
        let space = try AddressSpace(memory: memory)
        let address = base + 7 * huge  // alone in its 1 GiB: unmapping frees every table down to it
        try space.map(length: p, placement: .fixed(address))
        let unmapped = SharedFlag()
        TestHooks.arm(.speculativeAfterLookup) {
            // On another thread, as it would race: this one is inside the fault's RCU read section
            // (the munmap does not wait for a grace period, so waiting for it here is fine).
            let munmap = TestThread("munmap") { if (try? space.unmap(address: address, length: p)) != nil { unmapped.set() } }
            munmap.join("munmap")
        }
        defer { TestHooks.disarm(.speculativeAfterLookup) }
        #expect(throws: MemoryError.segmentationFault) { try space.write(1, at: address) }
        #expect(unmapped.isSet)
        let audit = space.audit()
        #expect(audit.tablesInHoles == 0, "tables left in the hole: \(audit)")
        #expect(audit.tables == 1, "only the root should remain: \(audit)")
        // A huge mapping can go there again.
        try space.map(length: huge, placement: .fixed(address), options: .hugePage)
        try space.write(2, at: address)
        #expect(space.translate(address)?.isHuge == true)
    }

    // Review finding 4, siblings: callbacks and engine code that run under a split lock reached
    // sleeping locks. Debug builds now trap when anything may sleep while a spin lock is held (the
    // kernel's might_sleep check), so each scenario runs in a child process that must exit cleanly.

    /// Copy-on-write evaluated the secondary-TLB hook under the split lock; with the reader-writer
    /// notifier list that took a sleeping lock there.
    @Test func copyOnWriteTookASleepingLockUnderTheSplitLock() async {
        await #expect(processExitsWith: .success) {
            let memory = PhysicalMemory(capacity: 1024, swapSlots: 0)
            let space = try! AddressSpace(configuration: .init(notifierList: .rwlock), memory: memory)
            try! space.registerNotifier(RecordingNotifier("tlb", callbacks: [.invalidateSecondaryTLBs], log: NotifierCallLog()))
            try! space.map(length: p, placement: .fixed(base))
            try! space.write(1, at: base)
            let child = try! space.fork()
            try! space.write(2, at: base)  // copy-on-write in the parent
            #expect(try! child.read(at: base) == 1 && space.read(at: base) == 2)
            child.teardown()
            space.teardown()
        }
    }

    /// `SoftwareMirror`'s young callbacks, which run under the split lock, took the mirror's
    /// sleeping lock.
    @Test func softwareMirrorYoungCallbacksTookASleepingLockUnderTheSplitLock() async {
        await #expect(processExitsWith: .success) {
            let memory = PhysicalMemory(capacity: 1024, swapSlots: 64)
            let space = try! AddressSpace(memory: memory)
            try! space.map(length: 8 * p, placement: .fixed(base))
            let mirror = try! SoftwareMirror(space: space, start: base, length: 8 * p)
            for index in 0..<8 { try! space.write(UInt64(index), at: base + UInt64(index) * p) }
            _ = try! mirror.read(at: base)
            #expect(try! space.age(address: base, length: 8 * p) > 0)
            _ = try! space.reclaim(pages: 8)
            mirror.detach()
            space.teardown()
        }
    }

    /// Page-out stored into swap, and zaps released swap slots, under the split lock, through the
    /// swap space's sleeping lock.
    @Test func swapSlotsTookASleepingLockUnderTheSplitLock() async {
        await #expect(processExitsWith: .success) {
            let memory = PhysicalMemory(capacity: 1024, swapSlots: 64)
            let space = try! AddressSpace(memory: memory)
            try! space.map(length: 4 * p, placement: .fixed(base))
            for index in 0..<4 { try! space.write(UInt64(index) + 1, at: base + UInt64(index) * p) }
            try! space.advise(address: base, length: 4 * p, advice: .pageOut)
            try! space.unmap(address: base, length: 4 * p)
            #expect(memory.swap.slotsInUse == 0)
            space.teardown()
        }
    }

    /// DONTNEED (and reclaim, migration) held each VMA's writer lock, a spin lock, across the
    /// blockable invalidation whose callbacks may sleep: a mirror's handler taking its sleeping
    /// lock there stalled every other writer of the VMA on a spinning CPU.
    @Test func dontNeedHeldAVMASpinLockAcrossBlockableCallbacks() async {
        await #expect(processExitsWith: .success) {
            let memory = PhysicalMemory(capacity: 1024, swapSlots: 64)
            let space = try! AddressSpace(memory: memory)
            try! space.map(length: 8 * p, placement: .fixed(base))
            let mirror = try! SoftwareMirror(space: space, start: base, length: 8 * p)
            try! mirror.populate(address: base, length: 8 * p, write: true)
            try! space.advise(address: base, length: 8 * p, advice: .dontNeed)
            #expect(mirror.count == 0)
            _ = try! space.migrate(address: base, length: 8 * p)
            mirror.detach()
            space.teardown()
        }
    }

    /// Review finding (issue 15): `allocateHuge` reset the tokens, counts and lock marks of the
    /// 512 frames it hands out but not their dirty flags, so a compound frame reused from the free
    /// huge stack came back "dirty" where one of its frames had been dirtied before it was freed
    /// (a store through a huge entry marks the frame it hits). Not observable through an address
    /// space today (only shared-memory frames have their dirty flag read, and they never come from
    /// `allocateHuge`), but it broke the allocator's contract (a frame comes back with every
    /// per-frame flag clear), which the lock marks now share a byte with.
    @Test func hugeAllocationKeptTheDirtyFlagsOfItsFrames() {
        let memory = PhysicalMemory(capacity: 4 * 512, swapSlots: 0)
        guard let head = memory.allocateHuge() else {
            Issue.record("no huge frame")
            return
        }
        memory.markDirty(head + 7)
        memory.markLazyFree(head + 9)
        #expect(memory.isDirty(head + 7) && memory.isLazyFree(head + 9))
        memory.freeUnusedHuge(head)
        guard let again = memory.allocateHuge() else {
            Issue.record("no huge frame")
            return
        }
        #expect(again == head, "the free huge stack hands the freed block out first")
        for frame in again..<(again + 512) {
            #expect(!memory.isDirty(frame) && !memory.isLazyFree(frame), "frame \(frame) kept a dirty flag")
        }
        memory.freeUnusedHuge(again)
    }

    /// The dirty state and the still-locked mark share one byte per frame: setting either keeps
    /// the other, and allocation clears both with one store.
    @Test func dirtyStateAndLockMarkShareAByteWithoutLosingEachOther() {
        let memory = PhysicalMemory(capacity: 512, swapSlots: 0)
        guard let frame = memory.allocate() else {
            Issue.record("no frame")
            return
        }
        memory.markStillLocked(frame)
        memory.markDirty(frame)
        #expect(memory.isStillLocked(frame) && memory.isDirty(frame))
        memory.markLazyFree(frame)
        #expect(memory.isStillLocked(frame) && memory.isLazyFree(frame) && !memory.isDirty(frame))
        memory.adjustLockCount(frame, locking: true)  // count 2
        memory.adjustLockCount(frame, locking: false)  // count 1
        #expect(memory.isStillLocked(frame) && memory.isLazyFree(frame))
        memory.adjustLockCount(frame, locking: false)  // count 0: unlocked
        #expect(!memory.isStillLocked(frame) && memory.isLazyFree(frame))
        memory.markStillLocked(frame)
        memory.resetLockCount(frame)
        #expect(memory.isStillLocked(frame) && memory.isLazyFree(frame))
        memory.markDirty(frame)
        memory.freeUnused(frame)
        guard let again = memory.allocate() else {
            Issue.record("no frame")
            return
        }
        #expect(again == frame, "the shard hands the freed frame out first")
        #expect(!memory.isStillLocked(again) && !memory.isDirty(again) && !memory.isLazyFree(again))
        memory.freeUnused(again)
    }
}
