/// One mapping of `/proc/PID/smaps`: its `maps` line and the fields the oracle compares.
public struct SmapsEntry: Hashable, Sendable, CustomStringConvertible {
    public var start: UInt64
    public var end: UInt64
    /// `rwxp` / `rw-s` as printed.
    public var permissions: String
    /// The path or pseudo-name (`[heap]`, `[stack]`, `/dev/zero (deleted)`), or empty.
    public var name: String
    /// The `VmFlags:` codes, in the order printed.
    public var vmFlags: [VmFlag]
    /// `THPeligible:` (nil if the kernel did not print it).
    public var transparentHugePageEligible: Bool?
    /// `Rss:` in KiB.
    public var residentKiB: UInt64
    /// `AnonHugePages:` in KiB.
    public var anonymousHugeKiB: UInt64

    public init(
        start: UInt64, end: UInt64, permissions: String, name: String = "", vmFlags: [VmFlag] = [],
        transparentHugePageEligible: Bool? = nil, residentKiB: UInt64 = 0, anonymousHugeKiB: UInt64 = 0
    ) {
        self.start = start
        self.end = end
        self.permissions = permissions
        self.name = name
        self.vmFlags = vmFlags
        self.transparentHugePageEligible = transparentHugePageEligible
        self.residentKiB = residentKiB
        self.anonymousHugeKiB = anonymousHugeKiB
    }

    /// `MAP_SHARED` (the fourth permission letter is `s`).
    public var isShared: Bool { permissions.hasSuffix("s") }

    /// The `rwx` part of the permissions.
    public var protectionLetters: String { String(permissions.prefix(3)) }

    public var description: String {
        hex(start) + "-" + hex(end) + " " + permissions + (name.isEmpty ? "" : " " + name) + "  "
            + vmFlags.map(\.description).joined(separator: " ")
    }
}
