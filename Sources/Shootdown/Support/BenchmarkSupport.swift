import CInterop

/// Hooks for the benchmark CLI, the perf gate and test harnesses: a monotonic clock, CPU pinning,
/// profiling regions and Ctrl-C handling. Not part of the library's API: reach them with
/// `@_spi(Benchmarking) import Shootdown`.
@_spi(Benchmarking)
public enum BenchmarkSupport {
    /// `CLOCK_MONOTONIC` in nanoseconds (through the vDSO).
    @inlinable @inline(__always)
    public static func nanoseconds() -> UInt64 { cinterop_monotonic_ns() }

    /// A spin-wait hint (`pause` on x86).
    @inlinable @inline(__always)
    public static func cpuRelax() { cinterop_cpu_relax() }

    /// Pins the calling thread to the `index`-th allowed CPU (modulo their number). Returns whether
    /// it did (false with one allowed CPU).
    @discardableResult
    public static func pinCurrentThread(to index: Int) -> Bool { cinterop_pin_thread(UInt32(truncatingIfNeeded: index)) }

    /// Whether callgrind client requests were compiled in (valgrind's headers at build time).
    public static var profileHooksAvailable: Bool { cinterop_profile_hooks_available() }

    /// Starts a callgrind-counted region (resets its counters); a no-op outside callgrind.
    public static func profileRegionBegin() { cinterop_profile_region_begin() }

    /// Ends a callgrind-counted region (dumps its counters).
    public static func profileRegionEnd() { cinterop_profile_region_end() }

    /// Installs a SIGINT handler that sets ``interrupted``.
    public static func installInterruptHandler() { cinterop_install_interrupt_handler() }

    /// Whether SIGINT arrived since ``installInterruptHandler()``.
    public static var interrupted: Bool { cinterop_interrupted() }

    /// Waits for a grace period of the domain that protects VMAs and page tables (memb RCU).
    public static func synchronizeRCU() { RCU.synchronize() }

    /// Waits until every deferred reclamation queued so far has run (`rcu_barrier`).
    public static func drainDeferredReclamation() { RCU.barrier() }

    /// Waits for a grace period of the notifier domain (the sleepable one every space's notifier
    /// list uses).
    public static func synchronizeNotifierDomain() { SleepableRCU.notifiers.synchronize() }
}
