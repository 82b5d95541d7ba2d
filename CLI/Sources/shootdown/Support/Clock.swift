@_spi(Benchmarking) import Shootdown
import Foundation

/// Monotonic nanoseconds (CLOCK_MONOTONIC through the vDSO).
@inline(__always)
func nowNanoseconds() -> UInt64 { BenchmarkSupport.nanoseconds() }

/// Whether the user pressed Ctrl-C: long runs stop at the next safe point and report what they
/// measured so far (a second Ctrl-C exits at once).
var interrupted: Bool { BenchmarkSupport.interrupted }

/// Whether progress lines go to stderr.
nonisolated(unsafe) var progressEnabled = true

/// Progress on stderr (never on stdout, which carries the results).
func progress(_ message: String) {
    guard progressEnabled else { return }
    FileHandle.standardError.write(Data((message + "\n").utf8))
}
