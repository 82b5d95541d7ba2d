/// The kinds of operation the ``TortureHarness`` draws, each with several forms.
public enum TortureOperation: String, Sendable, CaseIterable, Hashable, Codable {
    /// `mmap`: fixed, fixed-no-replace, hinted and anywhere placements; private or shared;
    /// huge-page, locked, populate, no-reserve and grows-down options; every protection.
    case map
    /// `munmap` of a range of the thread's region (holes included).
    case unmap
    /// `mprotect` to none, read, read-write or read-write-exec.
    case protect
    /// `mremap`: shrink, grow in place, move to a fixed target, move with `MREMAP_DONTUNMAP`, and
    /// may-move growth.
    case remap
    /// `madvise` that discards: `DONTNEED`, `DONTNEED_LOCKED`, `FREE`, `REMOVE`.
    case adviseDiscard
    /// `madvise(PAGEOUT)` and `madvise(COLD)`.
    case advisePageOut
    /// `madvise(POPULATE_READ / POPULATE_WRITE / WILLNEED)`.
    case advisePopulate
    /// `madvise(HUGEPAGE / NOHUGEPAGE / COLLAPSE)` on 2 MiB blocks, and ``AddressSpace/collapse(address:length:)``.
    case adviseHuge
    /// `madvise(GUARD_INSTALL / GUARD_REMOVE)`.
    case adviseGuard
    /// Every other advice (flags only: `RANDOM`, `DONTFORK`, `WIPEONFORK`, `MERGEABLE`, ...).
    case adviseOther
    /// `mlock`, `mlock2(MLOCK_ONFAULT)`, `munlock`.
    case lock
    /// `mlockall` with a random flag set, then `munlockall`.
    case lockAll
    /// `fork`, a few accesses and a discard in the child, the child's teardown.
    case fork
    /// CPU loads and stores (``AddressSpace/read(at:)``, ``AddressSpace/write(_:at:)``).
    case access
    /// CPU page faults (``AddressSpace/fault(at:access:)``).
    case fault
    /// `pin_user_pages` and unpin (unsharing copy-on-write pages for write pins).
    case pin
    /// Inserts or removes an interval notifier over a range of the thread's region.
    case intervalNotifier
    /// A mirror's device fault over a range.
    case mirrorPopulate
    /// A device load through a mirror.
    case mirrorRead
    /// A device store through a mirror.
    case mirrorWrite
    /// A migration a mirror asks for, then mirroring the range again.
    case mirrorMigrate
    /// Global reclaim (``AddressSpace/reclaim(pages:)``).
    case reclaim
    /// Page migration of a range (``AddressSpace/migrate(address:length:owner:)``).
    case migrate
    /// Soft-dirty clear of a range or of the whole space, and a soft-dirty query.
    case softDirty
    /// Aging (clear and test young) of a range, through the classic subscribers too.
    case age

    /// The mix the CLI uses: page-level operations often, structural ones regularly, whole-space
    /// ones (fork, mlockall, reclaim) rarely.
    public static let defaultMix: [TortureOperation: Int] = [
        .map: 60, .unmap: 20, .protect: 50, .remap: 30, .adviseDiscard: 40, .advisePageOut: 20,
        .advisePopulate: 20, .adviseHuge: 6, .adviseGuard: 8, .adviseOther: 10, .lock: 15, .lockAll: 1,
        .fork: 2, .access: 120, .fault: 80, .pin: 15, .intervalNotifier: 10, .mirrorPopulate: 60,
        .mirrorRead: 60, .mirrorWrite: 50, .mirrorMigrate: 10, .reclaim: 4, .migrate: 15, .softDirty: 10,
        .age: 10,
    ]
}
