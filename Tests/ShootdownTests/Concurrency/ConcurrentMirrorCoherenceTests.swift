import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// Checks, inside every invalidation's start, what ``SoftwareMirror`` promises: "after every
/// invalidation's start returns, the mirror holds no translation to a frame that the invalidation
/// removes". Registered after the mirror, so the mirror's interval notifier (called before classic
/// subscribers in start) has already run when this checks.
///
/// - `unmap`, `clear`, `migrate`, `release`, and `protectionVMA` to `PROT_NONE`: no translation in
///   the range may remain;
/// - other protection events (`protectionVMA` keeping read access, `protectionPage`, `softDirty`):
///   no writable translation may remain.
final class ConcurrentMirrorAuditor: MMUNotifier, @unchecked Sendable {
    let mirror: SoftwareMirror
    let violations: ConcurrentViolations
    /// Starts that overlapped the mirror's interval.
    let checks = Atomic<Int>(0)
    /// Of those, how many found the mirror holding translations elsewhere (the check had teeth).
    let checksWithTranslations = Atomic<Int>(0)

    init(mirror: SoftwareMirror, violations: ConcurrentViolations) {
        self.mirror = mirror
        self.violations = violations
    }

    var callbacks: NotifierCallbacks { [.invalidateRangeStart, .invalidateRangeEnd] }

    func invalidateRangeStart(_ range: InvalidationRange) -> Bool {
        let low = max(range.start, mirror.start)
        let high = min(range.end, mirror.end)
        guard low < high else { return true }
        checks.add(1, ordering: .relaxed)
        let held = mirror.translations
        if !held.isEmpty { checksWithTranslations.add(1, ordering: .relaxed) }
        let dropAll: Bool
        switch range.event {
        case .unmap, .clear, .migrate, .release, .exclusive: dropAll = true
        case .protectionVMA, .protectionPage, .softDirty: dropAll = !range.onlyDowngradesToReadOnly
        }
        for (page, translation) in held where page >= low && page < high {
            if dropAll {
                violations.record(
                    "\(range): mirror still holds \(page.hex) -> frame \(translation.frame) after start")
            } else if translation.writable {
                violations.record(
                    "\(range): mirror still holds writable \(page.hex) -> frame \(translation.frame) after start")
            }
        }
        return true
    }

    func invalidateRangeEnd(_ range: InvalidationRange) {}
}

@Suite("ConcurrentMirrorCoherence")
struct ConcurrentMirrorCoherenceTests {
    static let page = AddressSpace.pageSize
    static let pages: UInt64 = 96
    /// Straddles a 2 MiB boundary (two PTE tables).
    static let base: UInt64 = 0x20_0000_0000 - 32 * page

    @Test(arguments: AddressSpace.FaultPath.allCases)
    func mirrorNeverHoldsRemovedTranslations(path: AddressSpace.FaultPath) throws {
        let memory = PhysicalMemory(capacity: 1 << 14, swapSlots: 1 << 12)
        let space = try AddressSpace(configuration: .init(faultPath: path), memory: memory)
        let page = Self.page
        let base = Self.base
        let end = base + Self.pages * page
        try space.map(length: end - base, placement: .fixed(base))
        for (offset, address) in eachPage(base, end).enumerated() {
            try space.write(UInt64(offset + 1), at: address)
        }
        let mirror = try SoftwareMirror(space: space, start: base, length: end - base)
        try mirror.populate(address: base, length: end - base, write: true)
        let violations = ConcurrentViolations()
        let auditor = ConcurrentMirrorAuditor(mirror: mirror, violations: violations)
        try space.registerNotifier(auditor)  // after the mirror

        let readers = 2
        let churners = 2
        let readIterations = ConcurrentHarness.iterations(40_000)
        let churnIterations = ConcurrentHarness.iterations(5_000)
        let readersLeft = ConcurrentCountdown(readers)
        let mirrorOps = Atomic<Int>(0)
        let churnOps = Atomic<Int>(0)

        let reader: @Sendable (Int) -> Void = { index in
            var random = SplitMix64(spreading: 0x3122 &+ UInt64(index))
            defer { readersLeft.arrive() }
            for _ in 0..<readIterations {
                let first = random.below(Self.pages)
                let address = base + first * page
                do {
                    switch random.below(10) {
                    case 0..<3:
                        _ = try mirror.read(at: address + random.below(page))
                    case 3:
                        try mirror.fault(at: address, write: random.chance(50))
                    case 4:
                        // A device store: the engine checks the translation against the CPU page
                        // table under the split lock (SoftwareMirror traps if it is stale).
                        try mirror.write(UInt64(index + 1) << 56 | random.below(1 << 32), at: address)
                    case 5:
                        // A migration the mirror asks for itself (tagged with its owner).
                        let count = UInt64(random.int(1...Int(min(8, Self.pages - first))))
                        _ = try mirror.migrate(address: address, length: count * page)
                    default:
                        let count = UInt64(random.int(1...Int(min(32, Self.pages - first))))
                        try mirror.populate(address: address, length: count * page, write: random.chance(50))
                    }
                    mirrorOps.add(1, ordering: .relaxed)
                } catch MemoryError.badAddress {
                    // Unmapped, or not accessible with the protection of the moment.
                } catch MemoryError.noMemory {
                    // migrate over a hole.
                } catch {
                    violations.record("mirror access at \(address.hex) threw \(error)")
                }
            }
        }

        let churner: @Sendable (Int) -> Void = { index in
            var random = SplitMix64(spreading: 0xC0DE &+ UInt64(index))
            var operations = 0
            // At least `churnIterations`, and on while readers run (bounded: 10 times that).
            while operations < churnIterations || (!readersLeft.isDone && operations < 10 * churnIterations) {
                operations += 1
                let first = random.below(Self.pages)
                let count = UInt64(random.int(1...Int(min(12, Self.pages - first))))
                let low = base + first * page
                let high = low + count * page
                do {
                    // Churner 0 changes structure (mmap write lock), churner 1 pages (mmap read
                    // lock), over overlapping ranges: two writers would starve the readers, since
                    // the mmap lock prefers writers.
                    switch index % 2 == 0 ? random.below(10) : 10 + random.below(40) {
                    case 0:
                        try space.unmap(address: low, length: high - low)
                    case 1, 2:
                        try space.map(length: high - low, placement: .fixed(low))
                    case 3, 4, 5:
                        let protections: [Protection] = [.read, .none, .readWrite, .readWrite]
                        try space.protect(address: low, length: high - low, protection: random.pick(protections))
                    case 6, 7:
                        // Move part of one VMA elsewhere inside the region (replacing what is there).
                        let vmas = space.mappings().filter { $0.end > base && $0.start < end }
                        guard let vma = vmas.randomElement(using: &random) else { continue }
                        let start = max(vma.start, base)
                        let stop = min(vma.end, end)
                        let length = UInt64(random.int(1...Int(min(16, (stop - start) / page)))) * page
                        let source = start + random.below((stop - start - length) / page + 1) * page
                        let newLength = UInt64(random.int(1...16)) * page
                        let target = base + random.below(Self.pages - newLength / page + 1) * page
                        guard target + newLength <= source || source + length <= target else { continue }
                        try space.remap(address: source, oldLength: length, newLength: newLength, move: .fixed(target))
                    case 8:
                        let child = try space.fork()  // protectionPage on the parent, then copy-on-write
                        child.teardown()
                    case 9:
                        try space.clearSoftDirty(address: low, length: high - low)  // softDirty
                    case 10..<18:
                        try space.advise(address: low, length: high - low, advice: .dontNeed)
                    case 18..<26:
                        try space.advise(address: low, length: high - low, advice: .pageOut)
                    case 26..<30:
                        _ = try space.migrate(address: low, length: high - low)
                    case 30:
                        _ = try space.reclaim(pages: Int(count))  // `clear` over whole VMAs
                    case 31:
                        // Non-blockable `unmap` of every private VMA; the mirror may refuse (its lock
                        // is busy), and then the auditor is not called and the VMA stays intact.
                        do {
                            _ = try space.reap(attempts: 1)
                        } catch MemoryError.wouldBlock {}
                    case 32, 33:
                        _ = try space.age(address: low, length: high - low, flush: random.chance(50))
                    default:
                        for address in eachPage(low, high) {
                            try space.write(UInt64(index + 1) << 48 | UInt64(operations), at: address)
                        }
                    }
                } catch MemoryError.noMemory {
                    // protect/advise/migrate over a hole.
                } catch MemoryError.badAddress {
                    // remap: the source no longer lies in one VMA (the other churner changed it).
                } catch MemoryError.segmentationFault {
                    // write to a page that is not writable right now.
                } catch {
                    violations.record("churner \(index) op on [\(low.hex), \(high.hex)): \(error)")
                }
            }
            churnOps.add(operations, ordering: .relaxed)
        }

        var bodies: [@Sendable () -> Void] = []
        for index in 0..<readers { bodies.append { reader(index) } }
        for index in 0..<churners { bodies.append { churner(index) } }
        guard ConcurrentHarness.run("mirror", bodies) else { return }

        violations.expectNone("mirror coherence")
        ConcurrentHarness.report("mirror: mirrorOps=\(mirrorOps.load(ordering: .relaxed)) churn=\(churnOps.load(ordering: .relaxed)) checks=\(auditor.checks.load(ordering: .relaxed)) withTranslations=\(auditor.checksWithTranslations.load(ordering: .relaxed)) invalidations=\(mirror.invalidationCount) \(space.statistics.nonZero)")
        #expect(auditor.checks.load(ordering: .relaxed) > 0)
        // Some of those checks found translations to look at (hundreds even at the 0.01 scale floor).
        #expect(auditor.checksWithTranslations.load(ordering: .relaxed) > 0)
        #expect(mirrorOps.load(ordering: .relaxed) > 0)

        // Quiescent: every translation the mirror holds is still what the CPU page table maps, and
        // no more permissive.
        ConcurrentHarness.expectMirrorCoherent(mirror, with: space)

        space.teardown()
        #expect(mirror.count == 0)
        mirror.detach()
        RCU.barrier()
        violations.expectNone("mirror coherence at teardown")
        #expect(memory.framesInUse == 0)
        #expect(memory.swap.slotsInUse == 0)
    }
}
