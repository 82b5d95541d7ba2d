import Foundation
import ShootdownVerification  // not @testable: the README's replay example uses public API only
import Testing

/// The README's replay example (Replaying real programs), verbatim, on a committed trace.
@Suite struct ReplayReadmeExampleTests {
    @Test func replayExample() throws {
        let log = try RecordedTraceTests.text("maps-snapshot.strace")
        let maps = try RecordedTraceTests.text("maps-snapshot.maps")
        // --- README: begin ---
        // log: the strace text; maps: the saved /proc/PID/maps text.
        let report = try Replayer().replay(StraceReader.events(in: log))
        print(report.summary())  // calls by name, mismatches with their line numbers
        if let space = report.space() {  // the first process's last address space
            let comparison = MapsComparison(engine: space.mappings, linux: try MapsLine.parse(maps), known: space.known)
            print(comparison.summary())  // equal, or the differences
        }
        // --- README: end ---
        #expect(report.mismatches.isEmpty && report.replayed == 28)
        let space = try #require(report.space())
        #expect(MapsComparison(engine: space.mappings, linux: try MapsLine.parse(maps), known: space.known).matches)
    }
}
