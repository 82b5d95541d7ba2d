import Shootdown
import Synchronization

/// One worker thread of a ``TortureHarness`` run: draws operations from its own random stream,
/// performs them inside its region (or on the whole space), and checks the mirrors after each.
///
/// Ownership: created, run and finished on its own thread; shares only ``TortureShared`` and what
/// the configuration holds.
final class TortureWorker {
    /// What a worker hands back.
    struct Summary: Sendable {
        var counts: [Int]
        var errors: [Int]
        var checks: Int
        var pages: Int
        var translations: Int
    }

    private let index: Int
    private let seed: UInt64
    private let space: AddressSpace
    private let mirrors: [any TortureMirror]
    private let shared: TortureShared
    private let regionStart: UInt64
    private let regionEnd: UInt64
    private let regionPages: Int
    private let mix: [(TortureOperation, Int)]
    private var random: SplitMix64
    private var checker: TortureChecker
    private var step = 0
    private var current: TortureOperation = .map
    private var counts = [Int](repeating: 0, count: TortureOperation.allCases.count)
    private var errors = [Int](repeating: 0, count: TortureOperation.allCases.count)
    /// Whether the current operation threw somewhere.
    private var failed = false
    /// This worker's interval notifier, while inserted.
    private var notifier: IntervalNotifier?

    private static let page = AddressSpace.pageSize
    private static let hugePages = Int(AddressSpace.hugePageSize / AddressSpace.pageSize)

    init(index: Int, configuration: TortureHarness.Configuration, shared: TortureShared) {
        self.index = index
        seed = configuration.seed
        space = configuration.space
        mirrors = configuration.mirrors
        self.shared = shared
        regionPages = configuration.regionPages
        regionStart = configuration.arenaStart + UInt64(index) * UInt64(configuration.regionPages) * Self.page
        regionEnd = regionStart + UInt64(configuration.regionPages) * Self.page
        mix = TortureOperation.allCases.compactMap { kind in
            configuration.mix[kind].flatMap { $0 > 0 ? (kind, $0) : nil }
        }
        random = SplitMix64(seed: configuration.seed &+ UInt64(index) &* 0x9E37_79B9_7F4A_7C15)
        checker = TortureChecker(space: configuration.space, mirrors: configuration.mirrors)
    }

    /// Runs until the budget is spent or the deadline passes.
    func run() {
        while shared.claim() {
            step += 1
            current = random.weighted(mix)
            failed = false
            perform(current)
            counts[current.ordinal] += 1
            if failed { errors[current.ordinal] += 1 }
            // Relaxed: a progress counter.
            shared.performed.wrappingAdd(1, ordering: .relaxed)
        }
    }

    /// Removes what the worker still holds in the space; returns its counts.
    func finish() -> Summary {
        notifier?.remove()
        notifier = nil
        return Summary(
            counts: counts, errors: errors, checks: checker.checks, pages: checker.pages,
            translations: checker.translations)
    }

    // MARK: - Drawing ranges

    /// A page-aligned range of the region: mostly short, sometimes long.
    private func range(maximum: Int = Int.max) -> (address: UInt64, pages: Int) {
        let first = Int(random.below(UInt64(regionPages)))
        let lengths = random.weighted([(1...4, 50), (5...32, 35), (33...256, 13), (257...Self.hugePages, 2)])
        let count = min(random.int(lengths), regionPages - first, maximum)
        return (regionStart + UInt64(first) * Self.page, count)
    }

    /// A whole 2 MiB block of the region.
    private func hugeBlock() -> UInt64 {
        regionStart + random.below(UInt64(regionPages / Self.hugePages)) * AddressSpace.hugePageSize
    }

    /// A page of the region.
    private func page() -> UInt64 { regionStart + random.below(UInt64(regionPages)) * Self.page }

    private func bytes(_ pages: Int) -> UInt64 { UInt64(pages) * Self.page }

    private func contains(_ address: UInt64, _ length: UInt64) -> Bool {
        address >= regionStart && address <= regionEnd && length <= regionEnd - address
    }

    /// A token to store: this worker's step, tagged with its index.
    private var token: UInt64 { UInt64(index) << 48 | UInt64(step) }

    // MARK: - Checking

    /// Records that the operation threw (`nil`), passing the value through.
    @discardableResult
    private func ok<T>(_ value: T?) -> T? {
        if value == nil { failed = true }
        return value
    }

    /// The oracle over `[address, address + pages pages)` (clipped to the region).
    private func check(_ address: UInt64, _ pages: Int) {
        let start = max(address, regionStart)
        let end = min(address &+ bytes(pages), regionEnd)
        guard start < end else { return }
        let seed = self.seed
        let index = self.index
        let step = self.step
        let operation = current
        let shared = self.shared
        checker.check(start: start, pages: Int((end - start) / Self.page)) { detail in
            shared.record(TortureViolation(seed: seed, thread: index, step: step, operation: operation, detail: detail))
        }
    }

    /// The oracle over the whole region (after whole-space operations).
    private func checkRegion() { check(regionStart, regionPages) }

    /// Unmaps a mapping a placement put outside the region (never inside the arena: see the
    /// harness's layout).
    private func discardIfOutside(_ address: UInt64, _ length: UInt64) {
        if !contains(address, length) {
            _ = try? space.write(token, at: address)
            ok(try? space.unmap(address: address, length: length))
        }
    }

    // MARK: - Operations

    private func perform(_ operation: TortureOperation) {
        switch operation {
        case .map: map()
        case .unmap:
            let (address, pages) = range()
            ok(try? space.unmap(address: address, length: bytes(pages)))
            check(address, pages)
        case .protect:
            let (address, pages) = range()
            let protection = random.weighted([(Protection.none, 10), (.read, 35), (.readWrite, 45), ([.read, .write, .exec], 10)])
            ok(try? space.protect(address: address, length: bytes(pages), protection: protection))
            check(address, pages)
        case .remap: remap()
        case .adviseDiscard:
            advise(random.pick([.dontNeed, .dontNeed, .dontNeedLocked, .free, .remove]))
        case .advisePageOut:
            advise(random.chance(80) ? .pageOut : .cold)
        case .advisePopulate:
            advise(random.pick([.populateRead, .populateWrite, .willNeed]))
        case .adviseHuge: huge()
        case .adviseGuard:
            advise(random.chance(50) ? .guardInstall : .guardRemove)
        case .adviseOther:
            advise(random.pick([
                .normal, .random, .sequential, .dontFork, .doFork, .wipeOnFork, .keepOnFork, .dontDump, .doDump,
                .mergeable, .unmergeable,
            ]))
        case .lock:
            let (address, pages) = range(maximum: 64)
            switch random.below(5) {
            case 0, 1: ok(try? space.lock(address: address, length: bytes(pages)))
            case 2: ok(try? space.lock(address: address, length: bytes(pages), onFault: true))
            default: ok(try? space.unlock(address: address, length: bytes(pages)))
            }
            check(address, pages)
        case .lockAll:
            let flags: AddressSpace.LockAllFlags = random.pick([
                [.current], [.future], [.current, .future], [.current, .onFault], [.future, .onFault],
            ])
            ok(try? space.lockAll(flags))
            ok(try? space.unlockAll())
            checkRegion()
        case .fork: fork()
        case .access:
            let address = page()
            if random.chance(50) {
                ok(try? space.read(at: address))
            } else {
                ok(try? space.write(token, at: address))
            }
            check(address, 1)
        case .fault:
            let address = page()
            ok(try? space.fault(at: address, access: random.chance(50) ? .read : .write))
            check(address, 1)
        case .pin:
            let (address, pages) = range(maximum: 16)
            if let pinned = ok(try? space.pin(address: address, length: bytes(pages), write: random.chance(50))) {
                ok(try? space.unpin(pinned))
            }
            check(address, pages)
        case .intervalNotifier:
            if let notifier {
                notifier.remove()
                self.notifier = nil
            } else {
                let (address, pages) = range(maximum: 64)
                notifier = ok(try? space.insertIntervalNotifier(
                    start: address, length: bytes(pages), handler: shared.intervalHandler))
            }
        case .mirrorPopulate:
            guard let mirror = mirror() else { return }
            let (address, pages) = range(maximum: 32)
            ok(try? mirror.populate(address: address, length: bytes(pages), write: random.chance(40)))
            check(address, pages)
        case .mirrorRead:
            guard let mirror = mirror() else { return }
            let address = page()
            ok(try? mirror.read(at: address))
            check(address, 1)
        case .mirrorWrite:
            guard let mirror = mirror() else { return }
            let address = page()
            ok(try? mirror.write(token, at: address))
            check(address, 1)
        case .mirrorMigrate:
            guard let mirror = mirror() else { return }
            let (address, pages) = range(maximum: 16)
            ok(try? mirror.migrate(address: address, length: bytes(pages)))
            check(address, pages)
        case .reclaim:
            ok(try? space.reclaim(pages: random.int(1...64)))
            checkRegion()
        case .migrate:
            let (address, pages) = range(maximum: 64)
            ok(try? space.migrate(address: address, length: bytes(pages)))
            check(address, pages)
        case .softDirty:
            if random.chance(15) {
                ok(try? space.clearSoftDirty())
                checkRegion()
            } else {
                let (address, pages) = range()
                ok(try? space.clearSoftDirty(address: address, length: bytes(pages)))
                ok(try? space.softDirtyPages(address: address, length: bytes(pages)))
                check(address, pages)
            }
        case .age:
            let (address, pages) = range(maximum: 64)
            ok(try? space.age(address: address, length: bytes(pages), flush: random.chance(50)))
            _ = space.testYoung(at: address)
            check(address, pages)
        }
    }

    private func mirror() -> (any TortureMirror)? {
        mirrors.isEmpty ? nil : mirrors[Int(random.below(UInt64(mirrors.count)))]
    }

    private func advise(_ advice: AddressSpace.Advice) {
        let (address, pages) = range()
        ok(try? space.advise(address: address, length: bytes(pages), advice: advice))
        check(address, pages)
    }

    /// Every form of `mmap` (placements, options, protections).
    private func map() {
        var (address, pages) = range(maximum: 256)
        var options: AddressSpace.MapOptions = []
        if random.chance(20) { options.insert(.shared) }
        if random.chance(10) {
            options.insert(.hugePage)
            address = hugeBlock()
            pages = Self.hugePages
        }
        if random.chance(4) { options.insert(.locked) }
        if random.chance(15) { options.insert(.populate) }
        if random.chance(10) { options.insert(.noReserve) }
        if random.chance(4) && !options.contains(.shared) { options.insert(.growsDown) }
        let protection = random.weighted([(Protection.readWrite, 70), (.read, 15), (Protection.none, 5), ([.read, .write, .exec], 10)])
        let placement: AddressSpace.Placement = random.weighted([
            (.fixed(address), 55), (.fixedNoReplace(address), 20), (.hint(address), 15), (.anywhere, 10),
        ])
        let length = bytes(pages)
        if let mapped = ok(try? space.map(length: length, protection: protection, placement: placement, options: options)) {
            discardIfOutside(mapped, length)
        }
        check(address, pages)
    }

    /// Every form of `mremap`, each kept inside the region (a move out of it is unmapped at once).
    private func remap() {
        let (address, pages) = range(maximum: 64)
        let room = Int((regionEnd - address) / Self.page)
        switch random.below(5) {
        case 0:  // shrink
            guard pages >= 2 else { return }
            ok(try? space.remap(address: address, oldLength: bytes(pages), newLength: bytes(random.int(1...(pages - 1)))))
            check(address, pages)
        case 1:  // grow in place, never past the region
            let grown = min(pages + random.int(1...16), room)
            ok(try? space.remap(address: address, oldLength: bytes(pages), newLength: bytes(grown)))
            check(address, grown)
        case 2, 3:  // move to a fixed target in the region, with or without MREMAP_DONTUNMAP
            let dontUnmap = random.below(2) == 0
            let newPages = dontUnmap ? pages : (random.chance(70) ? pages : random.int(1...64))
            guard newPages <= regionPages else { return }
            let target = regionStart + random.below(UInt64(regionPages - newPages + 1)) * Self.page
            // MREMAP_DONTUNMAP without MREMAP_FIXED sometimes: the target is then a hint only.
            let fixed = !dontUnmap || random.chance(70)
            if target < address + bytes(pages) && address < target + bytes(newPages) && fixed { return }
            var flags: AddressSpace.RemapFlags = [.mayMove]
            if fixed { flags.insert(.fixed) }
            if dontUnmap { flags.insert(.dontUnmap) }
            if let moved = ok(try? space.remap(
                address: address, oldLength: bytes(pages), newLength: bytes(newPages), flags: flags,
                newAddress: fixed ? target : 0))
            {
                discardIfOutside(moved, bytes(newPages))
            }
            check(address, pages)
            check(target, newPages)
        default:  // may move: grows in place when there is room in the region, moves out otherwise
            let grown = min(pages + random.int(1...16), room)
            if let moved = ok(try? space.remap(address: address, oldLength: bytes(pages), newLength: bytes(grown), move: .mayMove)) {
                discardIfOutside(moved, bytes(grown))
            }
            check(address, grown)
        }
    }

    /// `MADV_HUGEPAGE` / `NOHUGEPAGE` / `COLLAPSE` and ``AddressSpace/collapse(address:length:)``
    /// on a whole 2 MiB block.
    private func huge() {
        let block = hugeBlock()
        let length = AddressSpace.hugePageSize
        switch random.below(10) {
        case 0..<5:
            ok(try? space.advise(address: block, length: length, advice: .hugePage))
            ok(try? space.fault(at: block + random.below(UInt64(Self.hugePages)) * Self.page, access: .write))
        case 5: ok(try? space.advise(address: block, length: length, advice: .noHugePage))
        case 6, 7, 8:
            // Half the time on a fresh block with a few pages written and mirrored, so the
            // collapse has something to replace (churned blocks rarely qualify).
            if random.chance(50) { prepareCollapse(block, hugePage: false) }
            ok(try? space.advise(address: block, length: length, advice: .collapse))
        default:
            if random.chance(50) { prepareCollapse(block, hugePage: true) }
            ok(try? space.collapse(address: block, length: length))
        }
        check(block, Self.hugePages)
    }

    /// Maps a fresh private block over `block` (huge-page-allowed if `hugePage`, populated page by
    /// page then, so no fault installs a huge mapping yet), writes a few of its pages and mirrors
    /// some of them for writing (a zero-page entry would keep the block from collapsing).
    private func prepareCollapse(_ block: UInt64, hugePage: Bool) {
        guard ok(try? space.map(length: AddressSpace.hugePageSize, placement: .fixed(block))) != nil else { return }
        for _ in 0..<random.int(1...8) {
            ok(try? space.write(token, at: block + random.below(UInt64(Self.hugePages)) * Self.page))
        }
        if hugePage { ok(try? space.advise(address: block, length: AddressSpace.hugePageSize, advice: .hugePage)) }
        if let mirror = mirror() {
            let first = random.below(UInt64(Self.hugePages - 8))
            ok(try? mirror.populate(address: block + first * Self.page, length: 8 * Self.page, write: true))
        }
    }

    /// `fork`, then the child writes, reads and discards a little of this region, and goes away.
    private func fork() {
        if let child = ok(try? space.fork()) {
            for _ in 0..<random.int(1...4) {
                let address = page()
                _ = try? child.write(token, at: address)
                _ = try? child.read(at: address)
            }
            let (address, pages) = range(maximum: 16)
            _ = try? child.advise(address: address, length: bytes(pages), advice: .dontNeed)
            child.teardown()
        }
        checkRegion()
    }
}
