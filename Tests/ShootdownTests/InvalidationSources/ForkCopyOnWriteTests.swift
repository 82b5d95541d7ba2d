import Testing

@testable import Shootdown

private let p = NotifierTestConstants.page
private let base = NotifierTestConstants.base

/// Fork and copy-on-write as an invalidation source: content and frame counts stay exact across
/// any order of forks, writes and exits.
@Suite struct ForkCopyOnWriteTests {
    private static let privatePages = 24
    private static let sharedPages = 4
    private static let sharedBase = base + 256 * p

    /// One process of the simulation: its space and the content its private pages must show.
    private final class Process {
        let space: AddressSpace
        var tokens: [UInt64]
        init(space: AddressSpace, tokens: [UInt64]) {
            self.space = space
            self.tokens = tokens
        }
    }

    private static func sharedAddress(_ index: Int) -> UInt64 { sharedBase + UInt64(index) * p }

    /// Checks every frame's refcount and mapcount against the entries that map it, and the frames
    /// in use against the distinct frames (plus the shared object's cache), without faulting.
    private static func verifyCounts(
        _ processes: [Process], memory: PhysicalMemory, sharedCached: Set<Int>,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        var privateMaps: [UInt64: Int] = [:]
        var sharedMaps: [UInt64: Int] = [:]
        for process in processes {
            for index in 0..<privatePages {
                if let entry = process.space.translate(pageAddress(index)), entry.isPresent,
                    entry.number != PhysicalMemory.zeroFrame
                {
                    privateMaps[entry.number, default: 0] += 1
                }
            }
            for index in 0..<sharedPages {
                if let entry = process.space.translate(sharedAddress(index)), entry.isPresent {
                    sharedMaps[entry.number, default: 0] += 1
                }
            }
        }
        for (frame, maps) in privateMaps {
            #expect(memory.refcount(frame) == maps, "frame \(frame)", sourceLocation: sourceLocation)
            #expect(memory.mapcount(frame) == maps, "frame \(frame)", sourceLocation: sourceLocation)
        }
        for (frame, maps) in sharedMaps {
            // The shared object's page cache holds one more reference.
            #expect(memory.refcount(frame) == maps + 1, "shared frame \(frame)", sourceLocation: sourceLocation)
            #expect(memory.mapcount(frame) == maps, "shared frame \(frame)", sourceLocation: sourceLocation)
        }
        #expect(Set(privateMaps.keys).isDisjoint(with: sharedMaps.keys), sourceLocation: sourceLocation)
        #expect(memory.framesInUse == privateMaps.count + sharedCached.count, sourceLocation: sourceLocation)
    }

    @Test(arguments: [
        (UInt64(1), AddressSpace.FaultPath.speculative), (7, .mmapLock), (2024, .speculative), (0xC0FFEE, .mmapLock),
        (11, .perVMALock), (4242, .perVMALock),
    ])
    func randomForksWritesAndExitsKeepContentAndCountsExact(seed: UInt64, faultPath: AddressSpace.FaultPath) throws {
        var generator = SplitMix64(seed: seed)
        let memory = PhysicalMemory(capacity: 8192, swapSlots: 64)
        let root = try AddressSpace(configuration: .init(faultPath: faultPath), memory: memory)
        try root.map(length: UInt64(Self.privatePages) * p, placement: .fixed(base))
        try root.map(length: UInt64(Self.sharedPages) * p, placement: .fixed(Self.sharedBase), options: [.shared])
        var processes = [Process(space: root, tokens: Array(repeating: 0, count: Self.privatePages))]
        var shared = Array(repeating: UInt64(0), count: Self.sharedPages)
        var sharedCached = Set<Int>()
        var nextToken: UInt64 = 1000
        var forks = 0
        var exits = 0

        for step in 0..<400 {
            let roll = Int.random(in: 0..<100, using: &generator)
            let process = processes[Int.random(in: 0..<processes.count, using: &generator)]
            switch roll {
            case 0..<12 where processes.count < 8:
                let child = try process.space.fork()
                processes.append(Process(space: child, tokens: process.tokens))
                forks += 1
            case 12..<20 where processes.count > 1:
                process.space.teardown()
                processes.removeAll { $0 === process }
                exits += 1
            case 0..<65:
                let index = Int.random(in: 0..<Self.privatePages, using: &generator)
                nextToken += 1
                try process.space.write(nextToken, at: pageAddress(index))
                process.tokens[index] = nextToken
            case 65..<75:
                let index = Int.random(in: 0..<Self.sharedPages, using: &generator)
                nextToken += 1
                try process.space.write(nextToken, at: Self.sharedAddress(index))
                shared[index] = nextToken
                sharedCached.insert(index)
            default:
                let index = Int.random(in: 0..<Self.privatePages, using: &generator)
                #expect(try process.space.read(at: pageAddress(index)) == process.tokens[index])
            }
            if step % 40 == 39 {
                Self.verifyCounts(processes, memory: memory, sharedCached: sharedCached)
                for process in processes {
                    for index in 0..<Self.privatePages {
                        #expect(try process.space.read(at: pageAddress(index)) == process.tokens[index])
                    }
                    for index in 0..<Self.sharedPages {
                        #expect(try process.space.read(at: Self.sharedAddress(index)) == shared[index])
                    }
                }
                // Reads of never-written shared pages allocated cache pages too.
                sharedCached = Set(0..<Self.sharedPages)
                Self.verifyCounts(processes, memory: memory, sharedCached: sharedCached)
                for process in processes { #expect(process.space.audit().entriesExceedingProtection == 0) }
            }
        }
        #expect(forks >= 5 && exits >= 3)
        processes.shuffle(using: &generator)
        while let process = processes.popLast() {
            process.space.teardown()
            // The shared object dies with the last VMA that maps it, after an RCU grace period.
            if processes.isEmpty { RCU.barrier() }
            Self.verifyCounts(processes, memory: memory, sharedCached: processes.isEmpty ? [] : sharedCached)
        }
        #expect(memory.framesInUse == 0)
    }

    @Test func writeOrderDecidesWhoCopies() throws {
        let memory = PhysicalMemory(capacity: 4096, swapSlots: 64)
        let parent = try AddressSpace(memory: memory)
        try parent.map(length: 4 * p, placement: .fixed(base))
        for index in 0..<4 { try parent.write(UInt64(index) + 1, at: base + UInt64(index) * p) }
        let child = try parent.fork()
        #expect(memory.framesInUse == 4)
        let original = parent.translate(base)!.number
        #expect(child.translate(base)?.number == original)
        #expect(parent.translate(base)?.isWritable == false && child.translate(base)?.isWritable == false)

        // The child writes first: it copies, the parent's frame becomes exclusive again.
        try child.write(10, at: base)
        #expect(child.translate(base)?.number != original)
        #expect(child.statistics[.copyOnWriteFaults] == 1)
        #expect(memory.refcount(original) == 1)
        try parent.write(20, at: base)
        #expect(parent.translate(base)?.number == original)  // reused, no copy
        #expect(parent.statistics[.copyOnWriteFaults] == 0)
        #expect(memory.framesInUse == 5)

        // The parent exits; the child's remaining shared pages become exclusive and are reused.
        parent.teardown()
        let shared = child.translate(base + p)!.number
        #expect(memory.refcount(shared) == 1 && memory.mapcount(shared) == 1)
        try child.write(30, at: base + p)
        #expect(child.translate(base + p)?.number == shared)
        #expect(child.statistics[.copyOnWriteFaults] == 1)
        #expect(try child.read(at: base) == 10)
        #expect(try child.read(at: base + p) == 30)
        #expect(try child.read(at: base + 2 * p) == 3)
        child.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test func zeroPageAndSwapEntriesAreSharedByReference() throws {
        let memory = PhysicalMemory(capacity: 4096, swapSlots: 64)
        let parent = try AddressSpace(memory: memory)
        try parent.map(length: 4 * p, placement: .fixed(base))
        _ = try parent.read(at: base)  // zero page
        try parent.write(5, at: base + p)
        try parent.advise(address: base + p, length: p, advice: .pageOut)
        #expect(parent.translate(base + p)?.isSwap == true)
        let child = try parent.fork()
        #expect(child.translate(base)?.number == PhysicalMemory.zeroFrame)
        #expect(child.translate(base + p)?.swapSlot == parent.translate(base + p)?.swapSlot)
        #expect(try child.read(at: base + p) == 5)
        #expect(try parent.read(at: base + p) == 5)
        try child.write(6, at: base)
        #expect(try parent.read(at: base) == 0)
        parent.teardown()
        child.teardown()
        #expect(memory.framesInUse == 0)
    }
}
