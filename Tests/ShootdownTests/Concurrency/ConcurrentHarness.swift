import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// Shared machinery of the `Concurrent*` stress suites: real threads released together, a bounded
/// scale factor, a deterministic per-thread PRNG and a lock-protected violation log.
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

    /// Starts one thread running `body` and returns a semaphore signalled when it has finished.
    static func spawn(_ name: String, _ body: @escaping @Sendable () -> Void) -> DispatchSemaphore {
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            body()
            done.signal()
        }
        thread.name = name
        thread.stackSize = 8 << 20
        thread.start()
        return done
    }

    /// Waits for a semaphore under the liveness watchdog; records an issue and returns `false` if
    /// it fired.
    static func join(
        _ done: DispatchSemaphore, _ what: String, sourceLocation: SourceLocation = #_sourceLocation
    ) -> Bool {
        if done.wait(timeout: watchdog) == .timedOut {
            Issue.record("\(what): did not finish (deadlock or livelock)", sourceLocation: sourceLocation)
            return false
        }
        return true
    }
}

/// A deterministic generator per thread (``SplitMix64`` with the seed spread out, so threads
/// seeded 0, 1, 2 … draw unrelated streams), with `Int` helpers.
struct ConcurrentRandom: RandomNumberGenerator {
    private var base: SplitMix64

    init(seed: UInt64) { base = SplitMix64(seed: seed &* 0x9E37_79B9_7F4A_7C15 &+ 0xD1B5_4A32_D192_ED03) }

    mutating func next() -> UInt64 { base.next() }

    /// Uniform in `0 ..< bound`.
    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }

    /// Uniform in `range`.
    mutating func within(_ range: ClosedRange<Int>) -> Int { range.lowerBound + below(range.count) }

    /// True with probability `percent` / 100.
    mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
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

extension UInt64 {
    /// Hexadecimal, for messages.
    var hex: String { "0x" + String(self, radix: 16) }
}

/// Page helpers shared by the suites.
enum ConcurrentPages {
    static let size = AddressSpace.pageSize

    /// The page-aligned addresses of `[start, end)`.
    static func pages(_ start: UInt64, _ end: UInt64) -> StrideTo<UInt64> {
        stride(from: start, to: end, by: Int(size))
    }

    /// Checks that no page-table entry exists in `[start, end)` (after an unmap returned).
    static func expectNoEntries(
        _ space: AddressSpace, _ start: UInt64, _ end: UInt64, after what: String, _ violations: ConcurrentViolations
    ) {
        for page in pages(start, end) {
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
        for page in pages(start, end) {
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
