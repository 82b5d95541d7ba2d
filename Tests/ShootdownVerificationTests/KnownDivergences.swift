@testable import ShootdownVerification

extension KnownDivergence {
    /// Every known divergence (see ``KnownDivergence``), found by the oracle on Linux 6.18 x86-64
    /// (THP madvise mode, no swap, unprivileged child). Owner "surface": the engine's Linux
    /// syscall surface.
    static let all: [KnownDivergence] = [
        // MADV_PAGEOUT of shared memory
        KnownDivergence(
            signatures: [
                "madvise(MADV_PAGEOUT) residency after EINVAL: engine resident, Linux not",
                "madvise(MADV_PAGEOUT) residency after ENOMEM: engine resident, Linux not",
                "madvise(MADV_PAGEOUT) residency after success: engine resident, Linux not",
            ],
            reproducer: [
                .mmap(.window(-0x19cb000), length: 0x200000, protection: 0x7, flags: 0x8021),  // PROT_READ|PROT_WRITE|PROT_EXEC, MAP_SHARED|MAP_ANONYMOUS|MAP_POPULATE
                .madvise(.window(-0x19cd000), length: 0xb1000, advice: 21),  // MADV_PAGEOUT
            ],
            note: "MADV_PAGEOUT reclaims clean shared (shmem) pages, those never written through any mapping and"
                + " mapped by this process only: mincore shows them absent afterwards (measured: read-faulted and"
                + " MADV_POPULATE_READ pages go, written ones and pages a fork child maps too stay; also when the"
                + " call fails later with EINVAL or ENOMEM). The engine pages out private memory only: its shared"
                + " object keeps no dirty state.",
            owner: "surface"),
        // a mapping that extends the executable's data VMA (the harness mirrors it as shared)
        KnownDivergence(
            signatures: [
                "mprotect mappings after success: flags Linux +ac",
            ],
            reproducer: [
                .mmap(.programBreak(0x0), length: 0x4000, protection: 0x3, flags: 0x32),  // PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_FIXED|MAP_ANONYMOUS
                .mprotect(.programBreak(0x2000), length: 0x1000, protection: 0x4),  // PROT_EXEC
            ],
            note: "A private mapping made right after the executable's data VMA (at the heap start) merges with it"
                + " in Linux and shares its anon_vma, so a later non-writable mprotect keeps ac. The harness mirrors"
                + " the child's initial mappings as shared anonymous memory, so in the engine nothing merges and the"
                + " VMA has no anon_vma: ac goes. A harness limitation (the engine's rule is Linux's), not analysed"
                + " further.",
            owner: "harness"),
        // a fork child's grown-by-move VMA merges with its neighbour in the engine only
        KnownDivergence(
            signatures: [
                "mremap mappings after success: layout",
            ],
            reproducer: [
                .mmap(.window(-0x780cb2), length: 0x400000, protection: 0x3, flags: 0x22),  // PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS
                .mremap(.window(-0x394000), oldLength: 0x200000, newLength: 0x3000, flags: 0x1, newAddress: .absolute(0x0)),  // MREMAP_MAYMOVE
                .mlock(.window(-0x42a000), length: 0x3b8000),
                .fork,
                .mremap(.window(-0x42a000), oldLength: 0x99000, newLength: 0x9d000, flags: 0x1, newAddress: .absolute(0x0)),  // MREMAP_MAYMOVE
            ],
            note: "In a fork child, a private VMA that mremap grows by moving it lands right after another VMA of"
                + " the child; Linux keeps the two apart, the engine merges them. Found by KernelOracleTests seed 6"
                + " once the shared-object size stopped its sessions earlier; not analysed yet (the child's"
                + " anon_vma identities or vm_pgoff after the earlier shrink are the suspects).",
            owner: "surface"),
    ]
}
