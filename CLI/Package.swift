// swift-tools-version: 6.2
import PackageDescription

// The `shootdown` command-line tool: benchmarks, replay, torture and the kernel oracle. A package
// of its own, so that a library-only user of Shootdown never resolves or builds its dependencies
// (argument-parser, HdrHistogram).
let package = Package(
    name: "shootdown-cli",
    products: [
        .executable(name: "shootdown", targets: ["ShootdownCLI"])
    ],
    dependencies: [
        .package(name: "shootdown", path: ".."),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        .executableTarget(
            name: "ShootdownCLI",
            dependencies: [
                .product(name: "Shootdown", package: "shootdown"),
                .product(name: "ShootdownVerification", package: "shootdown"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            path: "Sources/shootdown",
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        )
    ]
)
