import CInterop
import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// A table of objects for the SRCU torture test: each slot holds a generation number while its
/// object is live and 0 once it has been retired. A reader that finds slot `i` through the shared
/// pointer must see the same non-zero generation for as long as its read section lasts.
final class ConcurrentObjectTable: @unchecked Sendable {
    let count: Int
    let generations: UnsafeMutablePointer<Atomic<UInt64>>
    /// The "pointer": the index of the current object.
    let current = Atomic<Int>(0)

    init(count: Int) {
        self.count = count
        generations = .allocate(capacity: count)
        for index in 0..<count { (generations + index).initialize(to: Atomic(index == 0 ? 1 : 0)) }
    }

    deinit {
        generations.deinitialize(count: count)
        generations.deallocate()
    }
}

@Suite("ConcurrentSleepableRCU")
struct ConcurrentSleepableRCUTests {
    /// Readers take a section, follow the pointer, check the object stays live (across yields,
    /// i.e. a "sleeping" section) and leave; an updater publishes a replacement, waits for a grace
    /// period, then retires the old object. Other threads run grace periods concurrently, and
    /// some sections are ended on a different thread than the one that began them.
    @Test func readersNeverSeeRetiredObjects() {
        let domain = SleepableRCU()
        let table = ConcurrentObjectTable(count: 8)
        let violations = ConcurrentViolations()
        let readers = 3
        let readIterations = ConcurrentHarness.iterations(100_000)
        let updates = ConcurrentHarness.iterations(5_000)
        let readersLeft = ConcurrentCountdown(readers)
        let updatesDone = Atomic<Int>(0)
        let extraGracePeriods = Atomic<Int>(0)
        // Sections handed to another thread to end (token, index, generation).
        let handoff = ConcurrentLocked<[(SleepableRCU.ReadToken, Int, UInt64)]>([])

        @Sendable func verify(_ index: Int, _ generation: UInt64, _ what: String) {
            let now = table.generations[index].load(ordering: .acquiring)
            if now != generation {
                violations.record("\(what): object \(index) generation \(generation) became \(now) inside a read section")
            }
        }

        let reader: @Sendable (Int) -> Void = { number in
            var random = SplitMix64(spreading: 0x5C_0000 &+ UInt64(number))
            defer { readersLeft.arrive() }
            for _ in 0..<readIterations {
                let token = domain.readLock()
                // Sequentially consistent, as the domain's ordering argument requires.
                let index = table.current.load(ordering: .sequentiallyConsistent)
                let generation = table.generations[index].load(ordering: .acquiring)
                if generation == 0 {
                    violations.record("reader \(number) found retired object \(index)")
                    domain.readUnlock(token)
                    continue
                }
                let roll = random.below(100)
                if roll < 5 {
                    cinterop_yield()  // "sleep" inside the section
                } else {
                    for _ in 0..<random.below(64) { verify(index, generation, "reader \(number)") }
                }
                verify(index, generation, "reader \(number)")
                if roll >= 97 {
                    // End it on another thread (the next reader that drains the hand-off list).
                    handoff.withLock { $0.append((token, index, generation)) }
                } else {
                    domain.readUnlock(token)
                }
                let pending = handoff.withLock { list -> [(SleepableRCU.ReadToken, Int, UInt64)] in
                    defer { list.removeAll() }
                    return list
                }
                for (other, index, generation) in pending {
                    verify(index, generation, "handed-off section")
                    domain.readUnlock(other)
                }
            }
        }

        let updater: @Sendable () -> Void = {
            var generation: UInt64 = 1
            var done = 0
            while done < updates || !readersLeft.isDone {
                done += 1
                if done > 10_000_000 { break }
                let old = table.current.load(ordering: .relaxed)
                let replacement = (old + 1) % table.count
                if table.generations[replacement].load(ordering: .relaxed) != 0 {
                    violations.record("updater: object \(replacement) still live when reused")
                }
                generation += 1
                table.generations[replacement].store(generation, ordering: .releasing)
                // Sequentially consistent publication (as NotifierList.publish does).
                table.current.store(replacement, ordering: .sequentiallyConsistent)
                domain.synchronize()
                table.generations[old].store(0, ordering: .releasing)  // retire
            }
            updatesDone.store(done, ordering: .relaxed)
        }

        let synchronizer: @Sendable () -> Void = {
            var count = 0
            while !readersLeft.isDone && count < 1_000_000 {
                domain.synchronize()
                count += 1
            }
            extraGracePeriods.store(count, ordering: .relaxed)
        }

        var bodies: [@Sendable () -> Void] = []
        for number in 0..<readers { bodies.append { reader(number) } }
        bodies.append(updater)
        bodies.append(synchronizer)
        guard ConcurrentHarness.run("srcu-torture", bodies) else { return }
        // Sections still handed off (their readers finished): end them.
        for (token, index, generation) in handoff.withLock({ $0 }) {
            verify(index, generation, "final hand-off")
            domain.readUnlock(token)
        }
        domain.synchronize()
        violations.expectNone("SRCU torture")
        let updated = updatesDone.load(ordering: .relaxed)
        #expect(updated >= updates)
        #expect(domain.gracePeriodsCompleted >= UInt64(updates))
        ConcurrentHarness.report("srcu: updates=\(updatesDone.load(ordering: .relaxed)) extra=\(extraGracePeriods.load(ordering: .relaxed)) gp=\(domain.gracePeriodsCompleted)")
    }

    /// A reader blocked inside a section of one domain delays that domain's grace periods only:
    /// another domain's `synchronize()`, the memb `RCU.synchronize()` and `RCU.barrier()` complete
    /// while it is still blocked (on a semaphore this test controls); the blocked domain's
    /// `synchronize()` returns only after the reader has left.
    @Test func blockedReaderDelaysOnlyItsOwnDomain() {
        let blocked = SleepableRCU()
        let other = SleepableRCU()
        let entered = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let left = Atomic<Bool>(false)
        let syncReturnedEarly = Atomic<Bool>(false)
        let syncReturned = Atomic<Bool>(false)

        let sleeper = TestThread("srcu-sleeper") {
            let token = blocked.readLock()
            entered.signal()
            release.wait()
            left.store(true, ordering: .sequentiallyConsistent)
            blocked.readUnlock(token)
        }
        entered.wait()

        // Progress elsewhere while the reader sleeps (it stays blocked until `release` is signalled
        // below). The grace periods run on a watched thread: if the sleeping reader held them up,
        // the join fails instead of hanging the run.
        let before = other.gracePeriodsCompleted
        let progress = TestThread("srcu-progress") {
            other.synchronize()
            other.synchronize()
            RCU.synchronize()
            RCU.barrier()
        }
        guard progress.join("other domains' grace periods while a reader sleeps") else {
            release.signal()
            return
        }
        #expect(other.gracePeriodsCompleted == before + 2)

        // The blocked domain waits for it.
        let waiter = TestThread("srcu-waiter") {
            blocked.synchronize()
            if !left.load(ordering: .sequentiallyConsistent) { syncReturnedEarly.store(true, ordering: .relaxed) }
            syncReturned.store(true, ordering: .sequentiallyConsistent)
        }
        // More unrelated grace periods while the waiter waits (no timing: whatever it has done by
        // now, it cannot have returned).
        other.synchronize()
        RCU.synchronize()
        let returnedWhileBlocked = syncReturned.load(ordering: .sequentiallyConsistent)
        #expect(!returnedWhileBlocked)
        release.signal()
        guard sleeper.join("sleeper"), waiter.join("waiter") else { return }
        let returned = syncReturned.load(ordering: .sequentiallyConsistent)
        let early = syncReturnedEarly.load(ordering: .relaxed)
        #expect(returned)
        #expect(!early, "synchronize() returned while a reader was inside")
    }

    /// A section may end on another thread: the grace period lasts until that thread ends it.
    @Test func sectionEndedOnAnotherThread() {
        let domain = SleepableRCU()
        let locked = DispatchSemaphore(value: 0)
        let unlock = DispatchSemaphore(value: 0)
        let token = ConcurrentLocked<SleepableRCU.ReadToken?>(nil)
        let unlocked = Atomic<Bool>(false)
        let returnedEarly = Atomic<Bool>(false)

        let owner = TestThread("srcu-owner") {
            token.withLock { $0 = domain.readLock() }
            locked.signal()
        }
        guard owner.join("owner") else { return }
        locked.wait()
        let waiter = TestThread("srcu-waiter") {
            domain.synchronize()
            if !unlocked.load(ordering: .sequentiallyConsistent) { returnedEarly.store(true, ordering: .relaxed) }
        }
        let finisher = TestThread("srcu-finisher") {
            unlock.wait()
            unlocked.store(true, ordering: .sequentiallyConsistent)
            domain.readUnlock(token.withLock { $0! })
        }
        RCU.synchronize()  // some unrelated work before letting the section end
        unlock.signal()
        guard finisher.join("finisher"), waiter.join("waiter") else { return }
        let early = returnedEarly.load(ordering: .relaxed)
        #expect(!early, "synchronize() returned before the section ended on the other thread")
    }

    /// Deferred reclamation (`call_srcu`): the caller returns at once while a reader sleeps; the
    /// callback runs only after every reader that was inside has left, and ``barrier()`` waits
    /// for it. Many callbacks queued meanwhile all run.
    @Test func deferredCallbacksWaitForReadersButTheirCallerDoesNot() {
        let domain = SleepableRCU()
        let readerInside = Atomic<Bool>(true)
        let ranEarly = Atomic<Int>(0)
        let ran = Atomic<Int>(0)
        let token = domain.readLock()
        for _ in 0..<100 {
            domain.call(afterGracePeriod: {
                if readerInside.load(ordering: .sequentiallyConsistent) { ranEarly.add(1, ordering: .relaxed) }
                ran.add(1, ordering: .relaxed)
            })
        }
        // The caller did not wait (the reader is still inside, on this very thread).
        RCU.synchronize()  // unrelated work while the callbacks are pending
        readerInside.store(false, ordering: .sequentiallyConsistent)
        domain.readUnlock(token)
        let barrier = TestThread("srcu-barrier") { domain.barrier() }
        guard barrier.join("barrier") else { return }
        #expect(ranEarly.load(ordering: .relaxed) == 0, "a callback ran while a reader that predates it was inside")
        #expect(ran.load(ordering: .relaxed) == 100)
    }

    /// The same isolation seen from an address space: a notifier callback that blocks (inside the
    /// notifier domain, during an munmap holding the mmap write lock) delays neither memb grace
    /// periods and deferred frees, nor speculative faults and lockless accesses elsewhere in the
    /// space.
    @Test func blockedNotifierDelaysNeitherFaultsNorReclamation() throws {
        let memory = PhysicalMemory(capacity: 1 << 12)
        let space = try AddressSpace(memory: memory)
        let page = AddressSpace.pageSize
        let victim = try space.map(length: 16 * page, placement: .fixed(0x40_0000_0000))
        let stable = try space.map(length: 16 * page, placement: .fixed(0x40_0000_0000 + (1 << 30)))
        try space.write(7, at: stable)
        let blocker = ConcurrentBlockingNotifier(blockOn: victim)
        try space.registerNotifier(blocker)

        let unmapper = TestThread("blocked-unmap") {
            try? space.unmap(address: victim, length: 16 * page)
        }
        blocker.entered.wait()  // the unmap is now inside start (until `release`), holding the mmap write lock

        // Grace periods and lockless paths work: a speculative fault on a present page and one that
        // installs a page, an access through the page table, a translation. They run on a watched
        // thread, so one held up by the blocked callback fails the join instead of hanging the run.
        let results = ConcurrentLocked<(Bool, Bool, UInt64?, Bool)>((false, false, nil, false))
        let prober = TestThread("lockless-probe") {
            RCU.synchronize()
            RCU.barrier()
            let readFault = space.speculativeFault(stable, .read) == .handled
            let writeFault = space.speculativeFault(stable + page, .write) == .handled
            let value = try? space.read(at: stable)
            let writable = space.translate(stable + page)?.isWritable == true
            results.withLock { $0 = (readFault, writeFault, value, writable) }
        }
        guard prober.join("grace periods and lockless paths while a callback blocks") else {
            blocker.release.signal()
            return
        }
        let (readFault, writeFault, value, writable) = results.withLock { $0 }
        #expect(readFault)
        #expect(writeFault)
        #expect(value == 7)
        #expect(writable)

        blocker.release.signal()
        guard unmapper.join("unmap") else { return }
        #expect(space.mappings().count == 1)
        space.teardown()
        #expect(memory.framesInUse == 0)
    }
}

/// A classic notifier whose start blocks, once, when an invalidation covers `blockOn`, until the
/// test signals `release`.
final class ConcurrentBlockingNotifier: MMUNotifier, @unchecked Sendable {
    let blockOn: UInt64
    let entered = DispatchSemaphore(value: 0)
    let release = DispatchSemaphore(value: 0)
    private let armed = Atomic<Bool>(true)

    init(blockOn: UInt64) { self.blockOn = blockOn }

    var callbacks: NotifierCallbacks { [.invalidateRangeStart] }

    func invalidateRangeStart(_ range: InvalidationRange) -> Bool {
        guard range.start <= blockOn && blockOn < range.end,
            armed.exchange(false, ordering: .acquiringAndReleasing)
        else { return true }
        entered.signal()
        release.wait()
        return true
    }
}
