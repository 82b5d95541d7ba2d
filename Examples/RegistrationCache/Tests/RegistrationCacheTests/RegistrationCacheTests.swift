import RegistrationCache
import Shootdown
import Synchronization
import Testing

@Suite("Registration cache")
struct RegistrationCacheTests {
    @Test("A registration covering the request is a hit; anything else is a miss")
    func hitsAndMisses() throws {
        let memory = PhysicalMemory(capacity: 4096)
        let space = try AddressSpace(memory: memory)
        let base = try space.map(length: 64 * page)
        let cache = RegistrationCache(space: space)

        let whole = try cache.register(address: base, length: 16 * page, write: false)
        #expect(whole.address == base && whole.length == 16 * page && !whole.isWritable)
        // Inside it (unaligned bytes round out to whole pages): a hit, the same registration.
        #expect(try cache.register(address: base + 100, length: 3 * page, write: false) == whole)
        // Write access is not covered by a read registration: a miss.
        let writable = try cache.register(address: base, length: 4 * page, write: true)
        #expect(writable.isWritable && writable != whole)
        // A read request is covered by the writable one too (either answer is a hit).
        _ = try cache.register(address: base + page, length: page, write: false)
        // Past the end of the first: a miss.
        _ = try cache.register(address: base + 15 * page, length: 2 * page, write: false)
        let statistics = cache.statistics
        #expect(statistics.hits == 2 && statistics.misses == 3 && statistics.invalidations == 0)
        #expect(space.intervalNotifierCount == 3)
        #expect(cache.audit().isEmpty)
        cache.close()
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test("Device stores reach the CPU and CPU stores reach the device (same pinned frames)")
    func coherentAccess() throws {
        let memory = PhysicalMemory(capacity: 4096)
        let space = try AddressSpace(memory: memory)
        let base = try space.map(length: 8 * page)
        let cache = RegistrationCache(space: space)
        let handle = try cache.register(address: base, length: 8 * page, write: true)
        try cache.write(handle, 7, at: base + 3 * page)
        #expect(try space.read(at: base + 3 * page) == 7)
        try space.write(9, at: base + 5 * page)
        #expect(try cache.read(handle, at: base + 5 * page) == 9)
        // Outside the registration, and a store through a read-only one.
        #expect(throws: RegistrationError.memory(.invalidArgument)) { try cache.read(handle, at: base + 8 * page) }
        let readOnly = try cache.register(address: base + 8 * page - page, length: page, write: false)
        #expect(readOnly == handle)  // the writable registration covers a read request
        try space.protect(address: base, length: 8 * page, protection: .read)
        #expect(!cache.isValid(handle))
        let fresh = try cache.register(address: base, length: page, write: false)
        #expect(throws: RegistrationError.memory(.badAddress)) { try cache.write(fresh, 1, at: base) }
        #expect(throws: RegistrationError.memory(.badAddress)) {
            try cache.register(address: base, length: page, write: true)
        }
        cache.close()
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test("An invalidation drops the registration at once; the pins go lazily (next use, miss or sweep)")
    func lazyDeregistration() throws {
        let memory = PhysicalMemory(capacity: 4096)
        let space = try AddressSpace(memory: memory)
        let base = try space.map(length: 32 * page)
        let cache = RegistrationCache(space: space)
        let first = try cache.register(address: base, length: 4 * page, write: true)
        let second = try cache.register(address: base + 8 * page, length: 4 * page, write: true)
        let frame = try #require(space.translate(base)?.frame)
        #expect(memory.pinCount(frame) == 1)

        try space.advise(address: base + page, length: page, advice: .dontNeed)
        #expect(!cache.isValid(first) && cache.isValid(second))
        #expect(cache.statistics.invalidations == 1)
        // Not deregistered yet: still pinned and its notifier still inserted.
        #expect(cache.pendingDeregistrations == 1 && memory.pinCount(frame) == 1)
        #expect(space.intervalNotifierCount == 2)
        // Next use of the stale handle deregisters it.
        #expect(throws: RegistrationError.invalidated) { try cache.read(first, at: base) }
        #expect(cache.pendingDeregistrations == 0 && memory.pinCount(frame) == 0)
        #expect(space.intervalNotifierCount == 1)
        #expect(cache.statistics.deregistrations == 1)

        // By a sweep.
        try space.unmap(address: base + 8 * page, length: page)
        #expect(cache.pendingDeregistrations == 1)
        #expect(cache.sweep() == 1)
        #expect(space.intervalNotifierCount == 0)
        // The unmapped page's frame was held only by the pin: freed now.
        #expect(cache.audit().isEmpty)
        cache.close()
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test("Fork: the parent's registration is re-created, and device stores stay the parent's")
    func forkDiscipline() throws {
        let memory = PhysicalMemory(capacity: 4096)
        let space = try AddressSpace(memory: memory)
        let base = try space.map(length: 8 * page)
        let cache = RegistrationCache(space: space)
        let handle = try cache.register(address: base, length: 8 * page, write: true)
        try cache.write(handle, 1, at: base)
        let pinned = try #require(space.translate(base)?.frame)

        let child = try space.fork()
        // fork write-protects the parent's private mapping under one protectionPage invalidation:
        // the cache drops the registration (conservatively) and re-creates it on the next use.
        #expect(!cache.isValid(handle))
        let again = try cache.register(address: base, length: 8 * page, write: true)
        #expect(cache.statistics.misses == 2)
        // The pinned page was copied for the child, not shared: the parent keeps the pinned frame.
        #expect(space.translate(base)?.frame == pinned)
        #expect(child.translate(base)?.frame != pinned)
        try cache.write(again, 2, at: base)
        #expect(try space.read(at: base) == 2)
        #expect(try child.read(at: base) == 1)
        #expect(cache.audit().isEmpty)
        cache.close()
        child.teardown()
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test("close() removes every notifier and pin; every later call throws closed")
    func closeDiscipline() throws {
        let memory = PhysicalMemory(capacity: 4096)
        let space = try AddressSpace(memory: memory)
        let base = try space.map(length: 16 * page)
        let cache = RegistrationCache(space: space)
        let handle = try cache.register(address: base, length: 4 * page, write: true)
        _ = try cache.register(address: base + 4 * page, length: 4 * page, write: false)
        try space.unmap(address: base + 4 * page, length: page)  // one invalidated, not yet swept
        let frame = try #require(space.translate(base)?.frame)
        #expect(space.intervalNotifierCount == 2 && memory.pinCount(frame) == 1)

        cache.close()
        #expect(cache.isClosed)
        #expect(space.intervalNotifierCount == 0 && memory.pinCount(frame) == 0)
        #expect(throws: RegistrationError.closed) { try cache.register(address: base, length: page, write: false) }
        #expect(throws: RegistrationError.closed) { try cache.read(handle, at: base) }
        #expect(throws: RegistrationError.closed) { try cache.write(handle, 1, at: base) }
        #expect(cache.sweep() == 0)
        cache.close()  // idempotent
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test("Bad ranges and unmapped pages are the space's errors, and leave nothing behind")
    func badInput() throws {
        let memory = PhysicalMemory(capacity: 4096)
        let space = try AddressSpace(memory: memory)
        let base = try space.map(length: 4 * page)
        let cache = RegistrationCache(space: space)
        #expect(throws: RegistrationError.memory(.invalidArgument)) { try cache.register(address: base, length: 0, write: false) }
        #expect(throws: RegistrationError.memory(.invalidArgument)) { try cache.register(address: .max - 10, length: 100, write: false) }
        #expect(throws: RegistrationError.memory(.badAddress)) { try cache.register(address: base, length: 5 * page, write: false) }
        #expect(space.intervalNotifierCount == 0)
        #expect(cache.validRegistrations.isEmpty)
        cache.close()
        space.teardown()
        #expect(memory.framesInUse == 0)
    }
}
