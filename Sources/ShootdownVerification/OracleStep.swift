/// The result of one operation on both sides.
public struct OracleStep: Sendable {
    public var op: KernelOp
    /// The process the operation ran in.
    public var process: Int
    public var linux: KernelOutcome
    public var engine: KernelOutcome
    /// Empty when the two sides agree.
    public var differences: [Difference]
    /// Both sides' mappings after the operation (outside the initial ones).
    public var linuxMappings: [MappingView]
    public var engineMappings: [MappingView]
}
