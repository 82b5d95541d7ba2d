import Foundation

/// Runs `body(index)` on `count` new threads and waits for all of them. Thread bodies are plain
/// functions in this file's module, never top-level code in main.swift (pitfall P1).
func runOnThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let done = DispatchSemaphore(value: 0)
    for index in 0..<count {
        let thread = Thread {
            body(index)
            done.signal()
        }
        thread.stackSize = 1 << 20
        thread.start()
    }
    for _ in 0..<count { done.wait() }
}

/// A reusable start line: `count` parties wait until all arrived.
final class StartLine: @unchecked Sendable {
    private let lock = NSCondition()
    private var waiting = 0
    private let parties: Int

    init(parties: Int) { self.parties = parties }

    func arriveAndWait() {
        lock.lock()
        waiting += 1
        if waiting == parties { lock.broadcast() }
        while waiting < parties { lock.wait() }
        lock.unlock()
    }
}
