// swift-tools-version: 6.2
import PackageDescription

// A device page table (a GPU-style secondary MMU) on Shootdown's public API. Depends on the repository by
// path; `name:` gives the dependency the identity `shootdown` whatever the clone's directory is
// called (a path dependency's identity is otherwise its directory name).
let package = Package(
    name: "DeviceMirror",
    products: [
        .library(name: "DeviceMirror", targets: ["DeviceMirror"])
    ],
    dependencies: [
        .package(name: "shootdown", path: "../..")
    ],
    targets: [
        .target(
            name: "DeviceMirror",
            dependencies: [.product(name: "Shootdown", package: "shootdown")]
        ),
        .testTarget(
            name: "DeviceMirrorTests",
            dependencies: ["DeviceMirror", .product(name: "Shootdown", package: "shootdown")]
        ),
    ]
)
