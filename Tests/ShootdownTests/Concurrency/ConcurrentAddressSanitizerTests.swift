import CInterop
import Testing
@testable import Shootdown

/// Page-table blocks come from arenas, not malloc, so AddressSanitizer would not notice a block
/// used after it was freed unless the allocator poisons it. These tests show it does: once the
/// grace period after an munmap has passed, the detached blocks are poisoned, so any walker that
/// still touched them (a table freed too early) would be reported. Meaningful in the ASan job;
/// skipped elsewhere.
@Suite(.enabled(if: cinterop_asan_enabled(), "only under AddressSanitizer"))
struct ConcurrentAddressSanitizerTests {
    @Test func freedTableBlocksArePoisonedAfterTheGracePeriod() throws {
        let space = try AddressSpace(memory: PhysicalMemory(capacity: 4096))
        let base = try space.map(length: 2 << 20, placement: .fixed(0x4000_0000))
        try space.fault(at: base, access: .write)
        let table = try #require(RCU.withReadSection { space.pageTable.lookup(base)?.table })
        #expect(!cinterop_asan_is_poisoned(table.base))
        try space.unmap(address: base, length: 2 << 20)
        // Still readable by lockless walkers until the grace period ends...
        RCU.barrier()
        // ...and poisoned afterwards.
        #expect(cinterop_asan_is_poisoned(table.base))
        space.teardown()
    }
}
