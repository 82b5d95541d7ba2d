import Dispatch
import Foundation
import Testing

@testable import Shootdown

// Small helpers every suite uses: messages, page walks, helper threads.

extension UInt64 {
    /// Hexadecimal with a `0x` prefix, for messages.
    var hex: String { "0x" + String(self, radix: 16) }
}

/// The page-aligned addresses of `[start, end)` (both page-aligned).
func eachPage(_ start: UInt64, _ end: UInt64) -> StrideTo<UInt64> {
    stride(from: start, to: end, by: Int(AddressSpace.pageSize))
}

/// A thread running `body` (named, with an 8 MiB stack); ``join(_:sourceLocation:)`` waits for it.
final class TestThread: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)

    init(_ name: String = "test-thread", _ body: @escaping @Sendable () -> Void) {
        let done = self.done
        let thread = Thread {
            body()
            done.signal()
        }
        thread.name = name
        thread.stackSize = 8 << 20
        thread.start()
    }

    /// Waits for the thread under the liveness watchdog (``ConcurrentHarness/watchdog``: a
    /// deadlocked engine fails the test instead of stalling the run). Records an issue and returns
    /// `false` if it fired; the caller must then leave shared objects alone.
    @discardableResult
    func join(_ what: String = "thread", sourceLocation: SourceLocation = #_sourceLocation) -> Bool {
        if done.wait(timeout: ConcurrentHarness.watchdog) == .timedOut {
            Issue.record("\(what): did not finish (deadlock or livelock)", sourceLocation: sourceLocation)
            return false
        }
        return true
    }

    /// Waits at most `seconds` (a guard against a hang, not a timing assertion). A successful wait
    /// consumes the thread's completion: do not join it again.
    func join(within seconds: Double) -> Bool { done.wait(timeout: .now() + seconds) == .success }
}
