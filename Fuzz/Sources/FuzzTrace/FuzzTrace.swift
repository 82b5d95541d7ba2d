@_spi(Benchmarking) import Shootdown
import ShootdownVerification

/// libFuzzer entry point of the `trace` target: arbitrary bytes go through ``StraceReader`` and,
/// when they read as a log, through a ``Replayer``. Neither may trap; every error is typed and
/// names a line of the input (or says why the input is not text); every event's line is a line
/// of the input; after the replay every frame and swap slot is back. A violation is a finding
/// (`fatalError` with what went wrong).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTrace(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    // The line count the reader sees: one per newline, plus an unterminated last line.
    let lines = bytes.count { $0 == UInt8(ascii: "\n") } + (bytes.last.map { $0 == UInt8(ascii: "\n") ? 0 : 1 } ?? 1)
    let events: [TraceEvent]
    do throws(TraceError) {
        events = try StraceReader.events(inBytes: bytes)
    } catch {
        if case .malformedLine(let line, let reason) = error, !(1...lines).contains(line) || reason.isEmpty {
            fatalError("trace: malformed-line error names line \(line) of \(lines) (\(reason))")
        }
        return 0
    }
    for event in events where !(1...lines).contains(event.line) {
        fatalError("trace: event at line \(event.line) of \(lines): \(event)")
    }
    replay(events, lines: lines)
    return 0
}

/// Replays `events` on a small memory (populates past 16 MiB are not replayed), then checks the
/// accounting.
func replay(_ events: [TraceEvent], lines: Int) {
    let memory = PhysicalMemory(capacity: 8192, swapSlots: 256)
    do {
        let replayer = Replayer(
            options: Replayer.Options(touch: false, maximumLiveSpaces: 16, maximumPopulateBytes: 16 << 20),
            memory: memory)
        do throws(ReplayError) {
            let report = try replayer.replay(events)
            for mismatch in report.mismatches where !(1...lines).contains(mismatch.line) {
                fatalError("trace: mismatch names line \(mismatch.line) of \(lines): \(mismatch)")
            }
        } catch {
            switch error {
            case .spaceCreation(let line, _), .tooManyProcesses(let line, _):
                if !(1...lines).contains(line) { fatalError("trace: replay error names line \(line) of \(lines): \(error)") }
            case .finished:
                fatalError("trace: replay refused an event before it finished")
            }
            _ = replayer.finish()
        }
    }
    // Frames of reclaimed VMAs, tables and objects come back after a grace period: wait for
    // one (rcu_barrier, tens of milliseconds) only when something is still out.
    if memory.framesInUse != 0 || memory.swap.slotsInUse != 0 { BenchmarkSupport.drainDeferredReclamation() }
    if memory.framesInUse != 0 || memory.swap.slotsInUse != 0 {
        fatalError("trace: after the replay \(memory.framesInUse) frames and \(memory.swap.slotsInUse) swap slots in use")
    }
}
