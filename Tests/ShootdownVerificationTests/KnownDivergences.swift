@testable import ShootdownVerification

extension KnownDivergence {
    /// Every known divergence (see ``KnownDivergence``), found by the oracle on Linux 6.18 x86-64
    /// (THP madvise mode, no swap, unprivileged child). Owner "surface": the engine's Linux
    /// syscall surface.
    static let all: [KnownDivergence] = [
        // shared memory has a size
        KnownDivergence(
            signatures: [
                "mlock outcome: Linux ENOMEM, engine success",
                "mlock2 outcome: Linux ENOMEM, engine success",
                "mlock residency after ENOMEM: engine resident, Linux not",
                "mremap residency after success: engine resident, Linux not",
                "madvise(MADV_POPULATE_READ) outcome: Linux EFAULT, engine success",
                "madvise(MADV_POPULATE_WRITE) outcome: Linux EFAULT, engine success",
                "read outcome: Linux SIGBUS, engine loaded",
                "write outcome: Linux SIGBUS, engine stored",
            ],
            reproducer: [
                .mmap(.window(-0x1728000), length: 0x2f000, protection: 0x3, flags: 0x31),  // PROT_READ|PROT_WRITE, MAP_SHARED|MAP_FIXED|MAP_ANONYMOUS
                .mremap(.window(-0x16fc000), oldLength: 0x3000, newLength: 0x3a000, flags: 0x3, newAddress: .window(-0x5fb000)),  // MREMAP_MAYMOVE|MREMAP_FIXED
                .write(.window(-0x5f5000), value: 0xb9b9b48738b19d0f),
            ],
            note: "Shared anonymous memory keeps the size it was created with: mremap can grow the mapping, but a"
                + " page past the object's end raises SIGBUS on access (MADV_POPULATE_*: EFAULT; mlock, mlock2: ENOMEM,"
                + " having populated the pages before the object's end; a"
                + " locked mapping grown by a move populates only the pages inside the object). The"
                + " engine's shared object has no size, so the pages just work.",
            owner: "surface"),
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
    ]
}
