import CInterop
import Foundation
import Synchronization
import Testing

@testable import Shootdown

/// Published state of one page, written by the changer before and after each call that changes
/// it: `epoch << 3 | kind`. A worker reads it before and after an access; equal values mean no
/// change of the page overlapped the access, and the kind is what the page was when the access
/// started, *after* the last change returned.
private enum PageKind: UInt64 {
    /// Mapped read-write; no change in progress.
    case readWrite = 0
    /// A change is in progress (published before the call).
    case changing = 1
    /// mprotect(PROT_READ) returned.
    case readOnly = 2
    /// munmap (or the mremap moving it away) returned.
    case unmapped = 3
    /// mprotect(PROT_NONE) returned.
    case inaccessible = 4
}

/// Lock-free per-page words shared by the changer and the workers.
private final class PageWords: @unchecked Sendable {
    let count: Int
    private let words: UnsafeMutablePointer<Atomic<UInt64>>

    init(_ count: Int) {
        self.count = count
        words = .allocate(capacity: count)
        for index in 0..<count { (words + index).initialize(to: Atomic(0)) }
    }

    deinit {
        words.deinitialize(count: count)
        words.deallocate()
    }

    /// Acquiring: pairs with ``publish(_:_:)``.
    func load(_ index: Int) -> UInt64 { words[index].load(ordering: .acquiring) }
    /// Releasing: everything before (the call that returned) happens before a worker's later load.
    func publish(_ index: Int, _ value: UInt64) { words[index].store(value, ordering: .releasing) }
    func add(_ index: Int) { words[index].wrappingAdd(1, ordering: .relaxed) }
}

/// Threads loading and storing through their software TLBs while another thread unmaps, remaps,
/// protects, forks, migrates, pages out and discards the same pages. The oracle:
///
/// - *Stable pages* (content-preserving changes only: mprotect read-only and back, fork, migration,
///   page-out): each page has one writer storing increasing sequence numbers and publishing the
///   last one whose store returned. Any read of the page must return that sequence or a later one
///   (a lost store, or a read through a TLB still mapping a replaced frame, reads older); a store
///   that succeeds although the page's published state was "read-only" before and after it is a
///   write through a translation mprotect had removed before returning; and the changer, having
///   published read-only, reads the content at once and again after the writer has tried twice
///   more: a difference is a store that landed after mprotect returned. After a fork returns, the
///   child's content must not change while the parent's writers keep writing (a store through a
///   stale writable entry would land in the frame the child shares) and must hold every sequence
///   published before the fork.
/// - *Churning pages* (unmapped and mapped again, moved away and back, PROT_NONE, discarded): an
///   access that succeeds although the page was published unmapped or inaccessible before and
///   after it used a translation removed before the change returned.
/// - Everywhere: a token carries its page; reading another page's token is a store through a
///   stale entry into a frame freed and reused (or a read of one).
/// - At the end: no entry outside VMAs or above their protection, and every frame returned.
@Suite("ConcurrentTLBShootdown")
struct ConcurrentTLBShootdownTests {
    static let page = AddressSpace.pageSize
    static let stablePages = 16
    static let churnPages = 24
    static let stableBase: UInt64 = 0x20_0000_0000
    /// Churning pages sit two pages apart (each its own VMA), spanning 48 pages: an munmap of them
    /// all is above the single-page flush ceiling (a full flush).
    static let churnBase: UInt64 = 0x21_0000_0000
    static let scratchBase: UInt64 = 0x22_0000_0000
    static let writers = 2

    static func stableAddress(_ index: Int) -> UInt64 { stableBase + UInt64(index) * page }
    /// A byte offset into a page: accesses use every offset (a TLB fill once tagged an entry with
    /// the access's low bits; a token is a page's whole content, so any address in it works).
    static func offset(_ random: inout SplitMix64) -> UInt64 { random.below(page) }
    static func churnAddress(_ index: Int) -> UInt64 { churnBase + UInt64(index) * 2 * page }
    /// Page identities in tokens: stable pages 1..., churning pages after them.
    static func stableToken(_ index: Int, _ sequence: UInt64) -> UInt64 { UInt64(index + 1) << 40 | sequence }
    static func churnToken(_ index: Int, _ thread: Int, _ counter: UInt64) -> UInt64 {
        UInt64(stablePages + index + 1) << 40 | UInt64(thread) << 32 | (counter & 0xFFFF_FFFF)
    }
    static func tokenPage(_ token: UInt64) -> Int { Int(token >> 40) - 1 }
    static func tokenSequence(_ token: UInt64) -> UInt64 { token & 0xFF_FFFF_FFFF }

    /// The content of `address` as the page table says (frame or swap slot), without any TLB.
    static func content(_ space: AddressSpace, _ address: UInt64) -> UInt64? {
        guard let entry = space.translate(address) else { return nil }
        if let slot = entry.swapSlot { return space.memory.swap.token(of: slot) }
        return entry.frame.map { space.memory.token(of: $0) }
    }

    /// Serialized: each case runs four threads on what may be two CPUs; two cases at once would
    /// mostly measure how long a preempted access takes to be scheduled again.
    @Test(.serialized, arguments: [TLBMode.perThread, .perThreadFenced])
    func accessesNeverUseARemovedTranslation(mode: TLBMode) throws {
        let memory = PhysicalMemory(capacity: 1 << 13, swapSlots: 1 << 10)
        let space = try AddressSpace(configuration: AddressSpace.Configuration(tlb: mode), memory: memory)
        try space.map(length: UInt64(Self.stablePages) * Self.page, placement: .fixed(Self.stableBase))
        for index in 0..<Self.stablePages { try space.write(Self.stableToken(index, 1), at: Self.stableAddress(index)) }
        for index in 0..<Self.churnPages {
            try space.map(length: Self.page, placement: .fixed(Self.churnAddress(index)))
            try space.write(Self.churnToken(index, 0, 0), at: Self.churnAddress(index))
        }
        let stableState = PageWords(Self.stablePages)
        let churnState = PageWords(Self.churnPages)
        let lastWritten = PageWords(Self.stablePages)
        for index in 0..<Self.stablePages { lastWritten.publish(index, 1) }
        /// Store attempts per stable page (progress the changer waits for).
        let attempts = PageWords(Self.stablePages)
        /// Accesses per worker (progress the changer waits for).
        let accesses = PageWords(Self.writers + 1)
        let stop = SharedFlag()
        let violations = ConcurrentViolations()
        let changes = ConcurrentHarness.iterations(250, minimum: 20)

        @Sendable func kind(_ word: UInt64) -> PageKind { PageKind(rawValue: word & 7)! }

        /// Checks a successful read `value` of stable page `index`, given the sequence published
        /// before the read.
        @Sendable func checkStableRead(_ index: Int, _ value: UInt64, atLeast published: UInt64, _ who: String) {
            if Self.tokenPage(value) != index {
                violations.record("\(who): stable page \(index) held \(value.hex), a token of page \(Self.tokenPage(value))")
            } else if Self.tokenSequence(value) < published {
                violations.record("\(who): stable page \(index) read sequence \(Self.tokenSequence(value)) after sequence \(published) was stored")
            }
        }

        /// One access to churning page `index` (a load, or a store of a token of `thread`).
        @Sendable func churnAccess(
            _ index: Int, at offset: UInt64, thread: Int, counter: UInt64, store: Bool, _ who: String
        ) {
            let address = Self.churnAddress(index) + offset
            let before = churnState.load(index)
            var value: UInt64? = nil
            do {
                if store {
                    try space.write(Self.churnToken(index, thread, counter), at: address)
                    value = Self.churnToken(index, thread, counter)
                } else {
                    value = try space.read(at: address)
                }
            } catch MemoryError.segmentationFault {
            } catch {
                violations.record("\(who): churning page \(index): \(error)")
            }
            let after = churnState.load(index)
            guard let value else { return }
            if before == after && (kind(before) == .unmapped || kind(before) == .inaccessible) {
                violations.record("\(who): \(store ? "store to" : "load from") churning page \(index) succeeded after it was \(kind(before)) (state \(before.hex))")
            }
            if value != 0 && Self.tokenPage(value) != Self.stablePages + index {
                violations.record("\(who): churning page \(index) held \(value.hex), a token of page \(Self.tokenPage(value))")
            }
        }

        let writer: @Sendable (Int) -> Void = { thread in
            var random = SplitMix64(spreading: 0x7_1B00 &+ UInt64(thread))
            let owned = stride(from: thread, to: Self.stablePages, by: Self.writers).map { $0 }
            var sequences = [UInt64](repeating: 1, count: Self.stablePages)
            var counter: UInt64 = 0
            let who = "writer \(thread)"
            while !stop.isSet {
                counter += 1
                accesses.add(thread)
                switch random.below(8) {
                case 0..<4:
                    // A store to an owned stable page.
                    let index = random.pick(owned)
                    let before = stableState.load(index)
                    let sequence = sequences[index] + 1
                    var stored = false
                    do {
                        try space.write(Self.stableToken(index, sequence), at: Self.stableAddress(index) + Self.offset(&random))
                        stored = true
                    } catch MemoryError.segmentationFault {
                    } catch {
                        violations.record("\(who): stable page \(index): \(error)")
                    }
                    let after = stableState.load(index)
                    attempts.add(index)
                    if stored {
                        sequences[index] = sequence
                        lastWritten.publish(index, sequence)
                        if before == after && kind(before) == .readOnly {
                            violations.record("\(who): store to stable page \(index) succeeded after mprotect(PROT_READ) returned (state \(before.hex))")
                        }
                    } else if before == after && kind(before) == .readWrite {
                        violations.record("\(who): store to read-write stable page \(index) faulted (state \(before.hex))")
                    }
                case 4..<6:
                    let index = random.index(below: Self.stablePages)
                    let published = lastWritten.load(index)
                    do {
                        checkStableRead(index, try space.read(at: Self.stableAddress(index) + Self.offset(&random)), atLeast: published, who)
                    } catch {
                        violations.record("\(who): load from stable page \(index): \(error)")
                    }
                default:
                    churnAccess(random.index(below: Self.churnPages), at: Self.offset(&random), thread: thread + 1, counter: counter,
                                store: random.chance(50), who)
                }
            }
        }

        let reader: @Sendable () -> Void = {
            var random = SplitMix64(spreading: 0x7_1B99)
            while !stop.isSet {
                accesses.add(Self.writers)
                if random.chance(50) {
                    let index = random.index(below: Self.stablePages)
                    let published = lastWritten.load(index)
                    do {
                        checkStableRead(index, try space.read(at: Self.stableAddress(index) + Self.offset(&random)), atLeast: published, "reader")
                    } catch {
                        violations.record("reader: load from stable page \(index): \(error)")
                    }
                } else {
                    churnAccess(random.index(below: Self.churnPages), at: Self.offset(&random), thread: 0, counter: 0, store: false, "reader")
                }
            }
        }

        let changer: @Sendable () -> Void = {
            defer { stop.set() }
            var random = SplitMix64(spreading: 0x7_1BCC)
            var epoch: UInt64 = 0
            func nextState(_ kind: PageKind) -> UInt64 {
                epoch += 1
                return epoch << 3 | kind.rawValue
            }
            /// Waits until page `index`'s writer tried `count` more stores.
            func waitForStores(_ index: Int, _ count: UInt64) {
                let target = attempts.load(index) + count
                while attempts.load(index) < target && !stop.isSet { cinterop_yield() }
            }
            /// Waits until every worker made `count` more accesses.
            func waitForAccesses(_ count: UInt64) {
                for thread in 0...Self.writers {
                    let target = accesses.load(thread) + count
                    while accesses.load(thread) < target { cinterop_yield() }
                }
            }
            let stableLength = UInt64(Self.stablePages) * Self.page
            for _ in 0..<changes {
                do {
                    switch random.below(9) {
                    case 0, 1:
                        // mprotect(PROT_READ) of one stable page, then back.
                        let index = random.index(below: Self.stablePages)
                        let address = Self.stableAddress(index)
                        stableState.publish(index, nextState(.changing))
                        try space.protect(address: address, length: Self.page, protection: .read)
                        stableState.publish(index, nextState(.readOnly))
                        let atReturn = Self.content(space, address)
                        waitForStores(index, 2)
                        let later = Self.content(space, address)
                        if atReturn != later {
                            violations.record("stable page \(index): \((atReturn ?? 0).hex) when mprotect(PROT_READ) returned, then \((later ?? 0).hex)")
                        }
                        stableState.publish(index, nextState(.changing))
                        try space.protect(address: address, length: Self.page, protection: .readWrite)
                        stableState.publish(index, nextState(.readWrite))
                    case 2:
                        // fork: the child's content holds every published store and never changes.
                        let published = (0..<Self.stablePages).map { lastWritten.load($0) }
                        let child = try space.fork()
                        let atFork = (0..<Self.stablePages).map { Self.content(child, Self.stableAddress($0)) }
                        waitForAccesses(8)
                        for index in 0..<Self.stablePages {
                            let later = Self.content(child, Self.stableAddress(index))
                            guard let value = atFork[index] else {
                                violations.record("child: stable page \(index) not mapped")
                                continue
                            }
                            if later != value {
                                violations.record("child: stable page \(index) was \(value.hex) when fork returned, then \((later ?? 0).hex)")
                            }
                            if Self.tokenPage(value) != index || Self.tokenSequence(value) < published[index] {
                                violations.record("child: stable page \(index) holds \(value.hex), sequence \(published[index]) was stored before fork")
                            }
                        }
                        child.teardown()
                    case 3:
                        _ = try space.migrate(address: Self.stableBase, length: stableLength)
                    case 4:
                        let first = random.index(below: Self.stablePages)
                        let count = 1 + random.index(below: Self.stablePages - first)
                        try space.advise(address: Self.stableAddress(first), length: UInt64(count) * Self.page, advice: .pageOut)
                    case 5:
                        // munmap one churning page, then map it again.
                        let index = random.index(below: Self.churnPages)
                        let address = Self.churnAddress(index)
                        churnState.publish(index, nextState(.changing))
                        try space.unmap(address: address, length: Self.page)
                        churnState.publish(index, nextState(.unmapped))
                        waitForAccesses(4)
                        churnState.publish(index, nextState(.changing))
                        try space.map(length: Self.page, placement: .fixed(address))
                        churnState.publish(index, nextState(.readWrite))
                    case 6:
                        // mremap it away and back (its content moves with it).
                        let index = random.index(below: Self.churnPages)
                        let address = Self.churnAddress(index)
                        let scratch = Self.scratchBase + UInt64(index) * 2 * Self.page
                        churnState.publish(index, nextState(.changing))
                        try space.remap(address: address, oldLength: Self.page, newLength: Self.page, move: .fixed(scratch))
                        churnState.publish(index, nextState(.unmapped))
                        waitForAccesses(4)
                        churnState.publish(index, nextState(.changing))
                        try space.remap(address: scratch, oldLength: Self.page, newLength: Self.page, move: .fixed(address))
                        churnState.publish(index, nextState(.readWrite))
                    case 7:
                        // mprotect(PROT_NONE) and back, or MADV_DONTNEED.
                        let index = random.index(below: Self.churnPages)
                        let address = Self.churnAddress(index)
                        churnState.publish(index, nextState(.changing))
                        if random.chance(50) {
                            try space.protect(address: address, length: Self.page, protection: [])
                            churnState.publish(index, nextState(.inaccessible))
                            waitForAccesses(4)
                            churnState.publish(index, nextState(.changing))
                            try space.protect(address: address, length: Self.page, protection: .readWrite)
                        } else {
                            try space.advise(address: address, length: Self.page, advice: .dontNeed)
                        }
                        churnState.publish(index, nextState(.readWrite))
                    default:
                        // munmap every churning page at once (a range above the flush ceiling).
                        for index in 0..<Self.churnPages { churnState.publish(index, nextState(.changing)) }
                        try space.unmap(address: Self.churnBase, length: UInt64(Self.churnPages) * 2 * Self.page)
                        for index in 0..<Self.churnPages { churnState.publish(index, nextState(.unmapped)) }
                        waitForAccesses(4)
                        for index in 0..<Self.churnPages {
                            churnState.publish(index, nextState(.changing))
                            try space.map(length: Self.page, placement: .fixed(Self.churnAddress(index)))
                            churnState.publish(index, nextState(.readWrite))
                        }
                    }
                } catch {
                    violations.record("changer: \(error)")
                }
            }
        }

        let finished = ConcurrentHarness.run(
            "tlb-shootdown", (0..<Self.writers).map { thread in { writer(thread) } } + [reader, changer])
        guard finished else { return }
        violations.expectNone("TLB shootdown (\(mode))")
        let audit = space.audit()
        #expect(audit.entriesOutsideVMAs == 0 && audit.entriesExceedingProtection == 0 && audit.deadTablesReached == 0,
                "\(audit)")
        let stats = space.statistics
        ConcurrentHarness.report("tlb \(mode): \(stats.nonZero.filter { $0.name.hasPrefix("tlb") })")
        #expect(stats[.tlbHits] > 0 && stats[.tlbShootdowns] > 0)
        space.teardown()
        #expect(memory.framesInUse == 0 && memory.swap.slotsInUse == 0)
    }
}
