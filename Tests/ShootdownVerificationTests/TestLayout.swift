@testable import ShootdownVerification

/// A layout and facts like a kernel child's, for tests that need no process.
enum TestLayout {
    static let windowTop: UInt64 = 0x7fff_f4ff_f000
    static let layout = OracleLayout(
        windowTop: windowTop, windowSize: 64 << 20, programBreakStart: 0x5555_5556_0000,
        initialMappings: [
            SmapsEntry(start: 0x1000_0000_0000, end: 0x1000_0010_1000, permissions: "rw-p"),
            SmapsEntry(start: 0x5555_5555_4000, end: 0x5555_5556_0000, permissions: "r-xp", name: "/exe"),
            SmapsEntry(start: windowTop, end: windowTop + 0x1000, permissions: "---s", name: "/dev/zero (deleted)"),
            SmapsEntry(start: windowTop + 0x1000, end: 0x7fff_f7ff_f000, permissions: "r-xp", name: "/lib"),
            SmapsEntry(start: 0x7fff_fffd_e000, end: 0x7fff_ffff_f000, permissions: "rw-p", name: "[stack]"),
        ])
    static let facts = LinuxFacts(
        kernelRelease: "test", mmapMinAddress: 4096, hintMinAddress: 65536, maxMapCount: 65530, overcommitMemory: 0,
        swapPages: 0,
        transparentHugePages: "madvise", transparentHugePageSizes: [2 << 20], uid: 65534, effectiveCapabilities: 0,
        stackLimit: 8 << 20, lockedMemoryLimit: 8 << 20, programBreakStart: 0x5555_5556_0000,
        programBreak: 0x5555_5556_0000, mmapBase: 0x7fff_f7ff_f000, threads: 1)
}
