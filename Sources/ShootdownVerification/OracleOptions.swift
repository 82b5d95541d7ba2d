import Shootdown

/// Settings of an oracle session.
public struct OracleOptions: Sendable {
    /// How the kernel child starts.
    public var process = LinuxProcess.Options()
    /// Size of the scratch window below the child's guard page.
    public var windowSize: UInt64 = 64 << 20
    /// Frames of the engine's physical memory.
    public var frames = 1 << 16
    /// Besides the pages an operation acted on, every touched page's contents are compared every
    /// this many steps (and after every fork or switch).
    public var fullContentCheckInterval = 16
    /// Mappings longer than this are compared by range and flags only (no residency scan).
    public var residencyScanLimit: UInt64 = 256 << 20
    /// Changes the engine's configuration after it is derived from the child. For tests of the
    /// oracle itself: a deliberately miswired engine must be caught.
    public var engineAdjustment: (@Sendable (inout AddressSpace.Configuration) -> Void)? = nil

    public init() {}
}
