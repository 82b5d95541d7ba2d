import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// The frame allocator's shards under threads that allocate what other threads freed: a dry shard
/// takes a batch from another shard by detaching its whole list for a moment. While one thread
/// holds a list detached, another must neither conclude that memory is exhausted (a spurious
/// `ENOMEM` with frames free) nor lose or duplicate frames.
@Suite("ConcurrentFrameAllocator")
struct ConcurrentFrameAllocatorTests {
    static let threads = 4
    static let perThread = 512  // the threads together can hold every frame at once

    @Test("frames freed on one thread are found by the others: never a spurious ENOMEM, none lost, none twice")
    func batchStealsKeepEveryFrame() {
        let capacity = Self.threads * Self.perThread
        let memory = PhysicalMemory(capacity: capacity)
        #expect(memory.capacity == capacity)
        // Use up every never-used block on this thread and free it all here, so the workers start
        // with empty shards and must take their frames from this thread's shard.
        var initial: [UInt64] = []
        while let frame = memory.allocate() { initial.append(frame) }
        #expect(initial.count == capacity)
        for frame in initial { memory.freeUnused(frame) }

        let owners = UnsafeMutablePointer<Atomic<UInt8>>.allocate(capacity: capacity + 1024)
        for index in 0..<(capacity + 1024) { (owners + index).initialize(to: Atomic(0)) }
        defer { owners.deallocate() }
        nonisolated(unsafe) let ownersPointer = owners
        let violations = ConcurrentViolations()
        let rounds = ConcurrentHarness.iterations(5000, minimum: 100)

        let bodies: [@Sendable () -> Void] = (0..<Self.threads).map { index in
            {
                var random = SplitMix64(spreading: 0xF4A3E &+ UInt64(index))
                var held: [UInt64] = []
                held.reserveCapacity(Self.perThread)
                for round in 0..<rounds {
                    // Mostly the full share: then together the threads need every frame, and the last
                    // ones each needs often sit in a list another thread has detached.
                    let wanted = random.chance(75) ? Self.perThread : random.int(1...Self.perThread)
                    for _ in 0..<wanted {
                        guard let frame = memory.allocate() else {
                            violations.record("thread \(index) round \(round): ENOMEM holding \(held.count) of its \(Self.perThread)")
                            break
                        }
                        if frame == 0 || frame >= UInt64(memory.capacity + PhysicalMemory.framesPerHugePage) {
                            violations.record("thread \(index): frame \(frame) out of range")
                            continue
                        }
                        if ownersPointer[Int(frame)].exchange(1, ordering: .relaxed) != 0 {
                            violations.record("thread \(index): frame \(frame) handed out twice")
                        }
                        held.append(frame)
                    }
                    // Free in a random order, so shards hold scattered lists.
                    held.shuffle(using: &random)
                    for frame in held {
                        ownersPointer[Int(frame)].store(0, ordering: .relaxed)
                        memory.freeUnused(frame)
                    }
                    held.removeAll(keepingCapacity: true)
                }
            }
        }
        guard ConcurrentHarness.run("frame-allocator", bodies) else { return }
        violations.expectNone("frame allocator")
        #expect(memory.framesInUse == 0)

        // Nothing lost: every frame can be allocated again, from this thread, and then no more.
        var again = Set<UInt64>()
        while let frame = memory.allocate() { again.insert(frame) }
        #expect(again.count == capacity, "frames lost or duplicated across shards")
        for frame in again { memory.freeUnused(frame) }
    }
}
