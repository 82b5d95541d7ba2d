import Testing
import Shootdown  // not @testable: the README tour uses public API only
import Synchronization

/// The README's API tour, verbatim, so it stays true: `swift test --filter ReadmeExample`.
@Suite struct ReadmeExampleTests {
    @Test func apiTour() throws {
        // --- README: begin ---
        // 64 Ki frames of simulated physical memory, and an address space using them.
        let memory = PhysicalMemory(capacity: 65_536)
        let space = try AddressSpace(memory: memory)

        // mmap: 1 MiB of private anonymous memory, placed top-down from the mmap base like Linux.
        let base = try space.map(length: 1 << 20)

        // Loads and stores fault pages in (speculatively: no mmap lock, validated by the VMA's
        // sequence count). A page's content is modelled as a 64-bit token.
        try space.write(42, at: base)
        #expect(try space.read(at: base) == 42)
        #expect(space.translate(base)?.isWritable == true)

        // A subscriber sees every invalidation, with its reason (the event) and its range. Callbacks
        // run on whichever thread changes the space, so its state sits behind a lock.
        final class Logger: MMUNotifier {
            let events = Mutex<[InvalidationEvent]>([])
            var callbacks: NotifierCallbacks { .invalidateRange }
            func invalidateRangeStart(_ range: InvalidationRange) -> Bool {
                events.withLock { $0.append(range.event) }
                return true
            }
        }
        let logger = Logger()
        try space.registerNotifier(logger)

        // A secondary MMU kept coherent through an interval notifier: populate it, then watch
        // invalidations take translations away before the CPU page table changes.
        let mirror = try SoftwareMirror(space: space, start: base, length: 1 << 20)
        try mirror.populate(address: base, length: 16 * 4096, write: true)
        #expect(mirror.count == 16)
        try space.protect(address: base, length: 4096, protection: .read)  // protectionVMA: read-only now
        #expect(mirror.translation(for: base)?.writable == false)
        try space.advise(address: base + 4096, length: 4096, advice: .dontNeed)  // clear: dropped
        #expect(mirror.translation(for: base + 4096) == nil)

        // fork() shares private pages copy-on-write; the child's write copies one page.
        let child = try space.fork()
        try child.write(7, at: base + 2 * 4096)
        #expect(try space.read(at: base + 2 * 4096) == 0)
        #expect(try child.read(at: base + 2 * 4096) == 7)

        // Errors are typed, Linux-like, and leave the space unchanged.
        #expect(throws: MemoryError.invalidArgument) { try space.unmap(address: base + 1, length: 4096) }
        #expect(throws: MemoryError.segmentationFault) { try space.write(1, at: base) }  // read-only page

        // mprotect split the mapping in two VMAs: fork write-protects each (one event per VMA).
        #expect(logger.events.withLock { $0 } == [.protectionVMA, .clear, .protectionPage, .protectionPage])
        print(space.mapsText())          // ["7efffff00000-7efffff01000 r--p", "7efffff01000-7f0000000000 rw-p"]
        print(space.statistics.nonZero)  // speculativeFaults, invalidationsClear, pagesZapped, ...

        mirror.detach()
        child.teardown()
        space.teardown()
        #expect(memory.framesInUse == 0)
        // --- README: end ---
    }
}
