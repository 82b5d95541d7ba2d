import Synchronization
import CInterop

/// Adaptive waiting for slow paths: spin with `pause`, then yield, then sleep with exponential
/// back-off capped at one millisecond. Used only where a waiter has nothing better to do (grace
/// periods, contended spin locks); never as a way to synchronise tests.
@usableFromInline
struct Backoff {
    @usableFromInline var round = 0

    @inlinable init() {}

    /// Waits a little longer than the previous call.
    @usableFromInline
    mutating func wait() {
        round += 1
        if round <= 64 {
            for _ in 0..<(1 << min(round, 6)) { cinterop_cpu_relax() }
        } else if round <= 80 {
            cinterop_yield()
        } else {
            let exponent = min(round - 80, 7)
            cinterop_sleep_ns(UInt64(8_000) << UInt64(exponent))  // 16 µs ... 1 ms
        }
    }
}
