import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// Per-page write progress published by the parent's writers, so a forker can bound what a child
/// may see: a child forked between two reads of these holds, for each page, a token written no
/// earlier than `completed` (read before the fork) and no later than `started` (read after it).
final class ConcurrentWriteProgress: @unchecked Sendable {
    let count: Int
    private let started: UnsafeMutablePointer<Atomic<UInt64>>
    private let completed: UnsafeMutablePointer<Atomic<UInt64>>

    init(pages: Int) {
        count = pages
        started = .allocate(capacity: pages)
        completed = .allocate(capacity: pages)
        for index in 0..<pages {
            (started + index).initialize(to: Atomic(0))
            (completed + index).initialize(to: Atomic(0))
        }
    }

    deinit {
        started.deinitialize(count: count)
        started.deallocate()
        completed.deinitialize(count: count)
        completed.deallocate()
    }

    /// Before writing sequence `sequence` to `page`. (Relaxed: the write itself takes the lock
    /// that fork's copy takes, which orders this store before anything fork copies.)
    func willWrite(_ page: Int, _ sequence: UInt64) { started[page].store(sequence, ordering: .relaxed) }
    /// After the write returned. (Releasing: pairs with the forker's acquiring load before fork.)
    func didWrite(_ page: Int, _ sequence: UInt64) { completed[page].store(sequence, ordering: .releasing) }
    func lowerBound(_ page: Int) -> UInt64 { completed[page].load(ordering: .acquiring) }
    func upperBound(_ page: Int) -> UInt64 { started[page].load(ordering: .relaxed) }
}

/// Copy-on-write under concurrency: the parent's writers keep writing sequenced tokens to their own
/// pages (reading each back at once) while a forker forks the parent, forks children, writes into
/// children (copy-on-write racing with the parent's own copy-on-write of the same frames), pages
/// some of them out (swap entries shared by fork), and tears children down.
///
/// Checks: every read returns the last value written in that space; a new child sees, per page, a
/// token within the bounds published around its fork; children never see parent writes made after
/// their fork or each other's; at quiescence every frame's mapcount and refcount equal the number
/// of entries mapping it in all live spaces; after every space is gone no frame and no swap slot is
/// in use.
@Suite("ConcurrentCopyOnWrite")
struct ConcurrentCopyOnWriteTests {
    static let page = AddressSpace.pageSize
    static let writers = 2
    static let pagesPerWriter = 24
    static var pageCount: Int { writers * pagesPerWriter }
    /// Straddles a 2 MiB boundary.
    static let base: UInt64 = 0x30_0000_0000 - 16 * page

    static func address(_ page: Int) -> UInt64 { base + UInt64(page) * Self.page }
    static func token(_ page: Int, _ sequence: UInt64) -> UInt64 { UInt64(page) << 40 | sequence }
    /// Child tokens carry bit 63 and the child's number.
    static func childToken(_ child: Int, _ page: Int, _ sequence: UInt64) -> UInt64 {
        1 << 63 | UInt64(child) << 48 | UInt64(page) << 40 | sequence
    }

    @Test(arguments: AddressSpace.FaultPath.allCases)
    func forkWhileWriting(path: AddressSpace.FaultPath) throws {
        let memory = PhysicalMemory(capacity: 1 << 13, swapSlots: 1 << 11)
        let parent = try AddressSpace(configuration: .init(faultPath: path), memory: memory)
        try parent.map(length: UInt64(Self.pageCount) * Self.page, placement: .fixed(Self.base))
        let progress = ConcurrentWriteProgress(pages: Self.pageCount)
        for page in 0..<Self.pageCount {
            progress.willWrite(page, 1)
            try parent.write(Self.token(page, 1), at: Self.address(page))
            progress.didWrite(page, 1)
        }
        let violations = ConcurrentViolations()
        let writeIterations = ConcurrentHarness.iterations(50_000)
        let forks = ConcurrentHarness.iterations(150, minimum: 4)
        let writersLeft = ConcurrentCountdown(Self.writers)
        let survivors = ConcurrentLocked<[(AddressSpace, [Int: UInt64])]>([])

        let writer: @Sendable (Int) -> Void = { index in
            var random = SplitMix64(spreading: 0xC0_0000 &+ UInt64(index))
            defer { writersLeft.arrive() }
            let owned = (index * Self.pagesPerWriter)..<((index + 1) * Self.pagesPerWriter)
            var sequences = [UInt64](repeating: 1, count: Self.pagesPerWriter)
            for _ in 0..<writeIterations {
                let page = owned.lowerBound + random.index(below: Self.pagesPerWriter)
                let slot = page - owned.lowerBound
                let address = Self.address(page)
                do {
                    switch random.below(20) {
                    case 0:
                        // Swap it out (an exclusive frame only); the value must survive.
                        try parent.advise(address: address, length: Self.page, advice: .pageOut)
                    case 1..<5:
                        let seen = try parent.read(at: address)
                        if seen != Self.token(page, sequences[slot]) {
                            violations.record("parent page \(page): read \(seen.hex), last wrote \(Self.token(page, sequences[slot]).hex)")
                        }
                    default:
                        let sequence = sequences[slot] + 1
                        progress.willWrite(page, sequence)
                        try parent.write(Self.token(page, sequence), at: address)
                        progress.didWrite(page, sequence)
                        sequences[slot] = sequence
                        let seen = try parent.read(at: address)
                        if seen != Self.token(page, sequence) {
                            violations.record("parent page \(page): read \(seen.hex) right after writing \(Self.token(page, sequence).hex)")
                        }
                    }
                } catch {
                    violations.record("parent writer \(index) page \(page): \(error)")
                }
            }
        }

        let forker: @Sendable () -> Void = {
            var random = SplitMix64(spreading: 0xF0_4C)
            // Live children with the tokens this thread wrote into them (unwritten pages: absent).
            var children: [(space: AddressSpace, number: Int, model: [Int: UInt64], inherited: [UInt64])] = []
            var number = 0
            var forked = 0
            func check(_ child: (space: AddressSpace, number: Int, model: [Int: UInt64], inherited: [UInt64])) {
                for page in 0..<Self.pageCount {
                    let expected = child.model[page] ?? child.inherited[page]
                    do {
                        let seen = try child.space.read(at: Self.address(page))
                        if seen != expected {
                            violations.record("child \(child.number) page \(page): read \(seen.hex), expected \(expected.hex)")
                        }
                    } catch {
                        violations.record("child \(child.number) page \(page): \(error)")
                    }
                }
            }
            // Fork until the writers are done (and at least `forks` times).
            while forked < forks || !writersLeft.isDone {
                forked += 1
                if forked > 100_000 { break }
                do {
                    let action = children.isEmpty ? 0 : random.below(10)
                    switch action {
                    case 0..<3:
                        // Fork the parent while its writers run; check the bounds.
                        let lower = (0..<Self.pageCount).map { progress.lowerBound($0) }
                        let child = try parent.fork()
                        let upper = (0..<Self.pageCount).map { progress.upperBound($0) }
                        number += 1
                        var inherited: [UInt64] = []
                        for page in 0..<Self.pageCount {
                            let seen = try child.read(at: Self.address(page))
                            let sequence = seen & 0xFF_FFFF_FFFF
                            if seen >> 40 != UInt64(page) || sequence < lower[page] || sequence > upper[page] {
                                violations.record("child \(number) page \(page): read \(seen.hex), expected a sequence in \(lower[page])...\(upper[page])")
                            }
                            inherited.append(seen)
                        }
                        children.append((child, number, [:], inherited))
                    case 3..<6:
                        // Write into a child (copy-on-write against the parent's writers).
                        let which = random.index(below: children.count)
                        for _ in 0..<8 {
                            let page = random.index(below: Self.pageCount)
                            let token = Self.childToken(children[which].number, page, UInt64(forked))
                            try children[which].space.write(token, at: Self.address(page))
                            children[which].model[page] = token
                        }
                    case 6:
                        // Page a child out (its exclusive frames go to swap).
                        let which = random.index(below: children.count)
                        try children[which].space.advise(
                            address: Self.base, length: UInt64(Self.pageCount) * Self.page, advice: .pageOut)
                    case 7:
                        // Fork a child: the grandchild starts with exactly the child's content.
                        let which = random.index(below: children.count)
                        let grandchild = try children[which].space.fork()
                        number += 1
                        var inherited: [UInt64] = []
                        for page in 0..<Self.pageCount {
                            inherited.append(children[which].model[page] ?? children[which].inherited[page])
                        }
                        let entry = (space: grandchild, number: number, model: [Int: UInt64](), inherited: inherited)
                        check(entry)
                        children.append(entry)
                    default:
                        // Check a child, then tear it down (the parent's frames become exclusive again).
                        let which = random.index(below: children.count)
                        check(children[which])
                        children[which].space.teardown()
                        children.remove(at: which)
                    }
                    if children.count > 4 {
                        check(children[0])
                        children[0].space.teardown()
                        children.removeFirst()
                    }
                } catch {
                    violations.record("forker: \(error)")
                }
            }
            for child in children { check(child) }
            let kept = children.map { child in
                (child.space, Dictionary(uniqueKeysWithValues: (0..<Self.pageCount).map {
                    ($0, child.model[$0] ?? child.inherited[$0])
                }))
            }
            survivors.withLock { $0 = kept }
        }

        var bodies: [@Sendable () -> Void] = []
        for index in 0..<Self.writers { bodies.append { writer(index) } }
        bodies.append(forker)
        guard ConcurrentHarness.run("cow", bodies) else { return }
        violations.expectNone("copy-on-write")

        // Quiescent: exact frame accounting over every live space.
        let spaces = [parent] + survivors.withLock { $0.map(\.0) }
        var mappings: [UInt64: Int] = [:]
        var slots: Set<UInt32> = []
        for space in spaces {
            for page in 0..<Self.pageCount {
                guard let entry = space.translate(Self.address(page)) else { continue }
                if let slot = entry.swapSlot {
                    slots.insert(slot)
                } else if let frame = entry.frame, frame != PhysicalMemory.zeroFrame {
                    mappings[frame, default: 0] += 1
                }
            }
        }
        for (frame, count) in mappings {
            #expect(memory.mapcount(frame) == count, "frame \(frame): mapcount \(memory.mapcount(frame)), mapped \(count) times")
            #expect(memory.refcount(frame) == count, "frame \(frame): refcount \(memory.refcount(frame)), mapped \(count) times")
        }
        #expect(memory.framesInUse == mappings.count)
        #expect(memory.swap.slotsInUse == slots.count)
        // Every survivor still reads its own content.
        for (space, model) in survivors.withLock({ $0 }) {
            for (page, token) in model { #expect(try space.read(at: Self.address(page)) == token) }
        }
        ConcurrentHarness.report("cow: \(parent.statistics.nonZero)")

        for space in spaces { space.teardown() }
        RCU.barrier()
        #expect(memory.framesInUse == 0)
        #expect(memory.swap.slotsInUse == 0)
    }
}
