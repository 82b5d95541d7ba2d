// swift-tools-version: 6.2
import PackageDescription

// An RDMA-style memory registration cache on Shootdown's public API. Depends on the repository by
// path; `name:` gives the dependency the identity `shootdown` whatever the clone's directory is
// called (a path dependency's identity is otherwise its directory name).
let package = Package(
    name: "RegistrationCache",
    products: [
        .library(name: "RegistrationCache", targets: ["RegistrationCache"])
    ],
    dependencies: [
        .package(name: "shootdown", path: "../..")
    ],
    targets: [
        .target(
            name: "RegistrationCache",
            dependencies: [.product(name: "Shootdown", package: "shootdown")]
        ),
        .testTarget(
            name: "RegistrationCacheTests",
            dependencies: ["RegistrationCache", .product(name: "Shootdown", package: "shootdown")]
        ),
    ]
)
