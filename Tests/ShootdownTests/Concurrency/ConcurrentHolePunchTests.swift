import Synchronization
import Testing

@testable import Shootdown

/// MADV_REMOVE in one space racing faults in another space that maps the same shared object
/// (a fork's parent and child). A fault that took a page from the object's cache just before the
/// punch dropped it must not install it after the punch zapped its table: it rechecks the cache
/// under the split lock. Without the recheck (or without the cross-space zap) the parent keeps an
/// entry to a frame the object no longer holds and reads an old token.
///
/// The child punches one page and writes round `k` to it; the parent's readers fault the page in
/// all along (through the CPU table and a mirror). Check: after each punch-and-write, the parent
/// and its mirror read `k` (the page is not written again before the check).
@Suite("ConcurrentHolePunch")
struct ConcurrentHolePunchTests {
    static let base: UInt64 = 0x50_0000_0000

    @Test func holePunchInChildNeverLeavesAStaleEntryInTheParent() throws {
        let memory = PhysicalMemory(capacity: 4096)
        let parent = try AddressSpace(memory: memory)
        try parent.map(length: AddressSpace.pageSize, placement: .fixed(Self.base), options: .shared)
        try parent.write(1, at: Self.base)
        let mirror = try SoftwareMirror(space: parent, start: Self.base, length: AddressSpace.pageSize)
        let child = try parent.fork()
        let rounds = ConcurrentHarness.iterations(20_000, minimum: 500)
        let violations = ConcurrentViolations()
        let done = SharedFlag()

        var bodies: [@Sendable () -> Void] = [{
            defer { done.set() }
            for round in 2...rounds {
                let token = UInt64(round)
                do {
                    try child.advise(address: Self.base, length: AddressSpace.pageSize, advice: .remove)
                    try child.write(token, at: Self.base)
                    let seen = try parent.read(at: Self.base)
                    if seen != token { violations.record("round \(round): the parent read \(seen)") }
                    let mirrored = try mirror.read(at: Self.base)
                    if mirrored != token { violations.record("round \(round): the parent's mirror read \(mirrored)") }
                } catch {
                    violations.record("puncher: \(error)")
                }
            }
        }]
        for reader in 0..<2 {
            bodies.append {
                while !done.isSet {
                    do {
                        if reader == 0 { _ = try parent.read(at: Self.base) } else { _ = try mirror.read(at: Self.base) }
                    } catch {
                        violations.record("reader \(reader): \(error)")
                    }
                }
            }
        }
        guard ConcurrentHarness.run("hole-punch", bodies) else { return }
        violations.expectNone("hole punch")
        mirror.detach()
        child.teardown()
        parent.teardown()
        RCU.barrier()
        #expect(memory.framesInUse == 0)
    }
}
