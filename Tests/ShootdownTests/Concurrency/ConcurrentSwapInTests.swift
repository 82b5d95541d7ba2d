import Synchronization
import Testing

@testable import Shootdown

/// Swap-in racing page-out with real threads (review finding 2): one writer writes increasing
/// tokens to one page and pages it out after every write (one page keeps every thread on the
/// same swap entry, which made the race show within a second), readers fault the pages back in.
/// Swap slots are reused last-in-first-out, so a swap-in that read a slot's token before
/// validating its entry could install an older token into a bit-identical entry.
///
/// Checks: every reader sees each page's tokens in non-decreasing order (page-out and swap-in
/// carry content, so an older token after a newer one is a lost write); the writer reads back what
/// it wrote; at the end every frame and swap slot is returned.
@Suite("ConcurrentSwapIn")
struct ConcurrentSwapInTests {
    static let pages = 1
    static let base: UInt64 = 0x50_0000_0000

    static func address(_ page: Int) -> UInt64 { base + UInt64(page) * AddressSpace.pageSize }

    @Test func swapInLostWritesThroughSwapSlotReuse() throws {
        let memory = PhysicalMemory(capacity: 4096, swapSlots: 16)
        let space = try AddressSpace(memory: memory)
        try space.map(length: UInt64(Self.pages) * AddressSpace.pageSize, placement: .fixed(Self.base))
        let rounds = ConcurrentHarness.iterations(20_000, minimum: 500)
        let violations = ConcurrentViolations()
        let done = SharedFlag()

        var bodies: [@Sendable () -> Void] = [{
            defer { done.set() }
            for round in 1...rounds {
                let page = round % Self.pages
                let token = UInt64(round)
                do {
                    try space.write(token, at: Self.address(page))
                    try space.advise(address: Self.address(page), length: AddressSpace.pageSize, advice: .pageOut)
                    let back = try space.read(at: Self.address(page))
                    if back != token { violations.record("writer wrote \(token) to page \(page), read back \(back)") }
                } catch {
                    violations.record("writer: \(error)")
                }
            }
        }]
        for reader in 0..<3 {
            bodies.append {
                var seen = [UInt64](repeating: 0, count: Self.pages)
                var page = reader
                while !done.isSet {
                    page = (page + 1) % Self.pages
                    guard let value = try? space.read(at: Self.address(page)) else {
                        violations.record("reader \(reader): read failed")
                        return
                    }
                    if value < seen[page] {
                        violations.record("reader \(reader): page \(page) went back from \(seen[page]) to \(value)")
                    }
                    seen[page] = max(seen[page], value)
                }
            }
        }
        guard ConcurrentHarness.run("swap-in", bodies) else { return }
        violations.expectNone("lost writes")
        let statistics = space.statistics
        ConcurrentHarness.report("swap-in: \(statistics[.swapInFaults]) swap-ins, \(statistics[.pagesSwappedOut]) page-outs")
        #expect(statistics[.swapInFaults] > 0)
        space.teardown()
        #expect(memory.framesInUse == 0 && memory.swap.slotsInUse == 0)
    }
}
