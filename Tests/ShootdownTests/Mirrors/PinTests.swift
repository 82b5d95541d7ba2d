import Synchronization
import Testing

@testable import Shootdown

private let p = AddressSpace.pageSize
private let huge = AddressSpace.hugePageSize
private let base = NotifierTestConstants.base

/// Long-term pins (`pin_user_pages(FOLL_LONGTERM)`) and the rules they bring: faulted in,
/// exclusive, never moved, evicted, shared with a fork or freed while pinned; unmap still
/// invalidates.
@Suite struct PinTests {
    /// A space with `pages` pages at `base`, page `i` holding `i + 1`.
    private func makeSpace(_ memory: PhysicalMemory, pages: Int = 16, protection: Protection = .readWrite)
        throws -> AddressSpace
    {
        let space = try AddressSpace(memory: memory)
        try space.map(length: UInt64(pages) * p, placement: .fixed(base))
        for index in 0..<pages { try space.write(UInt64(index) + 1, at: base + UInt64(index) * p) }
        if protection != .readWrite { try space.protect(address: base, length: UInt64(pages) * p, protection: protection) }
        return space
    }

    @Test func pinFaultsPagesInAndTakesOnePinPerFrame() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 8)
        let space = try AddressSpace(memory: memory)
        try space.map(length: 8 * p, placement: .fixed(base))  // nothing faulted in yet
        let pinned = try space.pin(address: base, length: 8 * p, write: true)
        #expect(pinned.pageCount == 8 && pinned.length == 8 * p && pinned.isWritable && pinned.isPinned)
        var frames: Set<UInt64> = []
        for page in eachPage(base, base + 8 * p) {
            let entry = try #require(space.translate(page))
            #expect(entry.isPresent && entry.isWritable)
            #expect(try pinned.frame(at: page) == entry.number)
            #expect(memory.pinCount(entry.number) == 1)
            #expect(memory.refcount(entry.number) == 2 && memory.mapcount(entry.number) == 1)
            frames.insert(entry.number)
        }
        #expect(frames.count == 8)
        // A second pin of the same pages stacks.
        let again = try space.pin(address: base, length: 2 * p, write: false)
        #expect(memory.pinCount(try pinned.frame(at: base)) == 2)
        try space.unpin(again)
        try space.unpin(pinned)
        try space.unpin(pinned)  // twice: nothing happens
        #expect(!pinned.isPinned)
        for frame in frames { #expect(memory.pinCount(frame) == 0 && memory.refcount(frame) == 1) }
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test func aReadPinUnsharesTheZeroPageAndCopyOnWritePages() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 8)
        let space = try makeSpace(memory, pages: 4)
        try space.map(length: 2 * p, placement: .fixed(base + 64 * p))  // never touched
        let child = try space.fork()  // pages 0-3 shared copy-on-write
        let shared = try #require(space.translate(base)?.number)
        let zeroPin = try space.pin(address: base + 64 * p, length: 2 * p, write: false)
        let zeroFrame = try zeroPin.frame(at: base + 64 * p)
        #expect(zeroFrame != PhysicalMemory.zeroFrame && memory.token(of: zeroFrame) == 0)
        #expect(space.translate(base + 64 * p)?.isWritable == false)  // still read-only
        let readPin = try space.pin(address: base, length: 4 * p, write: false)
        let copy = try readPin.frame(at: base)
        #expect(copy != shared)  // the parent now maps its own copy, read-only
        #expect(space.translate(base)?.number == copy && space.translate(base)?.isWritable == false)
        #expect(child.translate(base)?.number == shared)
        #expect(memory.token(of: copy) == 1 && memory.mapcount(shared) == 1)
        // A CPU write reuses the pinned copy (no second copy away from what the device holds).
        let copies = space.statistics[.copyOnWriteFaults]
        try space.write(100, at: base)
        #expect(space.translate(base)?.number == copy && space.statistics[.copyOnWriteFaults] == copies)
        #expect(try readPin.read(at: base) == 100)
        #expect(try child.read(at: base) == 1)
        readPin.unpin()
        zeroPin.unpin()
        child.teardown()
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test func aReadPinOfAReadOnlyPrivateMappingAfterForkUnsharesToo() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 8)
        let space = try makeSpace(memory, pages: 2, protection: .read)
        let child = try space.fork()
        let shared = try #require(space.translate(base)?.number)
        #expect(throws: MemoryError.badAddress) { try space.pin(address: base, length: p, write: true) }
        let pinned = try space.pin(address: base, length: 2 * p, write: false)
        #expect(try pinned.frame(at: base) != shared && space.translate(base)?.isWritable == false)
        #expect(try space.read(at: base) == 1 && child.read(at: base) == 1)
        #expect(throws: MemoryError.badAddress) { try pinned.write(5, at: base) }  // read-only pin
        pinned.unpin()
        child.teardown()
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test func forkCopiesPinnedPagesAndTheParentKeepsThemWritable() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 8)
        let space = try makeSpace(memory, pages: 8)
        let pinned = try space.pin(address: base, length: 4 * p, write: true)
        let frames = try (0..<4).map { try pinned.frame(at: base + UInt64($0) * p) }
        let child = try space.fork()
        for (index, frame) in frames.enumerated() {
            let page = base + UInt64(index) * p
            #expect(space.translate(page)?.number == frame && space.translate(page)?.isWritable == true)
            let copy = try #require(child.translate(page))
            #expect(copy.number != frame && copy.isWritable && memory.token(of: copy.number) == UInt64(index) + 1)
            #expect(memory.mapcount(frame) == 1 && memory.pinCount(frame) == 1)
        }
        // Unpinned pages are shared copy-on-write as usual.
        #expect(child.translate(base + 4 * p)?.number == space.translate(base + 4 * p)?.number)
        #expect(space.translate(base + 4 * p)?.isWritable == false)
        // The device, the parent and the child: the first two share the page, the child has its own.
        let copies = space.statistics[.copyOnWriteFaults]
        try space.write(10, at: base)
        #expect(space.statistics[.copyOnWriteFaults] == copies)
        #expect(try pinned.read(at: base) == 10)
        try pinned.write(11, at: base + p)
        #expect(try space.read(at: base + p) == 11)
        #expect(try child.read(at: base) == 1 && child.read(at: base + p) == 2)
        try child.write(12, at: base + 2 * p)
        #expect(try space.read(at: base + 2 * p) == 3 && pinned.read(at: base + 2 * p) == 3)
        pinned.unpin()
        child.teardown()
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test func pinnedPagesAreNotMigratedReclaimedPagedOutOrCollapsed() throws {
        let memory = PhysicalMemory(capacity: 4096, swapSlots: 1024)
        let space = try AddressSpace(memory: memory)
        try space.map(length: huge, placement: .fixed(base), options: [.hugePage])
        try space.write(1, at: base)  // a huge mapping
        #expect(space.statistics[.hugeFaults] == 1)
        let pinned = try space.pin(address: base + 8 * p, length: 2 * p, write: true)
        // Pinning split the huge mapping: the pinned frames are 4 KiB frames of their own.
        #expect(space.audit().hugeMappings == 0)
        let frames = try [pinned.frame(at: base + 8 * p), pinned.frame(at: base + 9 * p)]
        try pinned.write(77, at: base + 8 * p)

        let moved = try space.migrate(address: base, length: huge)
        #expect(moved == 510)  // every page but the two pinned ones
        #expect(space.translate(base + 8 * p)?.number == frames[0] && space.translate(base + 9 * p)?.number == frames[1])
        #expect(try space.collapse(address: base, length: huge) == 0)
        #expect(space.audit().hugeMappings == 0)
        _ = try space.age(address: base, length: huge)  // clear accessed bits: every page old
        let evicted = try space.reclaim(pages: 512)
        #expect(evicted == 510)
        try space.advise(address: base + 8 * p, length: 2 * p, advice: .pageOut)
        #expect(space.translate(base + 8 * p)?.number == frames[0] && space.translate(base + 9 * p)?.isPresent == true)
        #expect(try space.read(at: base + 8 * p) == 77)
        pinned.unpin()
        #expect(try space.collapse(address: base, length: huge) == 0)  // swap entries: not eligible
        space.teardown()
        #expect(memory.framesInUse == 0 && memory.swap.slotsInUse == 0)
    }

    @Test func unmapInvalidatesButThePinnedFrameLivesUntilUnpinned() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 8)
        let space = try makeSpace(memory, pages: 8)
        let mirror = try SoftwareMirror(space: space, start: base, length: 8 * p)
        try mirror.populate(address: base, length: 8 * p, write: true)
        let pinned = try space.pin(address: base, length: 4 * p, write: true)
        let frame = try pinned.frame(at: base)
        let inUse = memory.framesInUse
        try space.unmap(address: base, length: 8 * p)
        #expect(mirror.count == 0)  // the unmap invalidated the mirror as always
        #expect(space.translate(base) == nil)
        #expect(memory.framesInUse == inUse - 4)  // the 4 unpinned frames went; the pinned ones stay
        #expect(memory.pinCount(frame) == 1 && memory.mapcount(frame) == 0 && memory.refcount(frame) == 1)
        try pinned.write(9, at: base)  // the device still owns the page
        #expect(try pinned.read(at: base) == 9)
        try space.unpin(pinned)
        #expect(memory.framesInUse == inUse - 8)
        #expect(throws: MemoryError.detached) { try pinned.read(at: base) }
        #expect(throws: MemoryError.detached) { try pinned.write(1, at: base) }
        #expect(throws: MemoryError.detached) { try pinned.frame(at: base) }
        mirror.detach()
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test func pinsOutliveTeardownAndDroppingARangeUnpinsIt() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 8)
        let space = try makeSpace(memory, pages: 4)
        var pinned: PinnedRange? = try space.pin(address: base, length: 2 * p, write: true)
        let other = try space.pin(address: base + 2 * p, length: 2 * p, write: false)
        space.teardown()
        #expect(memory.framesInUse == 4)
        try pinned!.write(3, at: base)
        pinned = nil  // the last reference: unpinned, freed
        #expect(memory.framesInUse == 2)
        try space.unpin(other)  // after teardown too
        #expect(memory.framesInUse == 0)
        #expect(throws: MemoryError.addressSpaceDead) { try space.pin(address: base, length: p, write: false) }
    }

    @Test func aWriteFaultAfterSoftDirtyClearOrMprotectReusesThePinnedFrame() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 8)
        let space = try makeSpace(memory, pages: 2)
        let pinned = try space.pin(address: base, length: 2 * p, write: true)
        let frame = try pinned.frame(at: base)
        try space.clearSoftDirty(address: base, length: 2 * p)
        #expect(space.translate(base)?.isWritable == false)
        try space.write(5, at: base)
        #expect(try space.translate(base)?.number == frame && pinned.read(at: base) == 5)
        try space.protect(address: base, length: 2 * p, protection: .read)
        try space.protect(address: base, length: 2 * p, protection: .readWrite)
        try space.write(6, at: base)
        #expect(try space.translate(base)?.number == frame && pinned.read(at: base) == 6)
        #expect(space.statistics[.copyOnWriteFaults] == 0)
        pinned.unpin()
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test func pinRejectsBadInputAndKeepsNoPinWhenItFails() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 8)
        let space = try makeSpace(memory, pages: 8)
        try space.map(length: 2 * p, protection: [], placement: .fixed(base + 32 * p))
        let limit = AddressSpace.userLimit
        #expect(throws: MemoryError.invalidArgument) { try space.pin(address: base + 1, length: p, write: false) }
        #expect(throws: MemoryError.invalidArgument) { try space.pin(address: base, length: 0, write: false) }
        #expect(throws: MemoryError.invalidArgument) { try space.pin(address: base, length: .max, write: false) }
        #expect(throws: MemoryError.invalidArgument) { try space.pin(address: limit, length: p, write: false) }
        #expect(throws: MemoryError.badAddress) { try space.pin(address: base + 32 * p, length: p, write: false) }
        // Across a hole: the pages before it were pinned, then released again.
        #expect(throws: MemoryError.badAddress) { try space.pin(address: base + 4 * p, length: 8 * p, write: true) }
        for page in eachPage(base, base + 8 * p) { #expect(memory.pinCount(space.translate(page)!.number) == 0) }
        let pinned = try space.pin(address: base, length: p + 1, write: true)  // length rounded up
        #expect(pinned.pageCount == 2)
        #expect(throws: MemoryError.invalidArgument) { try pinned.read(at: base + 2 * p) }
        #expect(throws: MemoryError.invalidArgument) { try pinned.write(1, at: base - 1) }
        let otherMemory = PhysicalMemory(capacity: 512, swapSlots: 8)
        let stranger = try AddressSpace(memory: otherMemory)
        #expect(throws: MemoryError.invalidArgument) { try stranger.unpin(pinned) }
        #expect(pinned.isPinned)
        try space.unpin(pinned)
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test func pageRoundingHelpers() throws {
        #expect(AddressSpace.pageAlignDown(base + 5) == base)
        #expect(try AddressSpace.pageAlignUp(base + 5) == base + p)
        #expect(try AddressSpace.pageAlignUp(base) == base)
        #expect(throws: MemoryError.invalidArgument) { try AddressSpace.pageAlignUp(.max) }
        #expect(AddressSpace.isPageAligned(base) && !AddressSpace.isPageAligned(base + 1))
        let range = try AddressSpace.pageRange(covering: base + p - 8, length: 16)
        #expect(range.address == base && range.length == 2 * p)
        #expect(throws: MemoryError.invalidArgument) { try AddressSpace.pageRange(covering: base, length: 0) }
        #expect(throws: MemoryError.invalidArgument) { try AddressSpace.pageRange(covering: .max - 4, length: 8) }
        #expect(throws: MemoryError.invalidArgument) {
            try AddressSpace.pageRange(covering: AddressSpace.userLimit - 4, length: 8)
        }
    }
}

/// Device writes through a mirror: a store reaches a frame only through a translation the CPU page
/// table agrees with.
@Suite struct DeviceWriteTests {
    @Test func aDeviceWriteThroughTheMirrorIsWhatTheCPUReads() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 8)
        let space = try AddressSpace(memory: memory)
        try space.map(length: 8 * p, placement: .fixed(base))
        let mirror = try SoftwareMirror(space: space, start: base, length: 8 * p)
        try mirror.write(42, at: base + 3 * p + 17)  // faults the page in for writing
        #expect(try space.read(at: base + 3 * p) == 42)
        #expect(mirror.translation(for: base + 3 * p)?.writable == true)
        #expect(space.translate(base + 3 * p)?.isDirty == true)
        try space.write(43, at: base + 3 * p)
        #expect(try mirror.read(at: base + 3 * p) == 43)
        #expect(space.testYoung(at: base + 3 * p))  // accessed through the mirror
        mirror.detach()
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test func aDeviceWriteAfterForkBreaksCopyOnWriteLikeACPUWrite() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 8)
        let space = try AddressSpace(memory: memory)
        try space.map(length: 4 * p, placement: .fixed(base))
        try space.write(1, at: base)
        let mirror = try SoftwareMirror(space: space, start: base, length: 4 * p)
        try mirror.populate(address: base, length: 4 * p, write: true)
        let child = try space.fork()
        #expect(mirror.translation(for: base)?.writable == false)  // fork downgraded it
        try mirror.write(2, at: base)
        #expect(try space.read(at: base) == 2 && child.read(at: base) == 1)
        #expect(mirror.translation(for: base)?.frame == space.translate(base)?.number)
        child.teardown()
        mirror.detach()
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test func aDeviceWriteToAReadOnlyMappingFaults() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 8)
        let space = try AddressSpace(memory: memory)
        try space.map(length: 2 * p, protection: .read, placement: .fixed(base))
        let mirror = try SoftwareMirror(space: space, start: base, length: 2 * p)
        #expect(try mirror.read(at: base) == 0)
        #expect(throws: MemoryError.badAddress) { try mirror.write(1, at: base) }
        #expect(throws: MemoryError.invalidArgument) { try mirror.write(1, at: base + 2 * p) }
        mirror.detach()
        space.teardown()
    }

    @Test func theEngineRefusesAStoreThroughAStaleTranslation() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 8)
        let space = try AddressSpace(memory: memory)
        try space.map(length: 2 * p, placement: .fixed(base))
        try space.write(1, at: base)
        let frame = try #require(space.translate(base)?.number)
        try space.deviceWrite(2, at: base, frame: frame)
        #expect(try space.deviceRead(at: base, frame: frame) == 2 && space.read(at: base) == 2)
        // The wrong frame, a page not mapped, a read-only entry, the zero page: refused.
        #expect(throws: MemoryError.badAddress) { try space.deviceWrite(3, at: base, frame: frame + 1) }
        #expect(throws: MemoryError.badAddress) { try space.deviceWrite(3, at: base + 2 * p, frame: frame) }
        _ = try space.read(at: base + p)  // the zero page, read-only
        let zero = try #require(space.translate(base + p)?.number)
        #expect(throws: MemoryError.badAddress) { try space.deviceWrite(3, at: base + p, frame: zero) }
        #expect(try space.deviceRead(at: base + p, frame: zero) == 0)
        let child = try space.fork()  // write-protects the parent's entry
        #expect(throws: MemoryError.badAddress) { try space.deviceWrite(3, at: base, frame: frame) }
        try space.write(4, at: base)  // copy-on-write: `frame` is now the child's only
        #expect(throws: MemoryError.badAddress) { try space.deviceRead(at: base, frame: frame) }
        #expect(throws: MemoryError.invalidArgument) { try space.deviceWrite(3, at: AddressSpace.userLimit, frame: 1) }
        #expect(try child.read(at: base) == 2)
        child.teardown()
        space.teardown()
        #expect(throws: MemoryError.addressSpaceDead) { try space.deviceRead(at: base, frame: frame) }
        #expect(memory.framesInUse == 0)
    }
}
