// swift-tools-version: 6.1
import PackageDescription

// A nested package, so `swift build` and `swift test` at the root never compile package-benchmark
// and its malloc interposer (docs/swift-notes.md). A path dependency's identity is its
// directory name; derive it so the benchmarks build whatever the clone is called (pitfall P8).
let rootIdentity = String(Context.packageDirectory.split(separator: "/").dropLast().last!)

let package = Package(
    name: "ShootdownBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: "../"),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "EngineBenchmarks",
            dependencies: [
                .product(name: "Shootdown", package: rootIdentity),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/EngineBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        )
    ]
)
