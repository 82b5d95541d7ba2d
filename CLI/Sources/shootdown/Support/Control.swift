@_spi(Benchmarking) import Shootdown
import Synchronization

/// The interleaved control of every multi-threaded benchmark: the same number of threads, pinned
/// the same way (``runOnThreads(_:pinned:_:)``), running a trivially parallel loop over private
/// memory, measured with 1 thread and with N threads in each round of the benchmark. On an idle
/// machine with N free cores the control scales by N; what it loses on a shared or virtual machine
/// (a busy sibling vCPU, a stolen core, frequency changes) the benchmark loses too, so a
/// benchmark's `scaling` over the control's (`scaling_vs_control`) is the part of the loss that is
/// the engine's. Each control measurement lasts about as long as the benchmark's (the number of
/// passes is calibrated once, from the first round's duration), so both are exposed to the same
/// preemptions of a shared host. Needs no lock: each thread touches only its own buffer.
struct ControlRounds {
    /// Words of each thread's private buffer (1 MiB: past a core's L2, as the benchmarks' tables
    /// and frames are; never shared).
    static let words = 131_072
    /// Passes over the buffer per measurement: calibrated by the first ``measure(matching:)``.
    private(set) var passes = 0

    /// Words processed per second, one thread, per round.
    private(set) var single: [Double] = []
    /// Words processed per second, all threads together, per round.
    private(set) var multi: [Double] = []
    let threads: Int

    init(threads: Int) { self.threads = max(threads, 1) }

    /// Measures one round: 1 thread, then `threads` threads, each about `nanoseconds` long (the
    /// benchmark's own measurement of the round; used to calibrate the first round only).
    mutating func measure(matching nanoseconds: Double) {
        if passes == 0 {
            let probe = 4
            let rate = Self.rate(threads: 1, passes: probe)  // words per second
            let perPass = rate > 0 ? Double(Self.words) / rate * 1e9 : 0  // ns per pass
            passes = perPass > 0 ? min(max(Int(nanoseconds / perPass), 4), 100_000) : 64
        }
        single.append(Self.rate(threads: 1, passes: passes))
        multi.append(threads > 1 ? Self.rate(threads: threads, passes: passes) : single.last!)
    }

    /// Median over rounds of each round's N-thread rate over its 1-thread rate (N when perfect).
    var scaling: Double {
        Summary(zip(multi, single).map { $1 > 0 ? $0 / $1 : 0 }).median
    }

    /// ``scaling`` per thread (1 when perfect): the control figure for benchmarks whose `scaling`
    /// is what one thread keeps while the others run (contention, shootdown).
    var retained: Double { scaling / Double(threads) }

    /// `scaling` (the benchmark's), `control_scaling` and `scaling_vs_control` (their ratio).
    /// `perThread`: the control figure is ``retained`` instead of ``scaling``.
    func metrics(scaling: Double, perThread: Bool = false) -> [(String, Double)] {
        let control = perThread ? retained : self.scaling
        return [("scaling", scaling), ("control_scaling", control),
                ("scaling_vs_control", control > 0 ? scaling / control : .nan)]
    }

    /// Words per second of `threads` pinned threads each making ``passes`` passes over its own
    /// buffer, from the first thread's start to the last one's end.
    static func rate(threads: Int, passes: Int) -> Double {
        let line = SpinningStartLine(parties: threads)
        let startTime = Atomic<UInt64>(0)
        let finish = Atomic<UInt64>(0)
        let sink = Atomic<UInt64>(0)
        runOnThreads(threads, pinned: true) { _ in
            // Allocated and touched before the start line: the timed loop allocates nothing.
            let buffer = UnsafeMutablePointer<UInt64>.allocate(capacity: words)
            buffer.initialize(repeating: 1, count: words)
            defer { buffer.deallocate() }
            line.arriveAndWait()
            _ = startTime.compareExchange(expected: 0, desired: nowNanoseconds(), ordering: .relaxed)
            let sum = controlPasses(buffer, words: words, passes: passes)
            let end = nowNanoseconds()
            sink.wrappingAdd(sum, ordering: .relaxed)
            recordLatest(end, in: finish)
        }
        let elapsed = finish.load(ordering: .relaxed) &- startTime.load(ordering: .relaxed)
        guard elapsed > 0 else { return 0 }
        return Double(threads * words * passes) * 1e9 / Double(elapsed)
    }
}

/// The control's hot loop: `passes` passes over `buffer`, each reading and rewriting every word
/// (a private read-modify-write stream, no sharing). Returns a sum so nothing is optimised away.
@inline(never)
func controlPasses(_ buffer: UnsafeMutablePointer<UInt64>, words: Int, passes: Int) -> UInt64 {
    var sum: UInt64 = 0
    for pass in 0..<passes {
        let salt = UInt64(truncatingIfNeeded: pass)
        for index in 0..<words {
            let value = buffer[index] &* 0x9E37_79B9_7F4A_7C15 &+ salt
            buffer[index] = value
            sum &+= value >> 7
        }
    }
    return sum
}

/// Raises `latest` to `time` if it is later (the end of a multi-threaded measurement).
func recordLatest(_ time: UInt64, in latest: borrowing Atomic<UInt64>) {
    var seen = latest.load(ordering: .relaxed)
    while time > seen {
        let exchange = latest.compareExchange(expected: seen, desired: time, ordering: .relaxed)
        if exchange.exchanged { break }
        seen = exchange.original
    }
}
