@testable import ShootdownVerification

extension KnownDivergence {
    /// Every known divergence (see ``KnownDivergence``), found by the oracle on Linux 6.18 x86-64
    /// (THP madvise mode, no swap, unprivileged child). Owner "surface": the engine's Linux
    /// syscall surface. Empty since every divergence the oracle found was fixed; a new one goes
    /// here, with its reproducer, only while it is being fixed.
    static let all: [KnownDivergence] = []
}
