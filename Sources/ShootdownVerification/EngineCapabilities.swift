/// Which raw syscall arguments the engine's API can express. The generator asks it which
/// syscalls exist; an argument outside it yields ``KernelOutcome/inexpressible(_:)``, reported as
/// a divergence (an API gap is a difference from Linux too).
public struct EngineCapabilities: Sendable {
    /// `MAP_*` bits the engine's `map` has an option for (beyond the type): everything else the
    /// kernel accepts for anonymous memory (`MAP_STACK`, `MAP_32BIT`, `MAP_NONBLOCK`, the ignored
    /// legacy bits…) is inexpressible.
    public var mapFlags: UInt64 =
        LinuxABI.mapFixed | LinuxABI.mapFixedNoReplace | LinuxABI.mapAnonymous | LinuxABI.mapPopulate
        | LinuxABI.mapLocked | LinuxABI.mapNoReserve | LinuxABI.mapGrowsDown
    /// `MAP_SHARED`, `MAP_PRIVATE` (not `MAP_SHARED_VALIDATE` or invalid types).
    public var mapTypes: [UInt64] = [LinuxABI.mapShared, LinuxABI.mapPrivate]
    /// Syscalls with an engine counterpart.
    public var syscalls: Set<LinuxABI.Syscall> = Set(LinuxABI.Syscall.allCases)

    public init() {}

    /// What the engine this harness was built against can express.
    public static let current = EngineCapabilities()
}
