@testable import ShootdownVerification

extension KnownDivergence {
    /// Every known divergence (see ``KnownDivergence``), found by the oracle on Linux 6.18 x86-64
    /// (THP madvise mode, no swap, unprivileged child). Owner "surface": the engine's Linux
    /// syscall surface.
    static let all: [KnownDivergence] = [
        // mmap flags the engine's map cannot take
        KnownDivergence(
            signatures: [
                "mmap inexpressible: MAP_32BIT",
                "mmap inexpressible: MAP_DENYWRITE",
                "mmap inexpressible: MAP_EXECUTABLE",
                "mmap inexpressible: MAP_NONBLOCK",
                "mmap inexpressible: MAP_STACK",
                "mmap inexpressible: MAP_TYPE 0",
                "mmap inexpressible: MAP_TYPE 15",
                "mmap inexpressible: MAP_TYPE 3",
                "mmap inexpressible: MAP_TYPE 4",
                "mmap inexpressible: MAP_UNINITIALIZED",
                "mmap inexpressible: a file mapping",
            ],
            reproducer: [
                .mmap(.window(-0x7af02e), length: 0x7000, protection: 0x3, flags: 0x20022),  // PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_STACK
            ],
            note: "The engine's map has no form for these raw mmap flags: MAP_STACK (Linux sets nh on the VMA),"
                + " MAP_32BIT (placed below 2 GiB), MAP_NONBLOCK (MAP_POPULATE then populates nothing), the ignored"
                + " legacy bits MAP_DENYWRITE, MAP_EXECUTABLE and MAP_UNINITIALIZED, MAP_SHARED_VALIDATE and invalid"
                + " map types (EINVAL for anonymous memory), and a missing MAP_ANONYMOUS with fd -1 (EBADF).",
            owner: "surface"),
        // shared memory has a size
        KnownDivergence(
            signatures: [
                "mlock outcome: Linux ENOMEM, engine success",
                "read outcome: Linux SIGBUS, engine loaded",
                "write outcome: Linux SIGBUS, engine stored",
            ],
            reproducer: [
                .mmap(.window(-0x1728000), length: 0x2f000, protection: 0x3, flags: 0x31),  // PROT_READ|PROT_WRITE, MAP_SHARED|MAP_FIXED|MAP_ANONYMOUS
                .mremap(.window(-0x16fc000), oldLength: 0x3000, newLength: 0x3a000, flags: 0x3, newAddress: .window(-0x5fb000)),  // MREMAP_MAYMOVE|MREMAP_FIXED
                .write(.window(-0x5f5000), value: 0xb9b9b48738b19d0f),
            ],
            note: "Shared anonymous memory keeps the size it was created with: mremap can grow the mapping, but a"
                + " page past the object's end raises SIGBUS on access (MADV_POPULATE_*: EFAULT; mlock: ENOMEM). The"
                + " engine's shared object has no size, so the pages just work.",
            owner: "surface"),
        // mremap: a new length past TASK_SIZE
        KnownDivergence(
            signatures: [
                "mremap outcome: Linux EINVAL, engine EFAULT",
                "mremap outcome: Linux EINVAL, engine ENOMEM",
            ],
            reproducer: [
                .mremap(.window(-0x2ddc000), oldLength: 0x2000, newLength: 0x8000000000000000, flags: 0x1, newAddress: .absolute(0x0)),  // MREMAP_MAYMOVE
            ],
            note: "mremap with a new length above TASK_SIZE is EINVAL before the source is looked at; the engine"
                + " reports EFAULT (no VMA) or ENOMEM (no room).",
            owner: "surface"),
        // mremap: growing a locked mapping checks RLIMIT_MEMLOCK first
        KnownDivergence(
            signatures: [
                "mremap outcome: Linux EAGAIN, engine ENOMEM",
            ],
            reproducer: [
                .mmap(.absolute(0x0), length: 0x400000, protection: 0x4, flags: 0x2022),  // PROT_EXEC, MAP_PRIVATE|MAP_ANONYMOUS|MAP_LOCKED
                .mremap(.window(-0x352000), oldLength: 0x3000, newLength: 0x7ffffffff000, flags: 0x0, newAddress: .absolute(0x0)),  // no flags
            ],
            note: "Growing a locked VMA checks the locked-memory limit (EAGAIN) before it looks for room; the"
                + " engine reports ENOMEM first.",
            owner: "surface"),
        // fork: no page-table copy without an anon_vma
        KnownDivergence(
            signatures: [
                "fork residency after forked: engine resident, Linux not",
            ],
            reproducer: [
                .mmap(.absolute(0x800000000000), length: 0x21000, protection: 0x1, flags: 0x6022),  // PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS|MAP_LOCKED|MAP_NORESERVE
                .fork,
            ],
            note: "fork copies no page-table entries of a private VMA that has no anon_vma (only zero-page reads,"
                + " or MAP_LOCKED|MAP_POPULATE of read-only memory): the child faults them in later, mincore shows"
                + " them absent. The engine copies every entry.",
            owner: "surface"),
        // THP alignment of non-fixed placements
        KnownDivergence(
            signatures: [
                "mmap outcome: both success, different values",
                "mremap outcome: both success, different values",
            ],
            reproducer: [
                .mmap(.absolute(0x0), length: 0x400000, protection: 0x6, flags: 0x21),  // PROT_WRITE|PROT_EXEC, MAP_SHARED|MAP_ANONYMOUS
            ],
            note: "Linux aligns a non-fixed 2 MiB-multiple placement to 2 MiB only for private anonymous memory"
                + " (shared anonymous memory follows shmem, which does not align with shmem THP off) and aligns"
                + " mremap moves of such lengths too; the engine aligns shared mmaps and not mremap moves.",
            owner: "surface"),
        // brk: overcommit refuses growth larger than memory
        KnownDivergence(
            signatures: [
                "brk outcome: both success, different values",
            ],
            reproducer: [
                .brk(.absolute(0x7ffff1d9f000)),
            ],
            note: "With heuristic overcommit (vm.overcommit_memory 0) Linux refuses a brk growth larger than RAM"
                + " plus swap and returns the old break; the engine has no commit accounting and grows the heap.",
            owner: "surface"),
        // MADV_PAGEOUT of shared memory
        KnownDivergence(
            signatures: [
                "madvise(MADV_PAGEOUT) residency after ENOMEM: engine resident, Linux not",
                "madvise(MADV_PAGEOUT) residency after success: engine resident, Linux not",
            ],
            reproducer: [
                .mmap(.window(-0x19cb000), length: 0x200000, protection: 0x7, flags: 0x8021),  // PROT_READ|PROT_WRITE|PROT_EXEC, MAP_SHARED|MAP_ANONYMOUS|MAP_POPULATE
                .madvise(.window(-0x19cd000), length: 0xb1000, advice: 21),  // MADV_PAGEOUT
            ],
            note: "MADV_PAGEOUT reclaims clean shared (shmem) pages: mincore shows them absent afterwards; the"
                + " engine pages out private memory only.",
            owner: "surface"),
        // MADV_REMOVE across shared VMAs
        KnownDivergence(
            signatures: [
                "madvise(MADV_REMOVE) outcome: Linux success, engine EACCES",
            ],
            reproducer: [
                .mmap(.window(-0x23ab000), length: 0x400000, protection: 0x3, flags: 0x31),  // PROT_READ|PROT_WRITE, MAP_SHARED|MAP_FIXED|MAP_ANONYMOUS
                .mprotect(.window(-0x1fae000), length: 0x1d29000, protection: 0x0),  // PROT_NONE
                .madvise(.window(-0x1faf000), length: 0x2000, advice: 9),  // MADV_REMOVE
            ],
            note: "MADV_REMOVE over a writable shared VMA followed by a PROT_NONE part of the same object succeeds"
                + " in Linux (the write check is made on the first VMA); the engine fails with EACCES.",
            owner: "surface"),
        // MADV_COLLAPSE of untouched memory
        KnownDivergence(
            signatures: [
                "madvise(MADV_COLLAPSE) outcome: Linux EINVAL, engine success",
            ],
            reproducer: [
                .mmap(.absolute(0x0), length: 0x400000, protection: 0x3, flags: 0x4022),  // PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE
                .madvise(.window(-0x4de000), length: 0x179000, advice: 25),  // MADV_COLLAPSE
            ],
            note: "MADV_COLLAPSE over untouched private memory (no page to collapse, here not even a whole aligned"
                + " 2 MiB block in the range) is EINVAL in Linux; the engine succeeds.",
            owner: "surface"),
        // mlock: a wrapping range
        KnownDivergence(
            signatures: [
                "mlock outcome: Linux EINVAL, engine ENOMEM",
            ],
            reproducer: [
                .mlock(.absolute(0xfffffffffffffef9), length: 0x248000),
            ],
            note: "mlock of a range whose end wraps past 2^64 (after rounding the start down and the length up) is"
                + " EINVAL; the engine reports ENOMEM.",
            owner: "surface"),
        // mlockall(MCL_FUTURE | MCL_ONFAULT) and new mappings
        KnownDivergence(
            signatures: [
                "mmap mappings after success: flags Linux +lf",
                "mmap residency after success: engine resident, Linux not",
            ],
            reproducer: [
                .mlockall(flags: 0x6),
                .mmap(.absolute(0x0), length: 0x6000, protection: 0x4, flags: 0x2022),  // PROT_EXEC, MAP_PRIVATE|MAP_ANONYMOUS|MAP_LOCKED
            ],
            note: "After mlockall(MCL_FUTURE|MCL_ONFAULT) a MAP_LOCKED mapping keeps lf (lock on fault) and"
                + " MAP_POPULATE populates nothing; the engine drops lf for MAP_LOCKED and populates.",
            owner: "surface"),
        // mmap: EEXIST before the growsdown-shared check
        KnownDivergence(
            signatures: [
                "mmap outcome: Linux EEXIST, engine EINVAL",
            ],
            reproducer: [
                .mmap(.window(-0x3da000), length: 0x4c9000, protection: 0x1, flags: 0x100121),  // PROT_READ, MAP_SHARED|MAP_ANONYMOUS|MAP_GROWSDOWN|MAP_FIXED_NOREPLACE
            ],
            note: "MAP_FIXED_NOREPLACE over a mapping is EEXIST even when MAP_GROWSDOWN|MAP_SHARED would be EINVAL:"
                + " Linux checks the shared-growsdown combination later; the engine first.",
            owner: "surface"),
        // mmap(MAP_FIXED) over a sealed VMA splits before it fails
        KnownDivergence(
            signatures: [
                "mmap mappings after EPERM: layout",
            ],
            reproducer: [
                .mmap(.absolute(0x0), length: 0xc82000, protection: 0x0, flags: 0x4022),  // PROT_NONE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE
                .mseal(.window(-0x703000), length: 0x5000, flags: 0x0),
                .mmap(.window(-0x706000), length: 0x8000, protection: 0x3, flags: 0x4032),  // PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_FIXED|MAP_ANONYMOUS|MAP_NORESERVE
            ],
            note: "MAP_FIXED over a range that reaches a sealed VMA fails with EPERM in Linux after splitting the"
                + " unsealed VMA at the range's start; the engine fails before changing anything.",
            owner: "surface"),
        // anon_vma identity in merges
        KnownDivergence(
            signatures: [
                "mlock mappings after ENOMEM: layout",
                "mprotect mappings after success: layout",
            ],
            reproducer: [
                .mmap(.absolute(0x0), length: 0x1d000, protection: 0x1, flags: 0x22),  // PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS
                .mmap(.window(-0x9000), length: 0x3f000, protection: 0x3, flags: 0x22),  // PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS
                .write(.window(-0x58000), value: 0x17f500fafe2b9495),
                .mprotect(.window(-0x1d000), length: 0x14000, protection: 0x0),  // PROT_NONE
                .mremap(.window(-0x5c000), oldLength: 0x3f000, newLength: 0x3f000, flags: 0x5, newAddress: .absolute(0x0)),  // MREMAP_MAYMOVE|MREMAP_DONTUNMAP
                .mprotect(.window(-0x41000), length: 0x24000, protection: 0x0),  // PROT_NONE
            ],
            note: "Whether neighbouring VMAs merge depends on their anon_vma: VMAs of a fork's child that were"
                + " split before the fork, or a DONTUNMAP move's emptied source, stay apart in Linux where the"
                + " engine merges them (after mprotect, mlock, munlockall, a fixed mremap).",
            owner: "surface"),
        // mprotect: PROT_GROWSUP over a hole
        KnownDivergence(
            signatures: [
                "mprotect outcome: Linux ENOMEM, engine EINVAL",
            ],
            reproducer: [
                .mprotect(.window(-0x51a000), length: 0x5000, protection: 0x2000001),  // PROT_READ|PROT_GROWSUP
            ],
            note: "mprotect with PROT_GROWSUP over a range without a VMA is ENOMEM (the VMA lookup comes before the"
                + " growsup check on x86); the engine reports EINVAL.",
            owner: "surface"),
        // mremap(MREMAP_DONTUNMAP): lengths compared after rounding
        KnownDivergence(
            signatures: [
                "mremap outcome: Linux EFAULT, engine EINVAL",
            ],
            reproducer: [
                .mremap(.window(-0x23b4000), oldLength: 0xffffffffffffffff, newLength: 0x2afff, flags: 0x0, newAddress: .absolute(0x0)),  // no flags
            ],
            note: "MREMAP_DONTUNMAP requires equal lengths after rounding to pages (0x1000 and 0x1 are equal); the"
                + " engine compares the raw lengths and fails with EINVAL.",
            owner: "surface"),
        // mremap: the source is checked before a fixed target's address
        KnownDivergence(
            signatures: [
                "mremap outcome: Linux EFAULT, engine EPERM",
            ],
            reproducer: [
                .mremap(.window(-0x174000), oldLength: 0x0, newLength: 0x26000, flags: 0x3, newAddress: .absolute(0x0)),  // MREMAP_MAYMOVE|MREMAP_FIXED
            ],
            note: "mremap(MREMAP_FIXED) of an address without a VMA to a target below mmap_min_addr is EFAULT: the"
                + " source is checked first; the engine reports the target's EPERM first.",
            owner: "surface"),
        // mremap(MREMAP_DONTUNMAP) onto its own range
        KnownDivergence(
            signatures: [
                "mremap outcome: Linux EINVAL, engine success",
            ],
            reproducer: [
                .mmap(.window(-0x2a9000), length: 0x3b000, protection: 0x1, flags: 0x32),  // PROT_READ, MAP_PRIVATE|MAP_FIXED|MAP_ANONYMOUS
                .mremap(.window(-0x2a9000), oldLength: 0x1d000, newLength: 0x1d000, flags: 0x5, newAddress: .window(-0x2a9000)),  // MREMAP_MAYMOVE|MREMAP_DONTUNMAP
            ],
            note: "mremap(MREMAP_DONTUNMAP) whose new-address hint overlaps the source range is EINVAL in Linux;"
                + " the engine ignores the hint and moves.",
            owner: "surface"),
        // mremap growth of a locked mapping populates
        KnownDivergence(
            signatures: [
                "mremap residency after success: Linux resident, engine not",
            ],
            reproducer: [
                .mmap(.window(-0x52000), length: 0x11000, protection: 0x3, flags: 0x8032),  // PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_FIXED|MAP_ANONYMOUS|MAP_POPULATE
                .mlock2(.window(-0x52000), length: 0x11000, flags: 0x0),
                .mremap(.window(-0x43000), oldLength: 0x1000, newLength: 0x19000, flags: 0x1, newAddress: .absolute(0x0)),  // MREMAP_MAYMOVE
            ],
            note: "Growing a locked (populated) VMA with a move populates the new pages in Linux; the engine leaves"
                + " them unpopulated.",
            owner: "surface"),
    ]
}
