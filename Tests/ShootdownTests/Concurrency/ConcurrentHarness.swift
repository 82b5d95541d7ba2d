import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// Shared machinery of the `Concurrent*` stress suites: real threads released together, a bounded
/// scale factor, a liveness watchdog and a lock-protected violation log. (Each thread draws from
/// its own ``SplitMix64/init(spreading:)``; single helper threads are ``TestThread``s.)
///
/// Rules the suites follow: no sleeps as synchronisation and no timing assertions; iteration counts
/// are bounded and scaled by `SHOOTDOWN_STRESS_SCALE` (default 1.0); worker threads never call
/// `#expect` (they run outside any test task) but record violations, which the test checks after
/// joining them.
enum ConcurrentHarness {
    /// `SHOOTDOWN_STRESS_SCALE`, default 1.0 (clamped to [0.01, 1000]).
    static let scale: Double = {
        guard let text = ProcessInfo.processInfo.environment["SHOOTDOWN_STRESS_SCALE"],
            let value = Double(text), value.isFinite, value > 0
        else { return 1.0 }
        return min(max(value, 0.01), 1000)
    }()

    /// `base` iterations scaled by ``scale`` (at least `minimum`).
    static func iterations(_ base: Int, minimum: Int = 1) -> Int {
        max(minimum, Int((Double(base) * scale).rounded()))
    }

    /// Whether to print coverage counters (`SHOOTDOWN_STRESS_VERBOSE=1`).
    static let verbose = ProcessInfo.processInfo.environment["SHOOTDOWN_STRESS_VERBOSE"].map { $0 != "0" } ?? false

    /// Prints what a run exercised (counters, collisions), when ``verbose``.
    static func report(_ message: @autoclosure () -> String) {
        if verbose { print("[stress] " + message()) }
    }

    /// After quiescence: every translation `mirror` holds is still what the CPU page table maps
    /// and no more permissive, and the space's audit finds no entry outside a VMA or beyond its
    /// protection and no freed or stranded table.
    static func expectMirrorCoherent(
        _ mirror: SoftwareMirror, with space: AddressSpace, sourceLocation: SourceLocation = #_sourceLocation
    ) {
        for (address, translation) in mirror.translations {
            guard let entry = space.translate(address), entry.isPresent, entry.frame == translation.frame else {
                Issue.record(
                    "mirror holds stale \(address.hex) -> \(translation.frame); CPU: \(String(describing: space.translate(address)))",
                    sourceLocation: sourceLocation)
                continue
            }
            #expect(!translation.writable || entry.isWritable, "mirror writable at \(address.hex), CPU read-only",
                sourceLocation: sourceLocation)
        }
        let audit = space.audit()
        #expect(audit.entriesOutsideVMAs == 0, sourceLocation: sourceLocation)
        #expect(audit.entriesExceedingProtection == 0, sourceLocation: sourceLocation)
        #expect(audit.deadTablesReached == 0 && audit.tablesInHoles == 0, "\(audit)", sourceLocation: sourceLocation)
    }

    /// A liveness watchdog only (a hang becomes a recorded failure instead of a stuck CI job); no
    /// outcome depends on it.
    static var watchdog: DispatchTime { .now() + .seconds(Int(max(600, 600 * scale))) }

    /// Runs every body on its own new thread. The threads are released together once all have
    /// started, and the call returns when all have finished. Returns `false` (after recording an
    /// issue) only if the liveness watchdog fired; the caller must then skip its final checks and
    /// leave shared objects alone, because threads are still running.
    @discardableResult
    static func run(
        _ name: String, _ bodies: [@Sendable () -> Void], sourceLocation: SourceLocation = #_sourceLocation
    ) -> Bool {
        let ready = DispatchSemaphore(value: 0)
        let go = DispatchSemaphore(value: 0)
        let done = DispatchSemaphore(value: 0)
        for (index, body) in bodies.enumerated() {
            let thread = Thread {
                ready.signal()
                go.wait()
                body()
                done.signal()
            }
            thread.name = "\(name)-\(index)"
            thread.stackSize = 8 << 20
            thread.start()
        }
        for _ in bodies { ready.wait() }
        for _ in bodies { go.signal() }
        let deadline = watchdog
        for _ in bodies {
            if done.wait(timeout: deadline) == .timedOut {
                Issue.record("\(name): threads did not finish (deadlock or livelock)", sourceLocation: sourceLocation)
                return false
            }
        }
        return true
    }

}

/// A value behind a lock that ThreadSanitizer understands. (`Synchronization.Mutex` on Linux hands
/// a contended lock over inside the kernel, through a priority-inheritance futex, in code TSan does
/// not instrument: TSan then misses the happens-before edge and reports races on data the mutex
/// protects. `NSLock` is a pthread mutex, which TSan intercepts.)
final class ConcurrentLocked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}

/// A lock-protected record of invariant violations seen by worker threads: a count and the first
/// few messages.
final class ConcurrentViolations: Sendable {
    private struct State {
        var count = 0
        var samples: [String] = []
    }

    private let state = ConcurrentLocked(State())
    private let limit: Int

    init(limit: Int = 20) { self.limit = limit }

    func record(_ message: @autoclosure () -> String) {
        let text = message()
        state.withLock { state in
            state.count += 1
            if state.samples.count < limit { state.samples.append(text) }
        }
    }

    var count: Int { state.withLock { $0.count } }
    var samples: [String] { state.withLock { $0.samples } }

    /// `#expect`s that nothing was recorded, listing the first messages otherwise.
    func expectNone(_ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let (count, samples) = state.withLock { ($0.count, $0.samples) }
        #expect(count == 0, "\(what): \(count) violation(s):\n\(samples.joined(separator: "\n"))",
            sourceLocation: sourceLocation)
    }
}

/// A countdown every thread of a phase decrements; one thread waits for zero.
final class ConcurrentCountdown: Sendable {
    private let remaining: Atomic<Int>
    init(_ count: Int) { remaining = Atomic(count) }
    /// Returns `true` for the caller that brought it to zero.
    @discardableResult
    func arrive() -> Bool { remaining.wrappingSubtract(1, ordering: .acquiringAndReleasing).newValue == 0 }
    var isDone: Bool { remaining.load(ordering: .acquiring) <= 0 }
}

/// Page-table checks shared by the suites.
enum ConcurrentPages {
    /// Checks that no page-table entry exists in `[start, end)` (after an unmap returned).
    static func expectNoEntries(
        _ space: AddressSpace, _ start: UInt64, _ end: UInt64, after what: String, _ violations: ConcurrentViolations
    ) {
        for page in eachPage(start, end) {
            if let entry = space.translate(page) {
                violations.record("entry \(entry.rawValue.hex) at \(page.hex) right after \(what)")
                return
            }
        }
    }

    /// Checks that no writable (and, for `PROT_NONE`, no present) entry exists in `[start, end)`
    /// (after an mprotect returned).
    static func expectProtected(
        _ space: AddressSpace, _ start: UInt64, _ end: UInt64, _ protection: Protection, after what: String,
        _ violations: ConcurrentViolations
    ) {
        for page in eachPage(start, end) {
            guard let entry = space.translate(page) else { continue }
            if !protection.contains(.write) && entry.isWritable {
                violations.record("writable entry \(entry.rawValue.hex) at \(page.hex) right after \(what)")
                return
            }
            if protection.isEmpty && entry.isPresent {
                violations.record("present entry \(entry.rawValue.hex) at \(page.hex) right after \(what)")
                return
            }
        }
    }
}
