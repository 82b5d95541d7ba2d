import CInterop
import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// A classic subscriber that reports any callback after it was declared unregistered, any callback
/// still running when unregistration returned, and any end without a start.
final class ConcurrentProbeNotifier: MMUNotifier, @unchecked Sendable {
    let name: String
    let violations: ConcurrentViolations
    /// Set by the test right after `unregisterNotifier` returned.
    let unregistered = Atomic<Bool>(false)
    /// Callbacks currently running.
    let inside = Atomic<Int>(0)
    let calls = Atomic<Int>(0)
    /// Starts minus ends: an end without its start makes it negative.
    let open = Atomic<Int>(0)
    let releases = Atomic<Int>(0)
    /// Signalled once, at the first callback.
    let firstCall = DispatchSemaphore(value: 0)
    private let slow: Bool

    init(name: String, slow: Bool, violations: ConcurrentViolations) {
        self.name = name
        self.slow = slow
        self.violations = violations
    }

    var callbacks: NotifierCallbacks { [.invalidateRangeStart, .invalidateRangeEnd, .release] }

    private func enter(_ what: String) {
        if unregistered.load(ordering: .sequentiallyConsistent) {
            violations.record("\(name): \(what) called after unregisterNotifier returned")
        }
        inside.add(1, ordering: .sequentiallyConsistent)
        if calls.wrappingAdd(1, ordering: .relaxed).oldValue == 0 { firstCall.signal() }
    }

    private func leave(_ what: String) {
        if slow {
            for _ in 0..<8 { cinterop_yield() }  // widen the window
        }
        if unregistered.load(ordering: .sequentiallyConsistent) {
            violations.record("\(name): \(what) still running after unregisterNotifier returned")
        }
        inside.subtract(1, ordering: .sequentiallyConsistent)
    }

    func invalidateRangeStart(_ range: InvalidationRange) -> Bool {
        enter("start")
        open.add(1, ordering: .relaxed)
        leave("start")
        return true
    }

    func invalidateRangeEnd(_ range: InvalidationRange) {
        enter("end")
        if open.subtract(1, ordering: .relaxed).newValue < 0 {
            violations.record("\(name): end of \(range) without a start")
        }
        leave("end")
    }

    func release(space: UInt64) {
        releases.add(1, ordering: .relaxed)
    }
}

/// After `unregisterNotifier(n)` returns, no callback of `n` runs or will run, while other threads
/// keep invalidating (concurrently, under the mmap read lock) and several probes come and go.
@Suite("ConcurrentUnregistration")
struct ConcurrentUnregistrationTests {
    static let page = AddressSpace.pageSize

    @Test(arguments: NotifierListProtection.allCases)
    func noCallbackAfterUnregister(protection: NotifierListProtection) throws {
        let memory = PhysicalMemory(capacity: 1 << 12)
        let space = try AddressSpace(configuration: .init(notifierList: protection), memory: memory)
        let pages: UInt64 = 32
        let base = try space.map(length: pages * Self.page, placement: .fixed(0x50_0000_0000))
        let violations = ConcurrentViolations()
        let rounds = ConcurrentHarness.iterations(400, minimum: 4)
        let controllerDone = Atomic<Bool>(false)
        let invalidations = Atomic<Int>(0)
        let probes = ConcurrentLocked<[ConcurrentProbeNotifier]>([])

        let invalidator: @Sendable (Int) -> Void = { index in
            var random = SplitMix64(spreading: 0x1A_0000 &+ UInt64(index))
            var operations = 0
            while !controllerDone.load(ordering: .relaxed) && operations < 10_000_000 {
                operations += 1
                let first = random.below(pages)
                let count = UInt64(random.int(1...Int(pages - first)))
                let low = base + first * Self.page
                do {
                    switch random.below(10) {
                    case 0..<5:
                        // Concurrent invalidations (mmap read lock).
                        try space.advise(address: low, length: count * Self.page, advice: .dontNeed)
                    case 5:
                        // An mprotect round trip (mmap write lock).
                        try space.protect(address: low, length: count * Self.page, protection: .read)
                        try space.protect(address: low, length: count * Self.page, protection: .readWrite)
                    default:
                        try space.write(UInt64(operations), at: low)
                    }
                    invalidations.add(1, ordering: .relaxed)
                } catch MemoryError.segmentationFault {
                    // The write met the other invalidator's read-only window.
                } catch {
                    violations.record("invalidator \(index): \(error)")
                }
            }
        }

        let controller: @Sendable () -> Void = {
            var random = SplitMix64(spreading: 0xC7_1)
            defer { controllerDone.store(true, ordering: .relaxed) }
            var registered: [ConcurrentProbeNotifier] = []
            for round in 0..<rounds {
                let probe = ConcurrentProbeNotifier(name: "probe \(round)", slow: random.chance(50), violations: violations)
                probes.withLock { $0.append(probe) }
                do {
                    try space.registerNotifier(probe)
                } catch {
                    violations.record("register \(round): \(error)")
                    return
                }
                registered.append(probe)
                // Keep one or two registered; unregister the oldest once it has been called.
                if registered.count < 2 && random.chance(50) { continue }
                let victim = registered.removeFirst()
                victim.firstCall.wait()  // the invalidators run until this controller is done
                let wasRegistered = space.unregisterNotifier(victim)
                victim.unregistered.store(true, ordering: .sequentiallyConsistent)
                if !wasRegistered { violations.record("\(victim.name): unregister returned false") }
                let running = victim.inside.load(ordering: .sequentiallyConsistent)
                if running != 0 { violations.record("\(victim.name): \(running) callback(s) running after unregister") }
                let releases = victim.releases.load(ordering: .relaxed)
                if releases != 1 { violations.record("\(victim.name): release called \(releases) times") }
                if space.unregisterNotifier(victim) { violations.record("\(victim.name): unregistered twice") }
            }
            for probe in registered {
                _ = space.unregisterNotifier(probe)
                probe.unregistered.store(true, ordering: .sequentiallyConsistent)
            }
        }

        guard ConcurrentHarness.run("unregister", [controller, { invalidator(0) }, { invalidator(1) }]) else { return }
        // A few more invalidations with every probe gone: none may be called.
        for _ in 0..<16 { try space.advise(address: base, length: pages * Self.page, advice: .dontNeed) }
        violations.expectNone("unregistration (\(protection))")
        #expect(space.notifiers.isEmpty)
        let calls = probes.withLock { $0.reduce(0) { $0 + $1.calls.load(ordering: .relaxed) } }
        #expect(calls > 0)
        ConcurrentHarness.report("unregister \(protection): invalidations=\(invalidations.load(ordering: .relaxed)) calls=\(calls)")
        space.teardown()
        #expect(memory.framesInUse == 0)
    }
}
