import Testing
@testable import ShootdownVerification

@Suite struct OracleGeneratorTests {
    static func view(mappings: [MappingView] = [], processes: Int = 1) -> OracleGenerator.View {
        OracleGenerator.View(
            layout: TestLayout.layout, facts: TestLayout.facts, mappings: mappings, processCount: processes)
    }

    static let mappings = [
        MappingView(start: TestLayout.windowTop - 0x20000, end: TestLayout.windowTop - 0x18000, permissions: "rw-p", flags: []),
        MappingView(start: TestLayout.windowTop - 0x8000, end: TestLayout.windowTop, permissions: "r--s", flags: []),
    ]

    @Test func sameSeedSameOperations() {
        var first = OracleGenerator(seed: 42)
        var second = OracleGenerator(seed: 42)
        for _ in 0..<500 { #expect(first.next(Self.view(mappings: Self.mappings)) == second.next(Self.view(mappings: Self.mappings))) }
    }

    @Test func seedsGiveDifferentStreams() {
        // Neighbouring seeds must not be shifted copies of one stream.
        let streams = (0..<4).map { seed -> [KernelOp] in
            var generator = OracleGenerator(seed: UInt64(seed))
            return (0..<50).map { _ in generator.next(Self.view(mappings: Self.mappings)) }
        }
        for (a, b) in [(0, 1), (1, 2), (0, 3)] {
            let shared = Set(streams[a].map(\.description)).intersection(streams[b].map(\.description))
            #expect(shared.count < 10)
        }
    }

    @Test func everyOperationIsSafe() {
        var generator = OracleGenerator(seed: 7)
        for index in 0..<5_000 {
            let op = generator.next(Self.view(mappings: index % 2 == 0 ? Self.mappings : [], processes: 1 + index % 4))
            #expect(op.unsafeReason(in: TestLayout.layout) == nil, "\(op)")
        }
    }

    @Test func reachesEverySyscallAndProcessStep() {
        var generator = OracleGenerator(seed: 11)
        var keys: Set<String> = []
        for index in 0..<20_000 {
            keys.insert(generator.next(Self.view(mappings: Self.mappings, processes: 1 + index % 3)).coverageKey)
        }
        for syscall in LinuxABI.Syscall.allCases {
            #expect(keys.contains { $0.hasPrefix(syscall.name) }, "\(syscall) never generated")
        }
        for advice in LinuxABI.advice where advice.value < 100 || advice.value > 101 {
            #expect(keys.contains("madvise(MADV_\(advice.name))"), "MADV_\(advice.name) never generated")
        }
        for key in ["read", "write", "fork", "switch", "madvise(unknown)"] { #expect(keys.contains(key)) }
    }

    @Test func noForkBeyondTheProcessLimit() {
        var generator = OracleGenerator(seed: 3)
        for _ in 0..<2_000 { #expect(generator.next(Self.view(processes: generator.maxProcesses)) != .fork) }
    }
}
