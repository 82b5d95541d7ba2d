import Testing
@testable import Shootdown

@Suite struct SmokeTests {
    @Test func mapFaultUnmap() throws {
        let memory = PhysicalMemory(capacity: 4096)
        let space = try AddressSpace(memory: memory)
        let base = try space.map(length: 64 * 4096)
        #expect(space.mappings().count == 1)
        for page in 0..<64 { try space.fault(at: base + UInt64(page) * 4096, access: .write) }
        #expect(space.translate(base)?.isWritable == true)
        #expect(memory.framesInUse == 64)
        let stats = space.statistics
        #expect(stats[.speculativeFaults] == 64)
        try space.unmap(address: base, length: 64 * 4096)
        #expect(space.translate(base) == nil)
        #expect(memory.framesInUse == 0)
        let audit = space.audit()
        #expect(audit.entriesOutsideVMAs == 0 && audit.deadTablesReached == 0)
        space.teardown()
    }
}
