/// The x86-64 Linux ABI values the oracle speaks: syscall numbers, flag bits and errno names.
///
/// Written out here (not imported from C headers) because the build machine's headers may predate
/// the running kernel (`mseal`, `MADV_GUARD_INSTALL`, `MADV_COLLAPSE` are newer than Debian 12's).
public enum LinuxABI {
    /// Syscall numbers (x86-64).
    public enum Syscall: UInt64, CaseIterable, Sendable, Codable {
        case mmap = 9
        case mprotect = 10
        case munmap = 11
        case brk = 12
        case mremap = 25
        case msync = 26
        case mincore = 27
        case madvise = 28
        case mlock = 149
        case munlock = 150
        case mlockall = 151
        case munlockall = 152
        case mlock2 = 325
        case mseal = 462

        public var name: String { "\(self)" }
    }

    /// `TASK_SIZE` of a 4-level x86-64 address space: the end of user addresses.
    public static let taskSize: UInt64 = 0x7FFF_FFFF_F000
    public static let pageSize: UInt64 = 4096
    public static let hugePageSize: UInt64 = 2 << 20

    // PROT_*
    public static let protRead: UInt64 = 0x1
    public static let protWrite: UInt64 = 0x2
    public static let protExec: UInt64 = 0x4
    public static let protSem: UInt64 = 0x8
    public static let protGrowsDown: UInt64 = 0x0100_0000
    public static let protGrowsUp: UInt64 = 0x0200_0000

    // MAP_*
    public static let mapShared: UInt64 = 0x01
    public static let mapPrivate: UInt64 = 0x02
    public static let mapSharedValidate: UInt64 = 0x03
    public static let mapType: UInt64 = 0x0F
    public static let mapFixed: UInt64 = 0x10
    public static let mapAnonymous: UInt64 = 0x20
    public static let map32Bit: UInt64 = 0x40
    public static let mapGrowsDown: UInt64 = 0x100
    public static let mapDenyWrite: UInt64 = 0x800
    public static let mapExecutable: UInt64 = 0x1000
    public static let mapLocked: UInt64 = 0x2000
    public static let mapNoReserve: UInt64 = 0x4000
    public static let mapPopulate: UInt64 = 0x8000
    public static let mapNonBlock: UInt64 = 0x10000
    public static let mapStack: UInt64 = 0x20000
    public static let mapHugeTLB: UInt64 = 0x40000
    public static let mapSync: UInt64 = 0x80000
    public static let mapFixedNoReplace: UInt64 = 0x10_0000
    public static let mapUninitialized: UInt64 = 0x400_0000

    // MREMAP_*
    public static let mremapMayMove: UInt64 = 1
    public static let mremapFixed: UInt64 = 2
    public static let mremapDontUnmap: UInt64 = 4

    // MLOCK_* (mlock2), MCL_* (mlockall)
    public static let mlockOnFault: UInt64 = 1
    public static let mclCurrent: UInt64 = 1
    public static let mclFuture: UInt64 = 2
    public static let mclOnFault: UInt64 = 4

    // MS_* (msync)
    public static let msAsync: UInt64 = 1
    public static let msInvalidate: UInt64 = 2
    public static let msSync: UInt64 = 4

    /// `MADV_*` values by name, in the kernel's numbering.
    public static let advice: [(name: String, value: UInt64)] = [
        ("NORMAL", 0), ("RANDOM", 1), ("SEQUENTIAL", 2), ("WILLNEED", 3), ("DONTNEED", 4), ("FREE", 8),
        ("REMOVE", 9), ("DONTFORK", 10), ("DOFORK", 11), ("MERGEABLE", 12), ("UNMERGEABLE", 13),
        ("HUGEPAGE", 14), ("NOHUGEPAGE", 15), ("DONTDUMP", 16), ("DODUMP", 17), ("WIPEONFORK", 18),
        ("KEEPONFORK", 19), ("COLD", 20), ("PAGEOUT", 21), ("POPULATE_READ", 22), ("POPULATE_WRITE", 23),
        ("DONTNEED_LOCKED", 24), ("COLLAPSE", 25), ("HWPOISON", 100), ("SOFT_OFFLINE", 101),
        ("GUARD_INSTALL", 102), ("GUARD_REMOVE", 103),
    ]

    /// `MADV_` name of `value`, or the number for one Linux does not define.
    public static func adviceName(_ value: UInt64) -> String {
        advice.first { $0.value == value }.map { "MADV_" + $0.name } ?? "MADV_\(value)"
    }

    public static func adviceValue(_ name: String) -> UInt64? {
        advice.first { $0.name == name }?.value
    }

    /// errno names for the values memory syscalls return.
    public static func errnoName(_ value: Int32) -> String {
        switch value {
        case 1: "EPERM"
        case 4: "EINTR"
        case 7: "E2BIG"
        case 9: "EBADF"
        case 11: "EAGAIN"
        case 12: "ENOMEM"
        case 13: "EACCES"
        case 14: "EFAULT"
        case 16: "EBUSY"
        case 17: "EEXIST"
        case 19: "ENODEV"
        case 22: "EINVAL"
        case 27: "EFBIG"
        case 38: "ENOSYS"
        case 75: "EOVERFLOW"
        case 95: "EOPNOTSUPP"
        default: "errno \(value)"
        }
    }

    /// Signal names for faulting touches.
    public static func signalName(_ value: Int32) -> String {
        switch value {
        case 7: "SIGBUS"
        case 11: "SIGSEGV"
        default: "signal \(value)"
        }
    }

    public static let sigbus: Int32 = 7
    public static let sigsegv: Int32 = 11

    /// `PROT_*` names of `bits` joined with `|` (for reproducer comments).
    public static func protectionNames(_ bits: UInt64) -> String {
        flagNames(bits, [(protRead, "READ"), (protWrite, "WRITE"), (protExec, "EXEC"), (protSem, "SEM"),
                         (protGrowsDown, "GROWSDOWN"), (protGrowsUp, "GROWSUP")], prefix: "PROT_", zero: "PROT_NONE")
    }

    /// `MAP_*` names of `bits` joined with `|`.
    public static func mapFlagNames(_ bits: UInt64) -> String {
        let type: String
        switch bits & mapType {
        case mapShared: type = "MAP_SHARED"
        case mapPrivate: type = "MAP_PRIVATE"
        case mapSharedValidate: type = "MAP_SHARED_VALIDATE"
        case 0: type = ""
        default: type = "MAP_TYPE(\(bits & mapType))"
        }
        let rest = flagNames(bits & ~mapType, [
            (mapFixed, "FIXED"), (mapAnonymous, "ANONYMOUS"), (map32Bit, "32BIT"), (mapGrowsDown, "GROWSDOWN"),
            (mapDenyWrite, "DENYWRITE"), (mapExecutable, "EXECUTABLE"), (mapLocked, "LOCKED"),
            (mapNoReserve, "NORESERVE"), (mapPopulate, "POPULATE"), (mapNonBlock, "NONBLOCK"), (mapStack, "STACK"),
            (mapHugeTLB, "HUGETLB"), (mapSync, "SYNC"), (mapFixedNoReplace, "FIXED_NOREPLACE"),
            (mapUninitialized, "UNINITIALIZED"),
        ], prefix: "MAP_", zero: "")
        return [type, rest].filter { !$0.isEmpty }.joined(separator: "|")
    }

    public static func remapFlagNames(_ bits: UInt64) -> String {
        flagNames(bits, [(mremapMayMove, "MAYMOVE"), (mremapFixed, "FIXED"), (mremapDontUnmap, "DONTUNMAP")],
                  prefix: "MREMAP_", zero: "no flags")
    }

    static func flagNames(_ bits: UInt64, _ names: [(UInt64, String)], prefix: String, zero: String) -> String {
        var parts: [String] = []
        var rest = bits
        for (bit, name) in names where bits & bit != 0 {
            parts.append(prefix + name)
            rest &= ~bit
        }
        if rest != 0 { parts.append("0x" + String(rest, radix: 16)) }
        return parts.isEmpty ? zero : parts.joined(separator: "|")
    }
}
