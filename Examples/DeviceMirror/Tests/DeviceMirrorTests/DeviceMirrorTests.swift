import DeviceMirror
import Shootdown
import Synchronization
import Testing

@Suite("Device mirror")
struct DeviceMirrorTests {
    @Test("A device fault maps its prefetch window; later accesses in it do not fault")
    func faultAndPrefetch() throws {
        let memory = PhysicalMemory(capacity: 4096)
        let space = try AddressSpace(memory: memory)
        let base = try space.map(length: 64 * page, placement: .fixed(0x4000_0000))
        let device = try DeviceMirror(space: space, start: base, length: 64 * page, prefetch: 16)
        #expect(try device.load(at: base + 5 * page) == 0)
        #expect(device.count == 16 && device.statistics.faults == 1)
        for index in 0..<16 { _ = try device.load(at: base + UInt64(index) * page) }
        #expect(device.statistics.faults == 1)
        // A read fault maps read-only where the CPU page is the shared zero page; a store faults
        // for writing (its window now writable).
        try device.store(3, at: base + 20 * page)
        #expect(device.statistics.faults == 2 && device.translation(for: base + 20 * page)?.writable == true)
        #expect(throws: DeviceError.outsideInterval) { try device.load(at: base + 64 * page) }
        #expect(device.audit().isEmpty)
        device.detach()
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test("Device stores reach the CPU, CPU stores reach the device")
    func coherence() throws {
        let memory = PhysicalMemory(capacity: 4096)
        let space = try AddressSpace(memory: memory)
        let base = try space.map(length: 16 * page)
        let device = try DeviceMirror(space: space, start: base, length: 16 * page)
        try device.store(11, at: base + page)
        #expect(try space.read(at: base + page) == 11)
        try space.write(12, at: base + 2 * page)
        #expect(try device.load(at: base + 2 * page) == 12)
        device.detach()
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test("mprotect downgrades, munmap and dontNeed remove, and the device sees the CPU's new state")
    func invalidations() throws {
        let memory = PhysicalMemory(capacity: 4096)
        let space = try AddressSpace(memory: memory)
        let base = try space.map(length: 16 * page)
        let device = try DeviceMirror(space: space, start: base, length: 16 * page)
        for index in 0..<16 { try device.store(UInt64(index), at: base + UInt64(index) * page) }
        #expect(device.count == 16)

        try space.protect(address: base, length: 4 * page, protection: .read)
        #expect(device.translation(for: base)?.writable == false)  // kept, read-only
        #expect(try device.load(at: base + page) == 1)
        #expect(throws: DeviceError.fault(.badAddress)) { try device.store(9, at: base) }

        try space.advise(address: base + 4 * page, length: 2 * page, advice: .dontNeed)
        #expect(device.translation(for: base + 4 * page) == nil)
        #expect(try device.load(at: base + 4 * page) == 0)  // fresh memory after dontNeed

        try space.unmap(address: base + 8 * page, length: 4 * page)
        #expect(device.translation(for: base + 8 * page) == nil)
        #expect(throws: DeviceError.fault(.badAddress)) { try device.load(at: base + 8 * page) }
        let statistics = device.statistics
        #expect(statistics.pagesDowngraded == 4 && statistics.pagesUnmapped >= 6)
        #expect(device.audit().isEmpty)
        device.detach()
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test("After fork, a device store breaks copy-on-write in the parent; the child keeps the old page")
    func forkCopyOnWrite() throws {
        let memory = PhysicalMemory(capacity: 4096)
        let space = try AddressSpace(memory: memory)
        let base = try space.map(length: 4 * page)
        let device = try DeviceMirror(space: space, start: base, length: 4 * page)
        try device.store(1, at: base)
        let child = try space.fork()
        #expect(device.translation(for: base)?.writable == false)  // fork write-protected it
        try device.store(2, at: base)
        #expect(try space.read(at: base) == 2)
        #expect(try child.read(at: base) == 1)
        #expect(device.audit().isEmpty)
        child.teardown()
        device.detach()
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test("Teardown and detach end device access")
    func lifecycle() throws {
        let memory = PhysicalMemory(capacity: 4096)
        var space: AddressSpace? = try AddressSpace(memory: memory)
        let base = try space!.map(length: 4 * page)
        let device = try DeviceMirror(space: space!, start: base, length: 4 * page)
        try device.store(1, at: base)
        space!.teardown()
        #expect(device.count == 0)  // the release invalidation emptied the table
        #expect(throws: DeviceError.spaceGone) { try device.load(at: base) }
        space = nil
        #expect(throws: DeviceError.spaceGone) { try device.load(at: base) }
        device.detach()
        #expect(throws: DeviceError.detached) { try device.load(at: base) }
        #expect(memory.framesInUse == 0)

        let other = try AddressSpace(memory: memory)
        let start = try other.map(length: 4 * page)
        let second = try DeviceMirror(space: other, start: start, length: 4 * page)
        #expect(other.intervalNotifierCount == 1)
        second.detach()
        second.detach()
        #expect(other.intervalNotifierCount == 0)
        #expect(throws: DeviceError.detached) { try second.store(1, at: start) }
        other.teardown()
    }
}

@Suite("Device mirror, randomized and concurrent")
struct DeviceMirrorStressTests {
    /// Random device loads and stores, CPU stores, munmap, map over, mprotect, dontNeed, fork and
    /// child exit over 96 pages. After every step the device table agrees with the CPU page table
    /// (same frame, never writable where the CPU is not), and every value the device loads is what
    /// the CPU reads at that moment. `DEVMIRROR_SEED`, `DEVMIRROR_SEEDS`, `DEVMIRROR_STEPS`.
    @Test("Audit after every step")
    func randomized() throws {
        let first = environmentNumber("DEVMIRROR_SEED", default: 1)
        let seeds = environmentNumber("DEVMIRROR_SEEDS", default: 8)
        let steps = environmentNumber("DEVMIRROR_STEPS", default: 400)
        for seed in first..<(first + seeds) {
            var random = SplitMix64(seed: UInt64(seed))
            let memory = PhysicalMemory(capacity: 1 << 14)
            let space = try AddressSpace(memory: memory)
            let pages = 96
            let base = try space.map(length: UInt64(pages) * page)
            let device = try DeviceMirror(space: space, start: base, length: UInt64(pages) * page, prefetch: 8)
            var children: [AddressSpace] = []
            var token: UInt64 = 1
            for step in 0..<steps {
                let count = 1 + random.below(8)
                let address = base + UInt64(random.below(pages - count + 1)) * page
                let length = UInt64(count) * page
                token += 1
                var what = ""
                switch random.below(10) {
                case 0, 1:
                    what = "device load"
                    if let value = try? device.load(at: address) {
                        #expect(value == (try? space.read(at: address)), "seed \(seed) step \(step)")
                    }
                case 2, 3:
                    what = "device store"
                    do {
                        try device.store(token, at: address)
                        #expect(try space.read(at: address) == token, "seed \(seed) step \(step)")
                    } catch DeviceError.fault(.badAddress) {}
                case 4: what = "CPU store"; _ = try? space.write(token, at: address)
                case 5: what = "unmap"; try space.unmap(address: address, length: length)
                case 6: what = "map fixed"; _ = try space.map(length: length, placement: .fixed(address))
                case 7:
                    what = "protect"
                    try? space.protect(address: address, length: length, protection: [.read, .readWrite, .none][random.below(3)])
                case 8: what = "dontNeed"; try? space.advise(address: address, length: length, advice: .dontNeed)
                default:
                    what = "fork / exit"
                    if children.count < 3 { children.append(try space.fork()) } else { children.removeFirst().teardown() }
                }
                let problems = device.audit()
                #expect(problems.isEmpty, "seed \(seed) step \(step) (\(what)): \(problems.prefix(3))")
                if !problems.isEmpty { break }
            }
            if seed == first { print("randomized, seed \(seed):", device.statistics) }
            device.detach()
            for child in children { child.teardown() }
            space.teardown()
            #expect(memory.framesInUse == 0)
        }
    }

    /// Checks at the start of every invalidation, after the interval handlers ran and before the
    /// CPU entries change: the device holds no translation in the range, or only read-only ones
    /// when the change only takes write access away.
    final class Checker: MMUNotifier {
        let device: DeviceMirror
        let violations = Atomic<Int>(0)
        init(device: DeviceMirror) { self.device = device }
        var callbacks: NotifierCallbacks { .invalidateRangeStart }
        func invalidateRangeStart(_ range: InvalidationRange) -> Bool {
            let held = device.translations(intersecting: range.start, range.end)
            let bad = range.onlyDowngradesToReadOnly ? held.contains { $0.writable } : !held.isEmpty
            if bad { violations.add(1, ordering: .relaxed) }
            return true
        }
    }

    @Test("Device loads and stores on one thread, munmap/mprotect/fork on another")
    func twoThreads() throws {
        let iterations = environmentNumber("DEVMIRROR_ITERATIONS", default: 20_000)
        let memory = PhysicalMemory(capacity: 1 << 15)
        let space = try AddressSpace(memory: memory)
        let pages = 64
        let base = try space.map(length: UInt64(pages) * page)
        let device = try DeviceMirror(space: space, start: base, length: UInt64(pages) * page, prefetch: 8)
        let checker = Checker(device: device)
        try space.registerNotifier(checker)
        let stop = Atomic<Bool>(false)
        let stale = Atomic<Int>(0)

        let changer = TestThread {
            var random = SplitMix64(seed: 3)
            var changes = 0
            while !stop.load(ordering: .relaxed) || changes < 50 {
                changes += 1
                let count = 1 + random.below(8)
                let address = base + UInt64(random.below(pages - count + 1)) * page
                let length = UInt64(count) * page
                switch random.below(6) {
                case 0: try? space.unmap(address: address, length: length)
                case 1: _ = try? space.map(length: length, placement: .fixed(address))
                case 2: try? space.protect(address: address, length: length, protection: .read)
                case 3: try? space.protect(address: address, length: length, protection: .readWrite)
                case 4: try? space.advise(address: address, length: length, advice: .dontNeed)
                default: (try? space.fork())?.teardown()
                }
            }
        }

        var random = SplitMix64(seed: 4)
        for iteration in 0..<iterations {
            let address = base + UInt64(random.below(pages)) * page
            do {
                if random.below(2) == 0 {
                    _ = try device.load(at: address)
                } else {
                    try device.store(UInt64(iteration), at: address)
                }
            } catch DeviceError.staleTranslation {
                stale.add(1, ordering: .relaxed)
            } catch {
                // Unmapped or read-only at that moment: the device fault is refused.
            }
        }
        stop.store(true, ordering: .relaxed)
        changer.join()

        #expect(stale.load(ordering: .relaxed) == 0)
        #expect(checker.violations.load(ordering: .relaxed) == 0)
        #expect(device.audit().isEmpty)
        let statistics = device.statistics
        #expect(statistics.faults > 0 && statistics.invalidations > 0)
        print("two threads:", statistics)
        device.detach()
        space.unregisterNotifier(checker)
        space.teardown()
        #expect(memory.framesInUse == 0)
    }
}
