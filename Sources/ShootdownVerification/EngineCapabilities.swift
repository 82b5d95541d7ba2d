/// Which raw syscall arguments the engine's API can express. The generator asks it which
/// syscalls exist; an argument outside it yields ``KernelOutcome/inexpressible(_:)``, reported as
/// a divergence (an API gap is a difference from Linux too).
public struct EngineCapabilities: Sendable {
    /// `MAP_*` bits the engine's raw `map(address:length:protection:rawFlags:)` models (beyond the
    /// type): everything else (`MAP_HUGETLB`, `MAP_SYNC`, unknown bits) is inexpressible.
    public var mapFlags: UInt64 =
        LinuxABI.mapFixed | LinuxABI.mapFixedNoReplace | LinuxABI.mapAnonymous | LinuxABI.mapPopulate
        | LinuxABI.mapLocked | LinuxABI.mapNoReserve | LinuxABI.mapGrowsDown | LinuxABI.mapStack
        | LinuxABI.map32Bit | LinuxABI.mapNonBlock | LinuxABI.mapDenyWrite | LinuxABI.mapExecutable
        | LinuxABI.mapUninitialized
    /// Map types the engine answers as Linux does: `MAP_SHARED`, `MAP_PRIVATE`, and the types
    /// Linux rejects for anonymous memory (`EINVAL`), `MAP_SHARED_VALIDATE` included; not
    /// `MAP_DROPPABLE` (8), which the engine does not model.
    public var mapTypes: [UInt64] = (0...LinuxABI.mapType).filter { $0 != 8 }
    /// Syscalls with an engine counterpart.
    public var syscalls: Set<LinuxABI.Syscall> = Set(LinuxABI.Syscall.allCases)

    public init() {}

    /// What the engine this harness was built against can express.
    public static let current = EngineCapabilities()
}
