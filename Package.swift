// swift-tools-version: 6.2
import PackageDescription

// Library settings are first-class settings only (no unsafeFlags), so the library stays usable as a
// versioned dependency (swift-on-linux.md §1.4, pitfall P4).
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
        .executable(name: "shootdown", targets: ["ShootdownCLI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
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
        .executableTarget(
            name: "ShootdownCLI",
            dependencies: [
                "Shootdown",
                "CInterop",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            path: "Sources/shootdown",
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        .testTarget(
            name: "ShootdownTests",
            dependencies: ["Shootdown", "CInterop"],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
    ]
)
