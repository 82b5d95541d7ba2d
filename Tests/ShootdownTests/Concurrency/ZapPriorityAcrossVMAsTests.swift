import CInterop
import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// Writer priority across VMAs: a first fix of the guard-installation/hole-punch deadlocks let an
/// edit's entries after its first VMA skip writer priority ("nested"). Every zap over more than
/// one VMA (MADV_DONTNEED/FREE/PAGEOUT/REMOVE over a range that spans VMAs, migrate, the hole
/// punch's zaps of the object's other mappings) is such an edit, so the starvation that
/// `guardInstallationIsNotStarvedByZapsOfItsVMA` was written against came back for zaps whose
/// range starts in the VMA before (found by an outside review). Edits now enter zap sections in
/// address order and every entry keeps writer priority.
@Suite(.serialized)
struct ZapPriorityAcrossVMAsTests {
    static let page = AddressSpace.pageSize

    /// X = [base, base + 4 pages) read-only, B = [base + 4, base + 68 pages) read-write: two
    /// VMAs that cannot merge; B's pages written.
    static func twoVMAs() throws -> (PhysicalMemory, AddressSpace, UInt64, VMA) {
        let memory = PhysicalMemory(capacity: 4096, swapSlots: 64)
        let space = try AddressSpace(memory: memory)
        let page = Self.page
        let base = try space.map(length: 68 * page)
        for address in eachPage(base + 4 * page, base + 68 * page) { try space.write(1, at: address) }
        try space.protect(address: base, length: 4 * page, protection: .read)
        #expect(space.mappings().count == 2)
        let b = try #require(space.index.find(containing: base + 4 * page))
        return (memory, space, base, b)
    }

    /// Same shape as `guardInstallationIsNotStarvedByZapsOfItsVMA`, but the second zap's range
    /// starts one VMA lower: zap A is held inside B, the guard installation on B waits for it,
    /// and zap B2 (DONTNEED over X and part of B) must then wait for the installation. With the
    /// nested bypass it entered B and finished while the writer was still waiting.
    @Test func zapSpanningTwoVMAsGoesAheadOfAWaitingGuardInstallation() throws {
        let (memory, space, base, b) = try Self.twoVMAs()
        let page = Self.page
        // The second zap: X (no writer waits on X), then pages 8..11 of the mapping in B.
        ConcurrentDontNeedTests.expectZapWaitsForWaitingGuardInstallation(
            space, memory, b, held: (base + 4 * page, 4 * page), guardPage: base + 40 * page, second: (base, 12 * page))
    }

    /// A DONTNEED over A and B (in address order) held inside A, a hole punch in B held inside its
    /// zap, a guard installation waiting on each VMA. Released, everything must finish: the punch
    /// entered A's and B's sections up front, in address order, so no wait closes a ring.
    @Test func inOrderZapAndOutOfOrderPunchCrossingWithWaitingWritersFinish() throws {
        let page = Self.page
        try ConcurrentGuardAndHolePunchTests.expectCrossingWithWaitingWritersFinishes(
            first: ("dontneed A-B", 0, 8 * page, .dontNeed), second: ("remove B", 4 * page, 4 * page, .remove))
    }
}
