import RegistrationCache
import Shootdown
import Synchronization
import Testing

@Suite("Registration cache, randomized")
struct RandomizedRegistrationTests {
    /// Random registrations, device and CPU accesses, and address-space changes (munmap, map over,
    /// mprotect, madvise, fork, child exit, sweeps) over a 128-page window. After every step:
    /// - the audit holds: every valid registration's pinned frames are what the page table maps;
    /// - no registration that was valid before the step survives an invalidation (recorded by a
    ///   classic subscriber) that intersects its range;
    /// - device stores through a valid registration are what the CPU reads, and vice versa.
    /// `REGCACHE_SEED` replays one seed, `REGCACHE_SEEDS` and `REGCACHE_STEPS` widen the run.
    @Test("Audit after every step")
    func randomized() throws {
        let first = environmentNumber("REGCACHE_SEED", default: 1)
        let seeds = environmentNumber("REGCACHE_SEEDS", default: 8)
        let steps = environmentNumber("REGCACHE_STEPS", default: 400)
        for seed in first..<(first + seeds) {
            try run(seed: UInt64(seed), steps: steps)
        }
    }

    private func run(seed: UInt64, steps: Int) throws {
        var random = SplitMix64(seed: seed)
        let memory = PhysicalMemory(capacity: 1 << 14)
        let space = try AddressSpace(memory: memory)
        let pages = 128
        let base = try space.map(length: UInt64(pages) * page)
        let log = RangeLog()
        try space.registerNotifier(log)
        let cache = RegistrationCache(space: space)
        var handles: [RegistrationHandle] = []
        var children: [AddressSpace] = []
        var token: UInt64 = 1

        func randomRange(maxPages: Int) -> (UInt64, UInt64) {
            let count = 1 + random.below(maxPages)
            let start = random.below(pages - count + 1)
            return (base + UInt64(start) * page, UInt64(count) * page)
        }

        for step in 0..<steps {
            let validBefore = cache.validRegistrations
            _ = log.drain()
            let action = random.below(100)
            var what = ""
            switch action {
            case 0..<30:
                let (address, length) = randomRange(maxPages: 12)
                let write = random.below(2) == 0
                what = "register 0x\(String(address, radix: 16)) +\(length / page) write=\(write)"
                do {
                    let handle = try cache.register(
                        address: address + UInt64(random.below(Int(page))), length: length - page + 1, write: write)
                    #expect(handle.address <= address && address + length <= handle.address + handle.length)
                    #expect(!write || handle.isWritable)
                    handles.append(handle)
                } catch .memory(.badAddress) {
                    // A page of the range is unmapped or lacks the access.
                } catch .tooManyRetries {
                    Issue.record("seed \(seed) step \(step): too many retries on one thread")
                }
            case 30..<45 where !handles.isEmpty:
                let handle = handles[random.below(handles.count)]
                let address = handle.address + UInt64(random.below(Int(handle.length / page))) * page
                what = "device access through \(handle.id) at 0x\(String(address, radix: 16))"
                token += 1
                if handle.isWritable {
                    do {
                        try cache.write(handle, token, at: address)
                        #expect(try space.read(at: address) == token, "seed \(seed) step \(step): \(what)")
                    } catch RegistrationError.invalidated {}
                } else if (try? space.write(token, at: address)) != nil, cache.isValid(handle) {
                    #expect(try cache.read(handle, at: address) == token, "seed \(seed) step \(step): \(what)")
                }
            case 45..<55:
                let (address, length) = randomRange(maxPages: 8)
                what = "unmap 0x\(String(address, radix: 16)) +\(length / page)"
                try space.unmap(address: address, length: length)
            case 55..<65:
                let (address, length) = randomRange(maxPages: 16)
                what = "map fixed 0x\(String(address, radix: 16)) +\(length / page)"
                _ = try space.map(length: length, placement: .fixed(address))
            case 65..<75:
                let (address, length) = randomRange(maxPages: 16)
                let protection: Protection = [.read, .readWrite, .none][random.below(3)]
                what = "protect 0x\(String(address, radix: 16)) +\(length / page) \(protection)"
                do {
                    try space.protect(address: address, length: length, protection: protection)
                } catch .noMemory {}  // a hole in the range
            case 75..<83:
                let (address, length) = randomRange(maxPages: 8)
                what = "dontNeed 0x\(String(address, radix: 16)) +\(length / page)"
                do {
                    try space.advise(address: address, length: length, advice: .dontNeed)
                } catch .noMemory {}
            case 83..<88:
                what = "fork"
                children.append(try space.fork())
            case 88..<92 where !children.isEmpty:
                what = "child exits"
                children.removeFirst().teardown()
            case 92..<96:
                what = "sweep"
                cache.sweep()
            default:
                let (address, _) = randomRange(maxPages: 1)
                what = "CPU store at 0x\(String(address, radix: 16))"
                token += 1
                _ = try? space.write(token, at: address)
            }

            let problems = cache.audit()
            #expect(problems.isEmpty, "seed \(seed) step \(step) (\(what)): \(problems.prefix(3))")
            let invalidations = log.drain()
            for handle in validBefore where cache.isValid(handle) {
                let end = handle.address + handle.length
                let hit = invalidations.first { $0.intersects(handle.address, end) }
                #expect(hit == nil, "seed \(seed) step \(step) (\(what)): registration \(handle.id) survived \(hit!)")
            }
            if !problems.isEmpty { break }
        }

        let statistics = cache.statistics
        #expect(statistics.misses > 0 && statistics.invalidations > 0)
        if seed == 1 { print("randomized, seed 1:", statistics) }
        cache.close()
        #expect(space.intervalNotifierCount == 0)
        for child in children { child.teardown() }
        space.teardown()
        #expect(memory.framesInUse == 0, "seed \(seed): frames leaked")
    }
}

@Suite("Registration cache, two threads")
struct ConcurrentRegistrationTests {
    /// A classic subscriber that checks, at the start of every invalidation (after the interval
    /// handlers ran, before the CPU page table changes), that no registration intersecting the
    /// range is still valid; a commit cannot land while the invalidation is open.
    final class Checker: MMUNotifier {
        let cache: RegistrationCache
        let violations = Atomic<Int>(0)
        let starts = Atomic<Int>(0)
        init(cache: RegistrationCache) { self.cache = cache }
        var callbacks: NotifierCallbacks { .invalidateRangeStart }
        func invalidateRangeStart(_ range: InvalidationRange) -> Bool {
            starts.add(1, ordering: .relaxed)
            if !cache.validRegistrations(intersecting: range.start, range.end).isEmpty {
                violations.add(1, ordering: .relaxed)
            }
            return true
        }
    }

    /// One thread registers and uses registrations (device stores checked against CPU loads of
    /// the same registration's pages while it is valid); the other unmaps, maps over, mprotects,
    /// drops pages and forks. Checks: no valid registration at the start of an invalidation of its
    /// range, the audit once both stop, and no frame leaked after close and teardown.
    @Test("Register and use on one thread, munmap/mprotect/fork on another")
    func twoThreads() throws {
        let iterations = environmentNumber("REGCACHE_ITERATIONS", default: 3000)
        let memory = PhysicalMemory(capacity: 1 << 15)
        let space = try AddressSpace(memory: memory)
        let pages = 64
        let base = try space.map(length: UInt64(pages) * page)
        let cache = RegistrationCache(space: space)
        let checker = Checker(cache: cache)
        try space.registerNotifier(checker)
        let stop = Atomic<Bool>(false)
        let mismatches = Atomic<Int>(0)

        let changer = TestThread {
            var random = SplitMix64(seed: 2)
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

        var random = SplitMix64(seed: 1)
        var token: UInt64 = 0
        var handles: [RegistrationHandle] = []
        for _ in 0..<iterations {
            let count = 1 + random.below(4)
            let address = base + UInt64(random.below(pages - count + 1)) * page
            if let handle = try? cache.register(address: address, length: UInt64(count) * page, write: true) {
                handles.append(handle)
            }
            if handles.count > 32 { handles.removeFirst(16) }
            guard let handle = handles.randomElement(using: &random) else { continue }
            token += 1
            let target = handle.address + UInt64(random.below(Int(handle.length / page))) * page
            guard (try? cache.write(handle, token, at: target)) != nil else { continue }
            // While the registration is still valid, the CPU maps the same frame: it reads the
            // device's store (unless the changer or an unmap got in between, which invalidates).
            let seen = try? cache.read(handle, at: target)
            if let seen, seen != token { mismatches.add(1, ordering: .relaxed) }
            if random.below(64) == 0 { cache.sweep() }
        }
        stop.store(true, ordering: .relaxed)
        changer.join()

        #expect(checker.violations.load(ordering: .relaxed) == 0)
        #expect(mismatches.load(ordering: .relaxed) == 0)
        #expect(checker.starts.load(ordering: .relaxed) > 0)
        #expect(cache.audit().isEmpty)
        let statistics = cache.statistics
        #expect(statistics.misses > 0 && statistics.invalidations > 0)
        print("two threads:", statistics, "invalidation starts:", checker.starts.load(ordering: .relaxed))
        cache.close()
        space.unregisterNotifier(checker)
        space.teardown()
        #expect(memory.framesInUse == 0)
    }
}
