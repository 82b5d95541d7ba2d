@testable import ShootdownVerification

extension KnownDivergence {
    /// Every known divergence (see ``KnownDivergence``), found by the oracle on Linux 6.18 x86-64
    /// (THP madvise mode, no swap, unprivileged child). Owner "surface": the engine's Linux
    /// syscall surface.
    static let all: [KnownDivergence] = [
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
