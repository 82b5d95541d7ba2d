import Testing
@testable import ShootdownVerification

/// A difference between the kernel and the engine that is known and not fixed yet: its
/// signatures (``Divergence/signature``), a reproducer, what Linux does, and who fixes it.
///
/// The oracle test reports a divergence with one of these signatures as a known issue instead of a
/// failure; the reproducer is replayed on its own (``KernelOracleTests/knownDivergenceReproduces``)
/// and fails once the engine matches Linux, so the entry must then be removed.
struct KnownDivergence: Sendable, CustomTestStringConvertible {
    /// The signatures this entry explains, exactly.
    let signatures: [String]
    /// The shortest operation list found that shows it.
    let reproducer: [KernelOp]
    /// What Linux does and what the engine does instead.
    let note: String
    /// Who fixes it.
    let owner: String

    var testDescription: String { signatures.first ?? note }

    func matches(_ signature: String) -> Bool { signatures.contains(signature) }

    static func matching(_ signature: String) -> KnownDivergence? {
        all.first { $0.matches(signature) }
    }
}
