// swift-tools-version: 6.2
import PackageDescription

// The libFuzzer targets (see scripts/fuzz and the README's "Fuzzing" section). A nested package,
// because libFuzzer provides `main`: each target is an executable whose entry point is
// `LLVMFuzzerTestOneInput`, and it only links with `--sanitize=fuzzer` (scripts/fuzz builds with
// `--sanitize=fuzzer --sanitize=address -Xswiftc -parse-as-library`). A path dependency's identity is
// its directory name; derive it so the targets build whatever the clone is called (as Benchmarks/
// does).
let rootIdentity = String(Context.packageDirectory.split(separator: "/").dropLast().last!)

let package = Package(
    name: "ShootdownFuzz",
    dependencies: [.package(path: "../")],
    targets: [
        // `ops`: operation sequences against the reference model.
        .executableTarget(
            name: "FuzzOps",
            dependencies: [
                .product(name: "Shootdown", package: rootIdentity),
                .product(name: "ShootdownVerification", package: rootIdentity),
            ],
            path: "Sources/FuzzOps"
        ),
        // `trace`: arbitrary bytes through the strace reader and the replayer.
        .executableTarget(
            name: "FuzzTrace",
            dependencies: [
                .product(name: "Shootdown", package: rootIdentity),
                .product(name: "ShootdownVerification", package: rootIdentity),
            ],
            path: "Sources/FuzzTrace"
        ),
    ]
)
