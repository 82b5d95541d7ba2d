// swift-tools-version: 6.2
import Foundation
import PackageDescription

// Library settings are first-class settings only (no unsafeFlags), so the library stays usable as a
// versioned dependency (SwiftPM refuses unsafe flags in dependencies).
let engineSwiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("ExistentialAny"),
    // Debug and test builds check internal invariants; release builds compile the checks away.
    .define("SHOOTDOWN_INTERNAL_CHECKS", .when(configuration: .debug)),
]

let package = Package(
    name: "shootdown",
    products: [
        .library(name: "Shootdown", targets: ["Shootdown"]),
        // The live kernel oracle (and, later, the replay and torture harnesses): runs the same
        // operations on a real Linux process and on the engine and compares them.
        .library(name: "ShootdownVerification", targets: ["ShootdownVerification"]),
    ],
    // No dependencies: a library user builds the engine and its C interop, nothing else. The CLI is
    // the nested package in CLI/, the benchmarks the one in Benchmarks/.
    dependencies: [],
    targets: [
        // The only place C enters: liburcu (memb flavor), futexes, mmap, TLS thread slots.
        .target(
            name: "CInterop",
            path: "CInterop",
            linkerSettings: [.linkedLibrary("urcu-memb"), .linkedLibrary("urcu-common")]
        ),
        .target(
            name: "Shootdown",
            dependencies: ["CInterop"],
            swiftSettings: engineSwiftSettings
        ),
        .target(
            name: "ShootdownVerification",
            dependencies: ["Shootdown", "CInterop"],
            swiftSettings: engineSwiftSettings
        ),
        .testTarget(
            name: "ShootdownVerificationTests",
            dependencies: ["ShootdownVerification", "Shootdown", "CInterop"],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        .testTarget(
            name: "ShootdownTests",
            dependencies: ["Shootdown", "ShootdownVerification", "CInterop"],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
    ]
)

// Documentation: `scripts/docs` sets SHOOTDOWN_DOCS=1 to add swift-docc-plugin for that build only, so
// library users never resolve or build it (the dependency list above stays empty for them).
if ProcessInfo.processInfo.environment["SHOOTDOWN_DOCS"] != nil {
    package.dependencies.append(.package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"))
}
