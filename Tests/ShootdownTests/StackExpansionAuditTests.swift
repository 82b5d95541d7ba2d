import Shootdown
import Testing

/// A grows-down VMA that expands on a fault until it touches the VMA below it is not merged with
/// it, even when the two could merge: Linux 6.18 leaves both (measured: two `MAP_GROWSDOWN`
/// mappings at X and X - 2 pages, a store at X - 1 page; /proc/self/maps then lists
/// `fffffe000-ffffff000` and `ffffff000-1000001000` separately). The audit counted that pair as
/// unmerged neighbours, a violation, so the torture harness failed on a state Linux produces.
@Suite struct StackExpansionAuditTests {
    @Test func stackExpandedUpToAGrowsDownNeighbourIsNotAnUnmergedNeighbour() throws {
        let space = try AddressSpace()
        defer { space.teardown() }
        let stack: UInt64 = 0x10_0000_0000
        try space.map(length: 4096, placement: .fixed(stack), options: [.growsDown])
        try space.map(length: 4096, placement: .fixed(stack - 2 * 4096), options: [.growsDown])
        try space.write(1, at: stack - 4096)
        #expect(space.mappings().map { [$0.start, $0.end] } == [
            [stack - 2 * 4096, stack - 4096], [stack - 4096, stack + 4096],
        ])
        #expect(space.audit().unmergedNeighbours == 0)
    }
}
