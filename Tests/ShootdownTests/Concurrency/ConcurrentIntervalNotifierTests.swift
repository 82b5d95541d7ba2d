import CInterop
import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// An interval handler that reports calls after its notifier's `remove()` returned, and calls
/// still running then.
final class ConcurrentIntervalProbe: IntervalNotifierHandler, @unchecked Sendable {
    let name: String
    let violations: ConcurrentViolations
    let removed = Atomic<Bool>(false)
    let inside = Atomic<Int>(0)
    let calls = Atomic<Int>(0)
    /// The lock the handler and the reader's commit share (the driver's `user_lock`).
    let userLock = NSLock()
    private let slow: Bool

    init(name: String, slow: Bool, violations: ConcurrentViolations) {
        self.name = name
        self.slow = slow
        self.violations = violations
    }

    func invalidate(_ notifier: IntervalNotifier, range: InvalidationRange, currentSequence: UInt64) -> Bool {
        if removed.load(ordering: .sequentiallyConsistent) {
            violations.record("\(name): invalidate(\(range)) called after remove() returned")
        }
        inside.add(1, ordering: .sequentiallyConsistent)
        calls.add(1, ordering: .relaxed)
        if range.start >= notifier.end || range.end <= notifier.start {
            violations.record("\(name): called for \(range), which misses [\(notifier.start.hex), \(notifier.end.hex))")
        }
        if currentSequence & 1 == 0 { violations.record("\(name): even current sequence \(currentSequence)") }
        userLock.withLock { notifier.setSequence(currentSequence) }
        if slow {
            for _ in 0..<4 { cinterop_yield() }
        }
        if removed.load(ordering: .sequentiallyConsistent) {
            violations.record("\(name): invalidate(\(range)) still running after remove() returned")
        }
        inside.subtract(1, ordering: .sequentiallyConsistent)
        return true
    }
}

/// Interval notifiers inserted and removed while invalidations run (so inserts and removals are
/// often deferred because the tree is frozen): after `remove()` returns the handler never runs
/// again; once a read section has begun on a fresh notifier, an invalidation of its interval that
/// begins afterwards reaches its handler; at the end the tree is empty.
@Suite("ConcurrentIntervalNotifier")
struct ConcurrentIntervalNotifierTests {
    static let page = AddressSpace.pageSize
    static let sharedPages: UInt64 = 48
    static let privatePages: UInt64 = 8
    static let base: UInt64 = 0x60_0000_0000
    /// `[private 0][shared][private 1]`: invalidators churn the shared part; inserter `i` alone
    /// touches private part `i`, where it can count on an invalidation reaching its handler.
    static var shared: (UInt64, UInt64) {
        let start = base + privatePages * page
        return (start, start + sharedPages * page)
    }
    static func privatePart(_ index: Int) -> (UInt64, UInt64) {
        let start = index == 0 ? base : shared.1
        return (start, start + privatePages * page)
    }

    @Test(arguments: AddressSpace.FaultPath.allCases)
    func removeWhileInvalidating(path: AddressSpace.FaultPath) throws {
        let memory = PhysicalMemory(capacity: 1 << 12)
        let space = try AddressSpace(configuration: .init(faultPath: path), memory: memory)
        let page = Self.page
        let (sharedStart, sharedEnd) = Self.shared
        try space.map(length: sharedEnd - sharedStart, placement: .fixed(sharedStart))
        for index in 0..<2 {
            let (start, end) = Self.privatePart(index)
            // A different protection keeps the private parts separate VMAs from the shared one.
            try space.map(length: end - start, protection: [.read, .write, .exec], placement: .fixed(start))
        }
        let violations = ConcurrentViolations()
        // The first insertion takes the mmap write lock; do it before the race starts.
        let warmProbe = ConcurrentIntervalProbe(name: "warm-up", slow: false, violations: violations)
        let warm = try space.insertIntervalNotifier(start: sharedStart, length: page, handler: warmProbe)

        let inserters = 2
        let rounds = ConcurrentHarness.iterations(4_000, minimum: 8)
        let insertersLeft = ConcurrentCountdown(inserters)
        let probes = ConcurrentLocked<[ConcurrentIntervalProbe]>([warmProbe])
        let readCycles = Atomic<Int>(0)
        let retries = Atomic<Int>(0)

        let invalidator: @Sendable (Int) -> Void = { index in
            var random = SplitMix64(spreading: 0x17_0000 &+ UInt64(index))
            var operations = 0
            while !insertersLeft.isDone && operations < 10_000_000 {
                operations += 1
                let first = random.below(Self.sharedPages)
                let count = UInt64(random.int(1...Int(Self.sharedPages - first)))
                let low = sharedStart + first * page
                do {
                    switch random.below(10) {
                    case 0..<5:
                        try space.advise(address: low, length: count * page, advice: .dontNeed)
                    case 5:
                        try space.unmap(address: low, length: count * page)
                        try space.map(length: count * page, placement: .fixed(low))
                    case 6:
                        try space.protect(address: low, length: count * page, protection: .read)
                        try space.protect(address: low, length: count * page, protection: .readWrite)
                    default:
                        try space.write(UInt64(operations), at: low)
                    }
                } catch MemoryError.segmentationFault {
                    // A write in the other invalidator's read-only window or unmapped gap.
                } catch MemoryError.noMemory {
                    // advise/protect over the other invalidator's momentary hole.
                } catch {
                    violations.record("invalidator \(index): \(error)")
                }
            }
        }

        let inserter: @Sendable (Int) -> Void = { index in
            var random = SplitMix64(spreading: 0x1E_0000 &+ UInt64(index))
            defer { insertersLeft.arrive() }
            let privateStart = Self.privatePart(index).0
            var live: [(IntervalNotifier, ConcurrentIntervalProbe)] = []
            for round in 0..<rounds {
                // An interval from inside this inserter's private part into the shared part.
                let inPrivate = privateStart + random.below(Self.privatePages) * page
                let inShared = sharedStart + random.below(Self.sharedPages) * page
                let start = index == 0 ? inPrivate : inShared
                let end = (index == 0 ? inShared : inPrivate) + page
                let probe = ConcurrentIntervalProbe(
                    name: "inserter \(index) round \(round)", slow: random.chance(30), violations: violations)
                probes.withLock { $0.append(probe) }
                let notifier: IntervalNotifier
                do {
                    notifier = try space.insertIntervalNotifier(start: start, length: end - start, handler: probe)
                } catch {
                    violations.record("insert: \(error)")
                    return
                }
                if random.chance(60) {
                    // A read section: once readBegin returned, an invalidation of the interval that
                    // begins afterwards must reach the handler and force a retry.
                    let sequence = notifier.readBegin()
                    let before = probe.calls.load(ordering: .relaxed)
                    let target = max(start, privateStart)
                    do {
                        try space.advise(address: target, length: page, advice: .dontNeed)
                    } catch {
                        violations.record("advise private: \(error)")
                    }
                    if probe.calls.load(ordering: .relaxed) == before {
                        violations.record("\(probe.name): an invalidation of its interval after readBegin missed it")
                    }
                    let retry = probe.userLock.withLock { notifier.readRetry(sequence) }
                    if !retry { violations.record("\(probe.name): readRetry false after a colliding invalidation") }
                    readCycles.add(1, ordering: .relaxed)
                } else {
                    // A read cycle racing the invalidators (may or may not collide).
                    let sequence = notifier.readBegin()
                    _ = space.translate(start)
                    if probe.userLock.withLock({ notifier.readRetry(sequence) }) {
                        retries.add(1, ordering: .relaxed)
                    }
                }
                live.append((notifier, probe))
                // Remove some now (often while the tree is frozen), keep up to three live.
                while live.count > 3 || (!live.isEmpty && random.chance(50)) {
                    let (victim, victimProbe) = live.remove(at: random.index(below: live.count))
                    victim.remove()
                    victimProbe.removed.store(true, ordering: .sequentiallyConsistent)
                    let running = victimProbe.inside.load(ordering: .sequentiallyConsistent)
                    if running != 0 {
                        violations.record("\(victimProbe.name): \(running) call(s) running after remove()")
                    }
                    victim.remove()  // twice: nothing
                }
            }
            for (notifier, probe) in live {
                notifier.remove()
                probe.removed.store(true, ordering: .sequentiallyConsistent)
            }
        }

        var bodies: [@Sendable () -> Void] = []
        for index in 0..<inserters { bodies.append { inserter(index) } }
        for index in 0..<2 { bodies.append { invalidator(index) } }
        guard ConcurrentHarness.run("interval", bodies) else { return }

        warm.remove()
        warmProbe.removed.store(true, ordering: .sequentiallyConsistent)
        // Every probe removed: further invalidations reach none.
        try space.advise(address: sharedStart, length: sharedEnd - sharedStart, advice: .dontNeed)
        for index in 0..<2 {
            let (start, end) = Self.privatePart(index)
            try space.advise(address: start, length: end - start, advice: .dontNeed)
        }
        violations.expectNone("interval notifier insert/remove")
        #expect(space.intervalNotifierCount == 0)
        let calls = probes.withLock { $0.reduce(0) { $0 + $1.calls.load(ordering: .relaxed) } }
        #expect(calls > 0)
        ConcurrentHarness.report("interval: calls=\(calls) readCycles=\(readCycles.load(ordering: .relaxed)) racingRetries=\(retries.load(ordering: .relaxed)) \(space.statistics.nonZero.filter { $0.name.hasPrefix("interval") })")
        space.teardown()
        #expect(memory.framesInUse == 0)
    }
}
