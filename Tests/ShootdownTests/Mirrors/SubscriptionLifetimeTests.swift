import Synchronization
import Testing

@testable import Shootdown

private let p = AddressSpace.pageSize
private let base = NotifierTestConstants.base

/// A handler that holds its space strongly (what an embedder may write first) or weakly (what the
/// documentation asks), and counts release invalidations.
private final class CacheHandler: IntervalNotifierHandler, MMUNotifier, @unchecked Sendable {
    var strongSpace: AddressSpace?
    weak var weakSpace: AddressSpace?
    let releases = Atomic<Int>(0)
    let invalidations = Atomic<Int>(0)

    init(space: AddressSpace, strong: Bool) {
        if strong { strongSpace = space } else { weakSpace = space }
    }

    func invalidate(_ notifier: IntervalNotifier, range: InvalidationRange, currentSequence: UInt64) -> Bool {
        notifier.setSequence(currentSequence)
        invalidations.add(1, ordering: .relaxed)
        if range.event == .release { releases.add(1, ordering: .relaxed) }
        return true
    }

    var callbacks: NotifierCallbacks { [.release] }
    func release(space: UInt64) { releases.add(1, ordering: .relaxed) }
}

/// What keeps what alive: a space owns its subscriptions until removal, unregistration or teardown
/// and never after; subscribers hold the space weakly. Weak references observe deallocation.
@Suite struct SubscriptionLifetimeTests {
    private func makeSpace(_ memory: PhysicalMemory) throws -> AddressSpace {
        let space = try AddressSpace(memory: memory)
        try space.map(length: 16 * p, placement: .fixed(base))
        for index in 0..<16 { try space.write(UInt64(index) + 1, at: base + UInt64(index) * p) }
        return space
    }

    @Test func teardownRemovesIntervalNotifiersAndDropsTheirHandlers() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 8)
        let space = try makeSpace(memory)
        weak var weakHandler: CacheHandler?
        let notifier: IntervalNotifier
        do {
            // Strong: even a handler that holds its space is let go at teardown (the cycle is broken
            // there).
            let handler = CacheHandler(space: space, strong: true)
            weakHandler = handler
            notifier = try space.insertIntervalNotifier(start: base, length: 16 * p, handler: handler)
        }
        #expect(weakHandler != nil)  // the space holds it
        #expect(!notifier.isRemoved)
        space.teardown()
        #expect(space.intervalNotifierCount == 0)
        #expect(notifier.isRemoved)
        #expect(weakHandler == nil, "the space still holds the handler after teardown")
        notifier.remove()  // a no-op now
        notifier.remove()
        #expect(memory.framesInUse == 0)
    }

    @Test func teardownGivesEachHandlerOneReleaseBeforeLettingGo() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 8)
        let space = try makeSpace(memory)
        let handler = CacheHandler(space: space, strong: false)
        let notifier = try space.insertIntervalNotifier(start: base, length: 16 * p, handler: handler)
        try space.registerNotifier(handler)
        space.teardown()
        #expect(handler.releases.load(ordering: .relaxed) == 2)  // one interval release, one classic
        #expect(handler.invalidations.load(ordering: .relaxed) == 1)  // no unmap after the release
        #expect(notifier.isRemoved && space.notifiers.isEmpty)
        #expect(!space.unregisterNotifier(handler))
    }

    @Test func droppingASpaceWithAForgottenMirrorFreesBoth() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 8)
        weak var weakSpace: AddressSpace?
        weak var weakMirror: SoftwareMirror?
        do {
            let space = try makeSpace(memory)
            let mirror = try SoftwareMirror(space: space, start: base, length: 16 * p)
            _ = try mirror.read(at: base)
            weakSpace = space
            weakMirror = mirror
            // Neither detach() nor teardown(): both references go away here.
        }
        #expect(weakSpace == nil, "a cycle through the mirror keeps the space alive")
        #expect(weakMirror == nil, "the space's subscriptions keep the mirror alive")
        #expect(memory.framesInUse == 0)
    }

    @Test func droppingASpaceWithAForgottenWeakHandlerFreesBoth() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 8)
        weak var weakSpace: AddressSpace?
        weak var weakHandler: CacheHandler?
        var notifier: IntervalNotifier?
        do {
            let space = try makeSpace(memory)
            let handler = CacheHandler(space: space, strong: false)
            notifier = try space.insertIntervalNotifier(start: base, length: 16 * p, handler: handler)
            try space.registerNotifier(handler)
            weakSpace = space
            weakHandler = handler
        }
        // The space went with its last reference (teardown in deinit) and let the handler go; the
        // notifier object the user kept is inert.
        #expect(weakSpace == nil)
        #expect(weakHandler == nil)
        #expect(notifier?.isRemoved == true)
        notifier?.remove()
        notifier = nil
        #expect(memory.framesInUse == 0)
    }

    @Test func aMirrorDoesNotKeepItsSpaceAlive() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 8)
        var space: AddressSpace? = try makeSpace(memory)
        let mirror = try SoftwareMirror(space: space!, start: base, length: 16 * p)
        try mirror.populate(address: base, length: 4 * p, write: true)
        #expect(mirror.count == 4)
        space = nil  // the user's last reference: teardown runs, the mirror is released
        #expect(mirror.space == nil)
        #expect(mirror.count == 0)
        #expect(throws: MemoryError.addressSpaceDead) { try mirror.populate(address: base, length: p, write: false) }
        #expect(throws: MemoryError.addressSpaceDead) { try mirror.read(at: base) }
        #expect(throws: MemoryError.addressSpaceDead) { try mirror.write(1, at: base) }
        mirror.detach()  // harmless: the space is gone
        #expect(throws: MemoryError.detached) { try mirror.read(at: base) }
        #expect(memory.framesInUse == 0)
    }

    @Test func detachLetsTheSpaceDropTheMirror() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 8)
        let space = try makeSpace(memory)
        weak var weakMirror: SoftwareMirror?
        do {
            let mirror = try SoftwareMirror(space: space, start: base, length: 16 * p)
            try mirror.populate(address: base, length: 2 * p, write: false)
            weakMirror = mirror
            mirror.detach()
            mirror.detach()  // idempotent
        }
        #expect(weakMirror == nil)
        #expect(space.intervalNotifierCount == 0 && space.notifiers.isEmpty)
        space.teardown()
    }

    @Test func misuseIsAnErrorNotAHangOrALeak() throws {
        let memory = PhysicalMemory(capacity: 1024, swapSlots: 8)
        let space = try makeSpace(memory)
        let other = try makeSpace(memory)
        let handler = CacheHandler(space: space, strong: false)
        let notifier = try space.insertIntervalNotifier(start: base, length: 8 * p, handler: handler)
        let foreign = try other.insertIntervalNotifier(start: base, length: 8 * p, handler: handler)
        let sequence = notifier.readBegin()
        // A range outside the notifier's interval: invalidations there would go unnoticed.
        #expect(throws: MemoryError.invalidArgument) {
            try space.faultRange(address: base + 4 * p, length: 8 * p, write: false, notifier: notifier, sequence: sequence)
        }
        #expect(throws: MemoryError.invalidArgument) {
            try space.mirror(address: base + 8 * p, length: p, write: false, notifier: notifier) { _, _ in .committed }
        }
        // Another space's notifier protects nothing here.
        #expect(throws: MemoryError.invalidArgument) {
            try space.faultRange(address: base, length: p, write: false, notifier: foreign, sequence: sequence)
        }
        // A removed notifier is never invalidated again: a snapshot under it could go stale unseen.
        notifier.remove()
        notifier.remove()  // twice: a no-op
        #expect(throws: MemoryError.detached) {
            try space.faultRange(address: base, length: p, write: false, notifier: notifier, sequence: sequence)
        }
        var commits = 0
        #expect(throws: MemoryError.detached) {
            try space.mirror(address: base, length: p, write: false, notifier: notifier) { _, _ in
                commits += 1
                return .committed
            }
        }
        #expect(commits == 0)
        // After teardown: inserting and registering fail; removing and unregistering do nothing.
        other.teardown()
        #expect(foreign.isRemoved)
        #expect(throws: MemoryError.addressSpaceDead) {
            try other.insertIntervalNotifier(start: base, length: p, handler: handler)
        }
        #expect(throws: MemoryError.addressSpaceDead) { try other.registerNotifier(handler) }
        #expect(!other.unregisterNotifier(handler))
        foreign.remove()
        // Unaligned intervals are refused like SoftwareMirror refuses them.
        #expect(throws: MemoryError.invalidArgument) {
            try space.insertIntervalNotifier(start: base + 1, length: p, handler: handler)
        }
        #expect(throws: MemoryError.invalidArgument) {
            try space.insertIntervalNotifier(start: base, length: p + 1, handler: handler)
        }
        #expect(throws: MemoryError.invalidArgument) {
            try space.insertIntervalNotifier(start: AddressSpace.userLimit, length: p, handler: handler)
        }
        // A detached mirror refuses everything.
        let mirror = try SoftwareMirror(space: space, start: base, length: 8 * p)
        mirror.detach()
        #expect(throws: MemoryError.detached) { try mirror.populate(address: base, length: p, write: false) }
        #expect(throws: MemoryError.detached) { try mirror.fault(at: base, write: true) }
        #expect(throws: MemoryError.detached) { try mirror.read(at: base) }
        #expect(throws: MemoryError.detached) { try mirror.write(3, at: base) }
        #expect(throws: MemoryError.detached) { try mirror.migrate(address: base, length: p) }
        space.teardown()
        #expect(memory.framesInUse == 0)
    }
}
