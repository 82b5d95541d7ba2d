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
