import CInterop
import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// Threads holding VMA read locks (the test takes them directly, as a fault does), published as
/// packed `[start, end)` words per holder so a writer-side check can see them: `start >> 12` in the
/// low 35 bits, the page count above; 0 when the holder holds nothing.
final class ConcurrentVMALockHolders: @unchecked Sendable {
    let count: Int
    private let slots: UnsafeMutablePointer<Atomic<UInt64>>

    init(count: Int) {
        self.count = count
        slots = .allocate(capacity: count)
        for index in 0..<count { (slots + index).initialize(to: Atomic(0)) }
    }

    deinit {
        slots.deinitialize(count: count)
        slots.deallocate()
    }

    /// Holder `index` now holds `[start, end)`. (Releasing, and cleared with release before the
    /// read lock is dropped: a writer that drained the holder's reference sees the slot cleared.)
    func hold(_ index: Int, _ start: UInt64, _ end: UInt64) {
        let pages = (end - start) >> 12
        slots[index].store(start >> 12 | pages << 35, ordering: .releasing)
    }

    func release(_ index: Int) { slots[index].store(0, ordering: .releasing) }

    /// The ranges held now.
    var held: [(start: UInt64, end: UInt64)] {
        (0..<count).compactMap { index in
            let word = slots[index].load(ordering: .acquiring)
            if word == 0 { return nil }
            let start = (word & ((1 << 35) - 1)) << 12
            return (start, start + (word >> 35) << 12)
        }
    }
}

/// Checks, inside the write sections of VMA writers (the start of the invalidation they send after
/// write-locking the VMAs they change or remove), that no holder holds a read lock on a VMA
/// overlapping the range: the writer must have waited for every reader of those VMAs.
final class ConcurrentWriterSectionAuditor: MMUNotifier, @unchecked Sendable {
    let holders: ConcurrentVMALockHolders
    let violations: ConcurrentViolations
    let checks = Atomic<Int>(0)

    init(holders: ConcurrentVMALockHolders, violations: ConcurrentViolations) {
        self.holders = holders
        self.violations = violations
    }

    var callbacks: NotifierCallbacks { [.invalidateRangeStart] }

    func invalidateRangeStart(_ range: InvalidationRange) -> Bool {
        // Events of VMA writers only (mmap write lock). `clear` also comes from faults and zaps
        // under the mmap read lock, which hold or need no VMA write lock.
        switch range.event {
        case .unmap, .protectionVMA, .protectionPage, .softDirty: break
        default: return true
        }
        checks.add(1, ordering: .relaxed)
        for held in holders.held where held.start < range.end && range.start < held.end {
            violations.record("\(range): a reader holds [\(held.start.hex), \(held.end.hex)) inside the writer's section")
        }
        return true
    }
}

/// Per-VMA locks under threads: writers wait for readers, readers never see a VMA change under
/// them, faults never install into a VMA after the writer that changed or removed it returned, and
/// faults on other VMAs never wait for a writer.
@Suite("ConcurrentVMALocks")
struct ConcurrentVMALockTests {
    static let page = AddressSpace.pageSize
    static let huge = AddressSpace.hugePageSize

    /// A writer that changes or removes the VMA at `base` (one 2 MiB huge-page VMA, first pages
    /// written: one huge mapping).
    enum Writer: String, CaseIterable, CustomTestStringConvertible {
        case unmap, unmapPart, protect, protectPart, mapFixedOver, remapGrow, remapMove, remapShrink
        case adviseNoHugePage, clearSoftDirty, collapse, fork, registerNotifier, insertIntervalNotifier, teardown
        // Writers of the syscall surface: each splits the VMA (and its huge mapping) at both ends.
        case lockPart, sealPart, adviseDontForkPart, remapDontUnmap

        var testDescription: String { rawValue }

        /// Whether it sends an invalidation under the mmap write lock that subscribers see.
        var invalidates: Bool {
            switch self {
            case .remapGrow, .adviseNoHugePage, .collapse, .registerNotifier, .insertIntervalNotifier, .teardown: false
            default: true
            }
        }

        func run(_ space: AddressSpace, _ base: UInt64) throws {
            let huge = AddressSpace.hugePageSize
            switch self {
            case .unmap: try space.unmap(address: base, length: huge)
            // Unaligned: these split the huge mapping at both ends, then the VMA.
            case .unmapPart: try space.unmap(address: base + 5 * AddressSpace.pageSize, length: huge / 4)
            case .protect: try space.protect(address: base, length: huge, protection: .read)
            case .protectPart:
                try space.protect(address: base + 5 * AddressSpace.pageSize, length: huge / 4, protection: .read)
            case .mapFixedOver: try space.map(length: 16 * AddressSpace.pageSize, placement: .fixed(base))
            case .remapGrow: try space.remap(address: base, oldLength: huge, newLength: 2 * huge)
            case .remapMove: try space.remap(address: base, oldLength: huge, newLength: huge, move: .fixed(base + 8 * huge))
            case .remapShrink: try space.remap(address: base, oldLength: huge, newLength: huge / 2)
            case .adviseNoHugePage: try space.advise(address: base, length: huge, advice: .noHugePage)
            case .clearSoftDirty: try space.clearSoftDirty(address: base, length: huge)
            case .collapse: _ = try space.collapse(address: base, length: huge)
            case .fork: try space.fork().teardown()
            case .registerNotifier: try space.registerNotifier(ConcurrentNoOpNotifier())
            case .insertIntervalNotifier:
                _ = try space.insertIntervalNotifier(start: base, length: huge, handler: ConcurrentNoOpIntervalHandler())
            case .teardown: space.teardown()
            case .lockPart: try space.lock(address: base + 5 * AddressSpace.pageSize, length: huge / 4)
            case .sealPart: try space.seal(address: base + 5 * AddressSpace.pageSize, length: huge / 4)
            case .adviseDontForkPart:
                try space.advise(address: base + 5 * AddressSpace.pageSize, length: huge / 4, advice: .dontFork)
            case .remapDontUnmap:
                try space.remap(
                    address: base, oldLength: huge, newLength: huge, flags: [.mayMove, .fixed, .dontUnmap],
                    newAddress: base + 8 * huge)
            }
        }
    }

    /// A writer never proceeds while a reader holds the VMA: the reader keeps its read lock until it
    /// sees the writer draining (the writer's offset in the count), and the writer must not return
    /// before the reader has let go.
    @Test(arguments: Writer.allCases)
    func writerWaitsForTheReader(writer: Writer) throws {
        let memory = PhysicalMemory(capacity: 1 << 12)
        let space = try AddressSpace(configuration: .init(faultPath: .perVMALock), memory: memory)
        let base: UInt64 = 0xA0_0000_0000
        try space.map(length: Self.huge, placement: .fixed(base), options: [.hugePage])
        for page in eachPage(base, base + 4 * Self.page) { try space.write(1, at: page) }
        let violations = ConcurrentViolations()
        let locked = DispatchSemaphore(value: 0)
        let readerReleased = Atomic<Bool>(false)
        let writerReturned = Atomic<Bool>(false)
        let sawWriterDraining = Atomic<Bool>(false)

        let reader: @Sendable () -> Void = {
            guard let vma = space.lockVMAUnderRCU(base) else {
                violations.record("reader: could not lock the VMA")
                locked.signal()
                return
            }
            locked.signal()
            vma._withUnsafeGuaranteedRef { vma in
                // Hold until the writer is seen draining readers (or, if it does not wait, returns).
                while vma.referenceCount & VMA.lockOffset == 0 {
                    if writerReturned.load(ordering: .acquiring) {
                        violations.record("\(writer): returned while a reader held the VMA")
                        break
                    }
                    sched_yield()
                }
                if vma.referenceCount & VMA.lockOffset != 0 { sawWriterDraining.store(true, ordering: .relaxed) }
                readerReleased.store(true, ordering: .releasing)
                vma.endRead(space.mmapLock)
            }
        }
        let writerBody: @Sendable () -> Void = {
            locked.wait()
            do {
                try writer.run(space, base)
            } catch {
                violations.record("\(writer): \(error)")
            }
            writerReturned.store(true, ordering: .releasing)
            if !readerReleased.load(ordering: .acquiring) {
                violations.record("\(writer): returned before the reader released the VMA")
            }
        }
        guard ConcurrentHarness.run("vma-writer-\(writer)", [reader, writerBody]) else { return }
        violations.expectNone("\(writer) against a VMA reader")
        let drained = sawWriterDraining.load(ordering: .relaxed)
        #expect(drained)
        space.teardown()
        RCU.barrier()
        #expect(memory.framesInUse == 0)
    }

    static let slotPages: UInt64 = 64
    static let churners = 2

    /// A random address in a random slot.
    static func randomAddress(_ random: inout SplitMix64) -> UInt64 {
        let slot = slots(random.index(below: churners))[random.index(below: 2)]
        return slot + random.below(slotPages) * page + random.below(page)
    }
    /// Two slots per churner, one straddling a 2 MiB boundary, one alone.
    static func slots(_ churner: Int) -> [UInt64] {
        let start = 0xB0_0000_0000 + UInt64(churner) << 32
        return [start + huge - 32 * page, start + 4 * huge]
    }

    /// Faulters and read-lock holders against writers that map, unmap, protect, remap, fork and
    /// clear soft-dirty bits on the same ranges. Checked:
    /// - a holder sees its VMA's bounds and attributes unchanged for as long as it holds the lock;
    /// - inside each writer section, no holder holds a VMA overlapping the writer's range;
    /// - right after an unmap (or move, or shrink) returns, no entry in the range; right after a
    ///   protection downgrade returns, no entry above it: no fault installed into a VMA after the
    ///   writer that changed or removed it returned.
    @Test func faultsAndReadersAgainstWriters() throws {
        let memory = PhysicalMemory(capacity: 1 << 15, swapSlots: 1 << 10)
        let space = try AddressSpace(configuration: .init(faultPath: .perVMALock), memory: memory)
        let page = Self.page
        let churners = Self.churners
        let faulters = 2
        let holderCount = 2
        for churner in 0..<churners {
            for slot in Self.slots(churner) { try space.map(length: Self.slotPages * page, placement: .fixed(slot)) }
        }
        let violations = ConcurrentViolations()
        let holders = ConcurrentVMALockHolders(count: holderCount)
        let auditor = ConcurrentWriterSectionAuditor(holders: holders, violations: violations)
        try space.registerNotifier(auditor)

        let workIterations = ConcurrentHarness.iterations(40_000)
        let churnIterations = ConcurrentHarness.iterations(2_000)
        let workersLeft = ConcurrentCountdown(faulters + holderCount)
        let holds = Atomic<Int>(0)
        let noVMA = Atomic<Int>(0)
        let churnOperations = Atomic<Int>(0)


        let faulter: @Sendable (Int) -> Void = { index in
            var random = SplitMix64(spreading: 0xFA_0000 &+ UInt64(index))
            defer { workersLeft.arrive() }
            for iteration in 0..<workIterations {
                let address = Self.randomAddress(&random)
                let write = random.chance(70)
                do {
                    if random.chance(20) {
                        if write {
                            try space.write(UInt64(index + 1) << 48 | UInt64(iteration), at: address)
                        } else {
                            _ = try space.read(at: address)
                        }
                    } else {
                        try space.fault(at: address, access: write ? .write : .read)
                    }
                } catch MemoryError.segmentationFault {
                } catch {
                    violations.record("fault at \(address.hex) threw \(error)")
                }
            }
        }

        let holder: @Sendable (Int) -> Void = { index in
            var random = SplitMix64(spreading: 0x401D_0000 &+ UInt64(index))
            defer { workersLeft.arrive() }
            for _ in 0..<workIterations / 4 {
                let address = Self.randomAddress(&random)
                guard let locked = space.lockVMAUnderRCU(address) else {
                    if space.mapping(containing: address) == nil { noVMA.add(1, ordering: .relaxed) }
                    continue
                }
                locked._withUnsafeGuaranteedRef { vma in
                    let start = vma.start
                    let end = vma.end
                    let attributes = vma.attributeWord.load(ordering: .relaxed)
                    holds.add(1, ordering: .relaxed)
                    holders.hold(index, start, end)
                    for spin in 0..<64 {
                        if spin % 16 == 15 { sched_yield() } else { cinterop_cpu_relax() }
                        if vma.start != start || vma.end != end || vma.attributeWord.load(ordering: .relaxed) != attributes {
                            violations.record(
                                "VMA [\(start.hex), \(end.hex)) changed to [\(vma.start.hex), \(vma.end.hex)) under its read lock")
                            break
                        }
                    }
                    if vma.referenceCount == 0 { violations.record("VMA detached under its read lock") }
                    holders.release(index)
                    vma.endRead(space.mmapLock)
                }
            }
        }

        let churner: @Sendable (Int) -> Void = { index in
            var random = SplitMix64(spreading: 0xC4A0_0000 &+ UInt64(index))
            let slots = Self.slots(index)
            let protections: [Protection] = [.read, .none, .readWrite]
            var operations = 0
            while operations < churnIterations || !workersLeft.isDone {
                operations += 1
                if operations > 1_000_000 { break }
                let slot = slots[random.index(below: 2)]
                let first = random.below(Self.slotPages)
                let count = UInt64(random.int(1...Int(Self.slotPages - first)))
                let low = slot + first * page
                let high = low + count * page
                do {
                    // Mostly mapped: maps outnumber the operations that leave holes.
                    switch random.below(16) {
                    case 0, 1, 2, 3, 4:
                        try space.map(length: high - low, protection: random.pick(protections), placement: .fixed(low))
                    case 5, 6:
                        try space.unmap(address: low, length: high - low)
                        ConcurrentPages.expectNoEntries(space, low, high, after: "unmap", violations)
                    case 7, 8, 9, 10:
                        let protection = random.pick(protections)
                        do {
                            try space.protect(address: low, length: high - low, protection: protection)
                            ConcurrentPages.expectProtected(
                                space, low, high, protection, after: "protect(\(protection))", violations)
                        } catch MemoryError.noMemory {}  // a hole in the range
                    case 11:
                        // Move into the other slot (replacing what is there).
                        let target = slots[slot == slots[0] ? 1 : 0] + first * page
                        do {
                            try space.remap(address: low, oldLength: high - low, newLength: high - low, move: .fixed(target))
                            ConcurrentPages.expectNoEntries(space, low, high, after: "remap move away", violations)
                        } catch MemoryError.badAddress {}  // not inside one VMA
                    case 12:
                        // Shrink in place to its first page.
                        do {
                            try space.remap(address: low, oldLength: high - low, newLength: page)
                            ConcurrentPages.expectNoEntries(space, low + page, high, after: "remap shrink", violations)
                        } catch MemoryError.badAddress {}
                    case 13:
                        try space.clearSoftDirty(address: low, length: high - low)
                    case 14:
                        if random.chance(25) { try space.fork().teardown() }
                    default:
                        try space.map(length: high - low, placement: .fixed(low))  // read-write
                    }
                } catch {
                    violations.record("churner \(index) on [\(low.hex), \(high.hex)): \(error)")
                }
            }
            churnOperations.add(operations, ordering: .relaxed)
        }

        var bodies: [@Sendable () -> Void] = []
        for index in 0..<faulters { bodies.append { faulter(index) } }
        for index in 0..<holderCount { bodies.append { holder(index) } }
        for index in 0..<churners { bodies.append { churner(index) } }
        guard ConcurrentHarness.run("vma-locks", bodies) else { return }

        violations.expectNone("faults and VMA readers against writers")
        let statistics = space.statistics
        ConcurrentHarness.report(
            "vma-locks: ops=\(churnOperations.load(ordering: .relaxed)) holds=\(holds.load(ordering: .relaxed)) noVMA=\(noVMA.load(ordering: .relaxed)) checks=\(auditor.checks.load(ordering: .relaxed)) \(statistics.nonZero)")
        #expect(holds.load(ordering: .relaxed) > 0)
        #expect(auditor.checks.load(ordering: .relaxed) > 0)
        #expect(statistics[.vmaLockSuccess] > 0)
        let audit = space.audit()
        #expect(audit.entriesOutsideVMAs == 0)
        #expect(audit.entriesExceedingProtection == 0)
        #expect(audit.deadTablesReached == 0)
        #expect(audit.unmergedNeighbours == 0)
        space.unregisterNotifier(auditor)
        space.teardown()
        RCU.barrier()
        #expect(memory.framesInUse == 0)
        #expect(memory.swap.slotsInUse == 0)
    }

    /// What per-VMA locks buy: while a writer holds the mmap write lock (an munmap blocked in a
    /// notifier callback), faults on other VMAs complete under their own VMA locks.
    @Test func faultsOnOtherVMAsDoNotWaitForTheMmapLock() throws {
        let memory = PhysicalMemory(capacity: 1 << 12)
        let space = try AddressSpace(configuration: .init(faultPath: .perVMALock), memory: memory)
        let page = Self.page
        let victim = try space.map(length: 16 * page, placement: .fixed(0xC0_0000_0000))
        let stable = try space.map(length: 16 * page, placement: .fixed(0xC0_0000_0000 + (1 << 30)))
        try space.write(7, at: stable)
        let blocker = ConcurrentBlockingNotifier(blockOn: victim)
        try space.registerNotifier(blocker)
        let unmapper = TestThread("blocked-unmap") { try? space.unmap(address: victim, length: 16 * page) }
        blocker.entered.wait()  // the unmap holds the mmap write lock until `release`

        let before = space.statistics
        let results = ConcurrentLocked<(UInt64?, Bool)>((nil, false))
        let prober = TestThread("vma-lock-probe") {
            let value = try? space.read(at: stable)
            let wrote = (try? space.write(8, at: stable + page)) != nil
            results.withLock { $0 = (value, wrote) }
        }
        guard prober.join("faults on another VMA while the mmap write lock is held") else {
            blocker.release.signal()
            return
        }
        let delta = space.statistics.since(before)
        let (value, wrote) = results.withLock { $0 }
        #expect(value == 7)
        #expect(wrote)
        #expect(delta[.vmaLockSuccess] >= 1)
        #expect(delta[.classicFaults] == 0)

        blocker.release.signal()
        guard unmapper.join("unmap") else { return }
        space.unregisterNotifier(blocker)
        space.teardown()
        RCU.barrier()
        #expect(memory.framesInUse == 0)
    }

    /// Regression (anon_vma prepared under the VMA lock alone): the first write to a private VMA
    /// gives it an `anon_vma`, chosen by reading its neighbours, which writers change under the
    /// mmap write lock without write-locking this VMA. Under the VMA lock alone that read raced
    /// them; the kernel's `vmf_anon_prepare` takes the mmap read lock (trylock) or retries on the
    /// classic path (`VMA_LOCK_RETRY`). With the mmap write lock held, such a fault must not
    /// complete: it counts a retry and waits for the lock.
    @Test func anonVMAPrepareNeedsTheMmapLockUnderTheVMALock() throws {
        let memory = PhysicalMemory(capacity: 1 << 12)
        let space = try AddressSpace(configuration: .init(faultPath: .perVMALock), memory: memory)
        let page = Self.page
        let victim = try space.map(length: 16 * page, placement: .fixed(0xC0_0000_0000))
        let fresh = try space.map(length: 16 * page, placement: .fixed(0xC0_0000_0000 + (1 << 30)))
        let blocker = ConcurrentBlockingNotifier(blockOn: victim)
        try space.registerNotifier(blocker)
        let unmapper = TestThread("blocked-unmap") { try? space.unmap(address: victim, length: 16 * page) }
        blocker.entered.wait()  // the unmap holds the mmap write lock until `release`

        let before = space.statistics
        let finished = Atomic<Bool>(false)
        let writer = TestThread("first-write") {
            try? space.write(9, at: fresh)
            finished.store(true, ordering: .releasing)
        }
        // Either the fault completes (the bug) or it gives up its VMA lock and waits.
        spinUntil {
            finished.load(ordering: .acquiring) || space.statistics.since(before)[.vmaLockRetry] >= 1
        }
        let completedEarly = finished.load(ordering: .acquiring)
        #expect(!completedEarly, "first write completed without the mmap lock")
        #expect(space.statistics.since(before)[.vmaLockRetry] == 1)

        blocker.release.signal()
        guard writer.join("first write"), unmapper.join("unmap") else { return }
        #expect(try space.read(at: fresh) == 9)
        let delta = space.statistics.since(before)
        #expect(delta[.vmaLockSuccess] == 0)
        #expect(delta[.classicFaults] == 1)
        space.unregisterNotifier(blocker)
        space.teardown()
        RCU.barrier()
        #expect(memory.framesInUse == 0)
    }
}

final class ConcurrentNoOpNotifier: MMUNotifier, @unchecked Sendable {
    var callbacks: NotifierCallbacks { .invalidateRange }
    func invalidateRangeStart(_ range: InvalidationRange) -> Bool { true }
    func invalidateRangeEnd(_ range: InvalidationRange) {}
}

final class ConcurrentNoOpIntervalHandler: IntervalNotifierHandler, @unchecked Sendable {
    func invalidate(_ notifier: IntervalNotifier, range: InvalidationRange, currentSequence: UInt64) -> Bool {
        notifier.setSequence(currentSequence)
        return true
    }
}
