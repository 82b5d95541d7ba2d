@_spi(Benchmarking) import Shootdown
import Foundation
import Synchronization

/// Runs `body(index)` on `count` new threads and waits for all of them. Thread bodies are plain
/// functions in this file's module, never top-level code in main.swift (pitfall P1).
///
/// `pinned`: thread `index` runs only on the `index`-th allowed CPU. Measurements pin: new threads
/// often start on their creator's CPU and share it for milliseconds before the scheduler moves
/// one, which on a 12 ms run reads as poor scaling (seen as 1.3-1.5x rounds among 1.95x ones).
func runOnThreads(_ count: Int, pinned: Bool = false, _ body: @escaping @Sendable (Int) -> Void) {
    let done = DispatchSemaphore(value: 0)
    for index in 0..<count {
        let thread = Thread {
            if pinned { _ = BenchmarkSupport.pinCurrentThread(to: index) }
            body(index)
            done.signal()
        }
        thread.stackSize = 1 << 20
        thread.start()
    }
    for _ in 0..<count { done.wait() }
}

/// A start line whose parties spin instead of sleeping, so they are all running when the last one
/// arrives: waking a sleeping thread can take milliseconds on a virtual machine, which would
/// measure the hypervisor instead of the workload. Single use.
final class SpinningStartLine: @unchecked Sendable {
    private let arrived = Atomic<Int>(0)
    private let parties: Int

    init(parties: Int) { self.parties = parties }

    func arriveAndWait() {
        // Acquiring and releasing: everything before the line happens before everything after it.
        arrived.wrappingAdd(1, ordering: .acquiringAndReleasing)
        while arrived.load(ordering: .acquiring) < parties { BenchmarkSupport.cpuRelax() }
    }
}
