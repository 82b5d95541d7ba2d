import Testing

@testable import Shootdown

private let p = NotifierTestConstants.page
private let base = NotifierTestConstants.base

/// A device access racing the space's teardown. Teardown marks the space dead before it releases
/// the subscribers, so a mirror still holds its translations for a moment; a device access that
/// passed the liveness check then found no table and threw `badAddress`, which `SoftwareMirror`
/// (rightly) treats as a missed invalidation and traps on. It must throw `addressSpaceDead`.
@Suite(.serialized) struct DeviceAccessTeardownTests {
    @Test(arguments: [false, true])
    func deviceAccessRacingTeardownReportedAStaleTranslation(write: Bool) throws {
        let memory = PhysicalMemory(capacity: 64, swapSlots: 0)
        let space = try AddressSpace(memory: memory)
        try space.map(length: p, placement: .fixed(base))
        try space.write(1, at: base)
        let frame = try #require(space.translate(base)?.number)
        let tornDown = SharedFlag()
        TestHooks.arm(.deviceAccessAfterAliveCheck) {
            // "The other thread": teardown runs between the liveness check and the access.
            space.teardown()
            tornDown.set()
        }
        defer { TestHooks.disarm(.deviceAccessAfterAliveCheck) }
        #expect(throws: MemoryError.addressSpaceDead) {
            if write { try space.deviceWrite(2, at: base, frame: frame) } else { _ = try space.deviceRead(at: base, frame: frame) }
        }
        #expect(tornDown.isSet)
        #expect(memory.framesInUse == 0)
    }
}
