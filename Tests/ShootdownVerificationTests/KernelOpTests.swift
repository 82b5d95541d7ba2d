import Foundation
import Testing
@testable import ShootdownVerification

@Suite struct KernelOpTests {
    let layout = TestLayout.layout

    @Test func addressesResolveAgainstTheLayout() {
        #expect(KernelAddress.window(-0x3000).resolved(in: layout) == TestLayout.windowTop - 0x3000)
        #expect(KernelAddress.programBreak(0x2000).resolved(in: layout) == 0x5555_5556_2000)
        #expect(KernelAddress.absolute(0x1000).resolved(in: layout) == 0x1000)
        #expect(KernelAddress.describing(TestLayout.windowTop - 0x5000, in: layout) == .window(-0x5000))
        #expect(KernelAddress.describing(0x1000, in: layout) == .absolute(0x1000))
    }

    @Test func literalsAreSwiftWithDecodedFlags() {
        let op = KernelOp.mmap(.window(-0x2000), length: 0x2000, protection: 3, flags: 0x22)
        #expect(op.description == ".mmap(.window(-0x2000), length: 0x2000, protection: 0x3, flags: 0x22)  // PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS")
        #expect(KernelOp.madvise(.absolute(0x1000), length: 0, advice: 4).description.hasSuffix("// MADV_DONTNEED"))
        #expect([op, .fork].swiftLiteral == """
            [
                .mmap(.window(-0x2000), length: 0x2000, protection: 0x3, flags: 0x22),  // PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS
                .fork,
            ]
            """)
    }

    @Test func codableRoundTrip() throws {
        let ops: [KernelOp] = [
            .mmap(.window(-0x2000), length: 0x2000, protection: 3, flags: 0x22), .munmap(.absolute(0), length: 1),
            .mremap(.programBreak(4096), oldLength: 1, newLength: 2, flags: 3, newAddress: .window(-1)),
            .read(.window(-0x1000)), .write(.window(-0x1000), value: 7), .fork, .switchProcess(2), .munlockall,
            .mincore(.window(-0x4000), length: 0x4000),
        ]
        let data = try JSONEncoder().encode(ops)
        #expect(try JSONDecoder().decode([KernelOp].self, from: data) == ops)
    }

    @Test func coverageKeysNameTheAdvice() {
        #expect(KernelOp.madvise(.absolute(0), length: 0, advice: 102).coverageKey == "madvise(MADV_GUARD_INSTALL)")
        #expect(KernelOp.madvise(.absolute(0), length: 0, advice: 999).coverageKey == "madvise(unknown)")
    }

    @Test(arguments: [
        KernelOp.munmap(.window(-0x1000), length: 0x2000),  // into the guard filler
        .mprotect(.absolute(0x7fff_fffd_e000), length: 0x1000, protection: 0),  // the stack
        .madvise(.window(-0x10000), length: 0x7fff_0000_0000, advice: 4),  // through the cluster
        .mmap(.absolute(0x5555_5555_4000), length: 0x1000, protection: 3, flags: 0x32),  // MAP_FIXED over the executable
        .mremap(.window(-0x4000), oldLength: 0x1000, newLength: 0x1000, flags: 3, newAddress: .absolute(0x7fff_fffd_e000)),
        .mlock(.window(-0x1), length: 0x2000),  // rounded down, reaches the filler
        .write(.absolute(0x5555_5555_5000), value: 1),
        .msync(.absolute(0x1000_0000_0000), length: 0x1000, flags: 1),
    ])
    func unsafeOperationsAreRefused(_ op: KernelOp) {
        #expect(op.unsafeReason(in: layout) != nil)
    }

    @Test(arguments: [
        KernelOp.munmap(.window(-0x2000), length: 0x2000),
        .mmap(.absolute(0x5555_5555_4000), length: 0x1000, protection: 3, flags: 0x100022),  // NOREPLACE never replaces
        .mmap(.absolute(0), length: UInt64.max, protection: 3, flags: 0x22),  // non-fixed: free space only
        .munmap(.window(-0x2000), length: UInt64.max),  // wraps: rejected before anything happens
        .mprotect(.absolute(0x7fff_ffff_f000), length: 0x1000, protection: 0),  // past TASK_SIZE, no mapping
        .mincore(.absolute(0), length: 0x7fff_ffff_f000),  // reads only
        .brk(.absolute(0)), .fork, .switchProcess(1), .mlockall(flags: 1),
    ])
    func safeOperationsAreAllowed(_ op: KernelOp) {
        #expect(op.unsafeReason(in: layout) == nil)
    }
}
