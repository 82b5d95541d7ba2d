import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// Registration and teardown while a callback sleeps (review finding 3). The notifier domain is
/// global, like the kernel's: a grace period waits for every space's callbacks. Registering used to
/// publish the new subscriber list and then wait for such a grace period to free the old list —
/// while holding the mmap write lock. So one callback sleeping in any space stalled registration in
/// every space, and with it every classic fault and mmap operation of the registering space (and a
/// callback needing that space's mmap lock deadlocked). Teardown waited the same way under the lock.
///
/// Each test holds a callback of space B asleep at a gate and checks that space A's registration,
/// or A's mmap lock during A's teardown, does not wait for it. The waits are liveness guards (a
/// broken engine fails instead of hanging), not timing assertions.
@Suite("ConcurrentRegistration")
struct ConcurrentRegistrationTests {
    static let page = AddressSpace.pageSize

    /// Space B with a subscriber whose next start blocks at its gate, and a thread in an munmap of B
    /// held there (inside a notifier-domain read section).
    private func sleepingCallback() throws -> (space: AddressSpace, recorder: RecordingNotifier, thread: TestThread) {
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 1024))
        let recorder = RecordingNotifier("sleeper", log: NotifierCallLog())
        try space.registerNotifier(recorder)
        let address = try space.map(length: 4 * Self.page)
        try space.write(1, at: address)
        recorder.startGate.arm()
        let thread = TestThread("munmap-B") { try? space.unmap(address: address, length: 4 * Self.page) }
        recorder.startGate.waitUntilEntered()
        return (space, recorder, thread)
    }

    @Test func registrationWaitedForAGracePeriodUnderTheMmapLock() throws {
        let other = try AddressSpace(memory: PhysicalMemory(capacity: 1024))
        let (b, recorder, munmap) = try sleepingCallback()
        let registered = SharedFlag()
        let register = TestThread("register-A") {
            if (try? other.registerNotifier(RecordingNotifier("new", log: NotifierCallLog()))) != nil { registered.set() }
        }
        let finished = register.join(within: 30)
        #expect(finished, "registering in space A waited for a callback sleeping in space B")
        recorder.startGate.open()
        munmap.join("munmap of B")
        if !finished { register.join("registration") }
        #expect(registered.isSet)
        #expect(other.notifiers.count == 1)
        b.teardown()
        other.teardown()
    }

    @Test func teardownWaitedForAGracePeriodUnderTheMmapLock() throws {
        let a = try AddressSpace(memory: PhysicalMemory(capacity: 1024))
        try a.registerNotifier(RecordingNotifier("a", log: NotifierCallLog()))
        try a.map(length: 4 * Self.page)
        let (b, recorder, munmap) = try sleepingCallback()
        let teardown = TestThread("teardown-A") { a.teardown() }
        #expect(spinUntil { a.isTornDown })
        // Teardown now waits for the notifier grace period (B's callback sleeps); A's mmap lock must
        // be free meanwhile.
        let reader = TestThread("mmap-read-A") { _ = a.mappingCount }
        let finished = reader.join(within: 30)
        #expect(finished, "teardown held the mmap lock while waiting for the notifier domain")
        recorder.startGate.open()
        munmap.join("munmap of B")
        teardown.join("teardown of A")
        if !finished { reader.join("reader of A") }
        #expect(a.mappingCount == 0)
        b.teardown()
    }
}

/// Review finding 4: with `notifierList: .rwlock` the list was guarded by the writer-preferring mmap
/// lock type. A start callback that re-entered the list (here through `testYoung(at:)`) while an
/// unregistration waited for the lock blocked behind that writer, and the writer waited for the
/// callback: a deadlock. The unregistration is made to wait (its writer bit is observed) before the
/// callback re-enters.
@Suite("ConcurrentRWLockNotifierList")
struct ConcurrentRWLockNotifierListTests {
    @Test func rwlockListDeadlockedWhenACallbackReenteredDuringUnregistration() throws {
        let space = try AddressSpace(configuration: .init(notifierList: .rwlock), memory: PhysicalMemory(capacity: 1024))
        let reentering = ReenteringNotifier(space)
        let leaving = RecordingNotifier("leaving", log: NotifierCallLog())
        try space.registerNotifier(reentering)
        try space.registerNotifier(leaving)
        let address = try space.map(length: 4 * AddressSpace.pageSize)
        try space.write(1, at: address)
        reentering.gate.arm()
        let munmap = TestThread("munmap") { try? space.unmap(address: address, length: 4 * AddressSpace.pageSize) }
        reentering.gate.waitUntilEntered()
        let unregister = TestThread("unregister") { space.unregisterNotifier(leaving) }
        let list = try #require(space.subscriptionsPointer?.takeUnretainedValue().list)
        #expect(spinUntil { list.writerIsWaiting }, "the unregistration never started waiting")
        reentering.gate.open()  // the callback now re-enters the list
        let finished = munmap.join(within: 30)
        #expect(finished, "the callback re-entering the list deadlocked with the waiting unregistration")
        guard finished else { return }  // threads are stuck: leave everything alone
        unregister.join("unregistration")
        #expect(space.notifiers.count == 1)
        space.teardown()
    }
}

/// A subscriber whose start, once armed, waits at its gate and then re-enters the space's notifier
/// list through `testYoung(at:)`, inside the same read section.
final class ReenteringNotifier: MMUNotifier, @unchecked Sendable {
    weak var space: AddressSpace?
    let gate = Gate()
    init(_ space: AddressSpace) { self.space = space }
    var callbacks: NotifierCallbacks { [.invalidateRangeStart, .invalidateRangeEnd] }
    func invalidateRangeStart(_ range: InvalidationRange) -> Bool {
        gate.passIfArmed()
        _ = space?.testYoung(at: range.end - AddressSpace.pageSize)  // never written: asks the subscribers
        return true
    }
}

/// Review finding 5: `SoftwareMirror` after and during `detach()`. Once released, every commit
/// failed and the mirror loop retried forever, so `populate`, `fault` and `read` never returned;
/// and a populate racing `detach()` could commit after the notifier was removed. Now every call
/// after `detach()` throws `MemoryError.detached` at once, and no translation lands after it.
@Suite("ConcurrentMirrorDetach")
struct ConcurrentMirrorDetachTests {
    static let page = AddressSpace.pageSize

    @Test func softwareMirrorHungAfterDetach() throws {
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 1024))
        let base = try space.map(length: 8 * Self.page)
        let mirror = try SoftwareMirror(space: space, start: base, length: 8 * Self.page)
        try mirror.populate(address: base, length: 2 * Self.page, write: true)
        #expect(mirror.count == 2)
        mirror.detach()
        #expect(mirror.count == 0)
        let outcomes = ConcurrentLocked<[String]>([])
        let caller = TestThread("after-detach") {
            func record<T>(_ name: String, _ body: () throws(MemoryError) -> T) {
                do throws(MemoryError) {
                    _ = try body()
                    outcomes.withLock { $0.append("\(name): succeeded") }
                } catch {
                    outcomes.withLock { $0.append("\(name): \(error == .detached ? "detached" : "\(error)")") }
                }
            }
            record("populate") { () throws(MemoryError) in try mirror.populate(address: base, length: Self.page, write: false) }
            record("fault") { () throws(MemoryError) in try mirror.fault(at: base, write: true) }
            record("read") { () throws(MemoryError) in try mirror.read(at: base) }
            record("migrate") { () throws(MemoryError) in try mirror.migrate(address: base, length: Self.page) }
        }
        let finished = caller.join(within: 30)
        #expect(finished, "a mirror call after detach() did not return")
        guard finished else { return }
        #expect(outcomes.withLock { $0 } == ["populate: detached", "fault: detached", "read: detached", "migrate: detached"])
        #expect(mirror.count == 0)
        mirror.detach()  // twice: nothing
        space.teardown()
    }

    /// Populating threads race `detach()`: once it returns the mirror holds nothing and keeps
    /// holding nothing, and every populate after it fails with `detached`.
    @Test func populateRacingDetachCommittedAfterTheNotifierWasGone() throws {
        for round in 0..<ConcurrentHarness.iterations(200, minimum: 20) {
            let memory = PhysicalMemory(capacity: 1024)
            let space = try AddressSpace(memory: memory)
            let base = try space.map(length: 16 * Self.page)
            let mirror = try SoftwareMirror(space: space, start: base, length: 16 * Self.page)
            let violations = ConcurrentViolations()
            let detached = SharedFlag()
            let bodies: [@Sendable () -> Void] = [
                {
                    var page: UInt64 = 0
                    while true {
                        let wasDetached = detached.isSet
                        do throws(MemoryError) {
                            try mirror.populate(address: base + page * Self.page, length: Self.page, write: page % 2 == 0)
                            if wasDetached { violations.record("round \(round): populate succeeded after detach returned") }
                        } catch .detached {
                            return
                        } catch .badAddress where detached.isSet {
                            return  // racing the munmap below, begun before detach returned
                        } catch {
                            violations.record("round \(round): populate threw \(error)")
                            return
                        }
                        page = (page + 1) % 16
                    }
                },
                {
                    mirror.detach()
                    detached.set()
                    if mirror.count != 0 { violations.record("round \(round): \(mirror.count) translations right after detach") }
                    // A munmap now frees the frames: the mirror must not hold any of them.
                    try? space.unmap(address: base, length: 16 * Self.page)
                },
            ]
            guard ConcurrentHarness.run("mirror-detach", bodies) else { return }
            violations.expectNone("populate racing detach")
            #expect(mirror.count == 0)
            space.teardown()
            #expect(memory.framesInUse == 0)
        }
    }
}
