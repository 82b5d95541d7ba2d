@_spi(Benchmarking) import Shootdown
import ShootdownVerification
import Synchronization

/// An interval notifier's handler that checks what it is told: every invalidation it receives
/// intersects its interval. It bumps the sequence like a real mirror would.
final class CheckingIntervalHandler: IntervalNotifierHandler, Sendable {
    let stray = Atomic<Int>(0)

    func invalidate(_ notifier: IntervalNotifier, range: InvalidationRange, currentSequence: UInt64) -> Bool {
        if range.start >= notifier.end || range.end <= notifier.start {
            stray.add(1, ordering: .relaxed)  // read after the operation returns, on this thread
        }
        notifier.setSequence(currentSequence)
        return true
    }
}

/// One decoded run of the `ops` target.
///
/// Decoding (stable: changing it invalidates the corpus): three configuration bytes, then up to
/// ``maximumSteps`` steps, each an opcode byte followed by the operands that operation reads.
/// Operands are relative to the current VMAs (a VMA's start, end or a page inside it, a run of
/// adjacent VMAs) or to a fixed window, sometimes deliberately bad values.
///
/// While every operation so far is one the ``ReferenceModel`` models, the run is *checked*: each
/// step's outcome, the VMA lists, every page of every VMA, the audit and the frame accounting
/// must agree with the model. The first operation outside the model (fork, reclaim, collapse,
/// guard regions, huge or growsdown or file mappings, pins) drops the model; from then on the
/// run is *unchecked*: no trap, audit invariants of every space, mirror coherence, interval
/// notifiers only told about their interval. At the end every space is torn down and every frame
/// and swap slot must be back.
struct OpsRun {
    static let page: UInt64 = 4096
    static let window: UInt64 = 0x1000_0000
    static let windowPages: UInt64 = 320
    static let baseOffset: UInt64 = 192
    static let breakOffset: UInt64 = 40
    /// The mapped total beyond which maps stop and unmaps of the largest VMA are forced (below
    /// 512 pages, so no VMA the model follows can hold a 2 MiB block).
    static let mappedCap: UInt64 = 320
    static let maximumSteps = 64
    static let maximumSpaces = 4

    var input: FuzzInput
    var step = 0
    var history: [String] = []
    let memory = PhysicalMemory(capacity: 16_384, swapSlots: 8192)
    var spaces: [AddressSpace] = []
    /// The model of `spaces[0]`, while the run is checked.
    var model: ReferenceModel?
    var mirror: SoftwareMirror?
    var intervals: [IntervalNotifier] = []
    let handler = CheckingIntervalHandler()
    var pins: [PinnedRange] = []
    var files: [FileObject] = []

    init(input: FuzzInput) { self.input = input }

    mutating func fail(_ problems: [String], _ what: String) -> Never {
        fatalError(
            """
            ops: finding at step \(step) (\(what)):
            \(problems.prefix(12).joined(separator: "\n"))
            VMAs: \(spaces.map { $0.mapsText() })
            history:
            \(history.suffix(40).joined(separator: "\n"))
            """)
    }

    // MARK: - The run

    mutating func run() {
        let flags = input.byte()
        let more = input.byte()
        let limit = input.byte()
        var configuration = AddressSpace.Configuration(
            faultPath: flags & 1 != 0 ? .speculative : .mmapLock,
            notifierList: flags & 2 != 0 ? .rcu : .rwlock,
            pageTableLocking: flags & 4 != 0 ? .single : .split,
            mmapBase: Self.window + Self.baseOffset * Self.page,
            mmapMinAddress: Self.window)
        configuration.programBreakStart = Self.window + Self.breakOffset * Self.page
        configuration.tlb = flags & 8 != 0 ? .perThread : .none
        if more & 1 != 0 { configuration.maxMapCount = 3 + Int(limit % 10) }
        switch (more >> 1) & 3 {
        case 0: configuration.lockedMemoryLimit = UInt64(limit % 25) * Self.page
        case 1: configuration.capabilities = .ipcLock
        default: break
        }
        let space: AddressSpace
        do throws(MemoryError) {
            space = try AddressSpace(configuration: configuration, memory: memory)
            if flags & 16 != 0 {
                mirror = try SoftwareMirror(space: space, start: Self.window, length: Self.windowPages * Self.page)
            }
        } catch {
            fail(["setup failed: \(error)"], "configuration")
        }
        spaces = [space]
        model = ReferenceModel(configuration: configuration)
        history.append("config \(flags) \(more) \(limit)")

        while step < Self.maximumSteps && !input.isExhausted {
            self.step(opcode: input.byte())
            step += 1
        }
        finish()
    }

    /// The ranges of the space an operation aims at (the model's areas while checked).
    func areas(_ target: Int) -> [(start: UInt64, end: UInt64)] {
        if target == 0, let model { return model.areas.map { ($0.start, $0.end) } }
        return spaces[target].mappings().map { ($0.start, $0.end) }
    }

    func mappedPages(_ target: Int) -> UInt64 {
        areas(target).reduce(0) { $0 + ($1.end - $1.start) / Self.page }
    }

    mutating func step(opcode: UInt8) {
        let target = spaces.count > 1 ? input.index(below: spaces.count) : 0
        let space = spaces[target]
        let ranges = areas(target)
        let overCap = mappedPages(target) > Self.mappedCap
        var operands = Operands(input: input, areas: ranges)
        defer { input = operands.input }
        let op: ReferenceOperation
        switch opcode % 32 {
        case 0..<4 where !overCap:
            let placement: AddressSpace.Placement
            switch opcode % 4 {
            case 0: placement = .anywhere
            case 1: placement = .hint(operands.address())
            case 2: placement = .fixed(operands.address())
            default: placement = .fixedNoReplace(operands.address())
            }
            let bits = operands.input.byte()
            var options: AddressSpace.MapOptions = []
            if bits & 1 != 0 { options.insert(.shared) }
            if bits & 2 != 0 { options.insert(.locked) }
            if bits & 4 != 0 { options.insert(.populate) }
            if bits & 8 != 0 { options.insert(.noReserve) }
            if bits & 16 != 0 { options.insert(.hugePage) }
            op = .map(length: operands.length(), protection: operands.protection(), placement: placement, options: options)
        case 0..<6:
            if overCap, let largest = ranges.max(by: { $0.end - $0.start < $1.end - $1.start }) {
                op = .unmap(address: largest.start, length: largest.end - largest.start)
            } else {
                let (address, length) = operands.input.chance(50) ? operands.range() : (operands.address(), operands.length())
                op = .unmap(address: address, length: length)
            }
        case 6:
            let (address, length) = operands.range()
            op = .protect(address: address, length: length, protection: operands.protection())
        case 7, 8:
            let (source, oldLength) = operands.input.chance(80) ? operands.range() : (operands.address(), operands.length())
            var newLength = operands.input.chance(90) ? operands.pages(48) : operands.badLength()
            if overCap { newLength = min(newLength, oldLength) }
            let move: AddressSpace.RemapMove
            switch operands.input.below(3) {
            case 0: move = .inPlace
            case 1: move = .mayMove
            default: move = .fixed(operands.address())
            }
            op = .remap(address: source, oldLength: oldLength, newLength: newLength, move: move)
        case 9:
            let (source, length) = operands.range()
            var flags = UInt32(operands.input.byte() & 15)
            // DONTUNMAP of a locked VMA unlocks the old VMA without merging it with neighbours it
            // now matches (Linux 6.18 keeps them apart; MremapTests): a state the model's global
            // merge pass cannot hold and the audit reports as unmerged, so locked sources move
            // without DONTUNMAP (as in the differential test).
            if flags & 4 != 0, overlapsLockedVMA(target, source, source &+ length) { flags &= ~4 }
            var newLength = flags & 4 != 0 || operands.input.chance(60) ? length : operands.pages(16)
            if overCap { newLength = min(newLength, length) }
            var target = operands.address()
            if operands.input.chance(20) { target = 0 }
            op = .remapFlags(address: source, oldLength: length, newLength: newLength, flags: flags, newAddress: target)
        case 10, 11:
            let advice = operands.input.pick(Self.modelledAdvice)
            let (address, length) = operands.range()
            op = .advise(address: address, length: length, advice: advice)
        case 12:
            op = .fault(address: operands.accessAddress(), access: operands.input.chance(50) ? .read : .write)
        case 13:
            op = .read(address: operands.accessAddress())
        case 14, 15:
            op = .write(token: operands.input.u16() | 1 << 32, address: operands.accessAddress())
        case 16:
            let (address, length) = operands.range()
            op = .migrate(address: address, length: length)
        case 17:
            let (address, length) = operands.range()
            op = .clearSoftDirty(address: address, length: length)
        case 18:
            let (address, length) = operands.range()
            op = .softDirtyPages(address: address, length: length)
        case 19:
            var (address, length) = operands.range()
            if operands.input.chance(10) { address &+= 1 }
            let write = operands.input.chance(40)
            guard target == 0, mirror != nil else { return apply(.residency(address: address, length: length), target) }
            op = .mirrorPopulate(address: address, length: length, write: write)
        case 20:
            let (address, length) = operands.range()
            op = operands.input.chance(70)
                ? .lock(address: address, length: length, onFault: operands.input.chance(40))
                : .unlock(address: address, length: length)
        case 21:
            let flags = UInt32(operands.input.byte() & 15)
            op = flags == 15 ? .unlockAll : .lockAll(flags: flags)
        case 22:
            let (address, length) = operands.range()
            switch operands.input.below(4) {
            case 0: op = .seal(address: address, length: length)
            case 1: op = .residency(address: address, length: length)
            case 2: op = .sync(address: address, length: length, flags: UInt32(operands.input.byte() & 15))
            default:
                let start = Self.window + Self.breakOffset * Self.page
                op = .setBreak(address: operands.input.chance(10) ? 0 : start &+ operands.input.below(32 * Self.page) &- 4 * Self.page)
            }
        case 23:
            // An interval notifier: does not change the space, so the run stays checked.
            let (address, length) = operands.range()
            insertInterval(space, address: address, length: length)
            return check(target, "insertIntervalNotifier(\(address.hex), \(length.hex))")
        case 24:
            if !intervals.isEmpty {
                intervals.remove(at: operands.input.index(below: intervals.count)).remove()
            }
            return check(target, "remove interval notifier")
        case 31 where operands.input.chance(25):
            op = .teardown
        default:
            input = operands.input
            return unmodelled(opcode: opcode, target: target, operands: &operands)
        }
        input = operands.input
        apply(op, target)
    }

    func overlapsLockedVMA(_ target: Int, _ start: UInt64, _ end: UInt64) -> Bool {
        if target == 0, let model { return model.overlapping(start, end).contains { $0.flags.contains(.locked) } }
        return spaces[target].mappings().contains { $0.start < end && $0.end > start && $0.flags.contains(.locked) }
    }

    static let modelledAdvice: [AddressSpace.Advice] =
        AddressSpace.Advice.allCases.filter { ![.collapse, .guardInstall, .guardRemove].contains($0) }

    static let protections: [Protection] = [.readWrite, .readWrite, .read, .none, .write, .exec, [.read, .exec], [.read, .write, .exec]]

    mutating func insertInterval(_ space: AddressSpace, address: UInt64, length: UInt64) {
        do throws(MemoryError) {
            intervals.append(try space.insertIntervalNotifier(start: address, length: length, handler: handler))
            history.append("\(step): insertIntervalNotifier(\(address.hex), \(length.hex))")
        } catch {
            history.append("\(step): insertIntervalNotifier(\(address.hex), \(length.hex)) -> \(error)")
            if error != .invalidArgument && error != .addressSpaceDead {
                fail(["insertIntervalNotifier threw \(error)"], "insertIntervalNotifier")
            }
        }
    }

    /// Applies a modelled operation; while checked (and aimed at the modelled space), to the
    /// model too.
    mutating func apply(_ op: ReferenceOperation, _ target: Int) {
        let actual = op.apply(to: spaces[target], mirror: target == 0 ? mirror : nil)
        history.append("\(step): [\(target)] \(op) -> \(actual)")
        if target == 0, let model {
            let expected = op.apply(to: model, mirrorWindow: Self.window..<(Self.window + Self.windowPages * Self.page))
            if actual != expected { fail(["outcome: library \(actual), model \(expected)"], "\(op)") }
            var problems = ReferenceComparison.compare(spaces[0], model)
            if model.mappedPages > 4 * Self.mappedCap { problems.append("decoder bug: \(model.mappedPages) pages mapped") }
            if !problems.isEmpty { fail(problems, "\(op)") }
        }
        check(target, "\(op)")
    }

    /// The checks that hold with or without the model.
    mutating func check(_ target: Int, _ what: String) {
        var problems: [String] = []
        for (index, space) in spaces.enumerated() {
            let audit = space.audit()
            if audit.entriesOutsideVMAs != 0 { problems.append("[\(index)] audit: \(audit.entriesOutsideVMAs) entries outside VMAs") }
            if audit.entriesExceedingProtection != 0 {
                problems.append("[\(index)] audit: \(audit.entriesExceedingProtection) entries exceed protection")
            }
            if audit.deadTablesReached != 0 { problems.append("[\(index)] audit: \(audit.deadTablesReached) dead tables reached") }
            if audit.tablesInHoles != 0 { problems.append("[\(index)] audit: \(audit.tablesInHoles) page tables in holes") }
            // No check of unmerged neighbours here. Linux itself leaves compatible neighbours
            // apart: a forked child's VMAs are copied one for one, a munmap that meets a sealed
            // VMA fails with EPERM after splitting the first VMA (seen on Linux 6.18), DONTUNMAP
            // of a locked VMA unlocks it in place. While the run is checked the model says which
            // pairs stay apart and `ReferenceComparison` compares the count; once unchecked,
            // nothing can tell such a pair from a missed merge.
        }
        if let mirror { problems += ReferenceComparison.checkCoherence(mirror, spaces[0]) }
        let stray = handler.stray.load(ordering: .relaxed)
        if stray != 0 { problems.append("\(stray) interval invalidations outside their interval") }
        if !problems.isEmpty { fail(problems, what) }
    }

    /// Operations the model does not follow: after the first one, the run is unchecked.
    mutating func unmodelled(opcode: UInt8, target: Int, operands: inout Operands) {
        let space = spaces[target]
        let what: String
        var result: String
        do throws(MemoryError) {
            switch opcode % 32 {
            case 0..<4:
                // Over the cap: nothing. (Reached only when maps are refused.)
                return
            case 25:
                guard spaces.count < Self.maximumSpaces else { return }
                what = "fork()"
                let child = try space.fork()
                spaces.append(child)
                result = "child \(spaces.count - 1)"
            case 26:
                let pages = Int(operands.input.below(64))
                what = "reclaim(pages: \(pages))"
                result = "\(try space.reclaim(pages: pages))"
            case 27:
                let (address, length) = operands.range()
                if operands.input.chance(50) {
                    what = "collapse(\(address.hex), \(length.hex))"
                    result = "\(try space.collapse(address: address, length: length))"
                } else {
                    what = "advise(\(address.hex), \(length.hex), collapse)"
                    try space.advise(address: address, length: length, advice: .collapse)
                    result = "done"
                }
            case 28:
                let (address, length) = operands.range()
                let advice: AddressSpace.Advice = operands.input.chance(50) ? .guardInstall : .guardRemove
                what = "advise(\(address.hex), \(length.hex), \(advice))"
                try space.advise(address: address, length: length, advice: advice)
                result = "done"
            case 29:
                // Huge or growsdown mappings.
                let huge = AddressSpace.hugePageSize
                let length = operands.input.chance(70) ? huge * (1 + operands.input.below(2)) : operands.length()
                let placement: AddressSpace.Placement = operands.input.chance(50) ? .anywhere : .fixed(operands.address())
                let options: AddressSpace.MapOptions = operands.input.chance(70) ? [.hugePage] : [.growsDown]
                let protection = operands.protection()
                what = "map(\(length.hex), \(protection), \(placement), \(options.rawValue))"
                result = try space.map(length: length, protection: protection, placement: placement, options: options).hex
            case 30:
                if files.isEmpty || operands.input.chance(20), files.count < 3 {
                    files.append(FileObject(path: "/fuzz/\(files.count)", memory: memory))
                }
                let file = files[operands.input.index(below: files.count)]
                let offset = operands.input.below(16) * Self.page
                let length = operands.length()
                let placement: AddressSpace.Placement = operands.input.chance(50) ? .anywhere : .fixed(operands.address())
                let bits = operands.input.byte()
                var options: AddressSpace.MapOptions = []
                if bits & 1 != 0 { options.insert(.shared) }
                if bits & 2 != 0 { options.insert(.populate) }
                if bits & 4 != 0 { options.insert(.locked) }
                let access: AddressSpace.FileAccess = bits & 8 != 0 ? .readOnly : .readWrite
                let protection = operands.protection()
                what = "map(file \(file), offset \(offset.hex), \(length.hex), \(protection), \(placement), \(options.rawValue), \(access))"
                result = try space.map(
                    file: file, offset: offset, length: length, protection: protection, placement: placement,
                    options: options, access: access
                ).hex
            default:
                if !pins.isEmpty && operands.input.chance(40) {
                    let range = pins.remove(at: operands.input.index(below: pins.count))
                    what = "unpin"
                    try space.unpin(range)
                    result = "done"
                } else {
                    let (address, length) = operands.range()
                    let write = operands.input.chance(50)
                    what = "pin(\(address.hex), \(length.hex), write: \(write))"
                    pins.append(try space.pin(address: address, length: length, write: write))
                    result = "done"
                }
            }
        } catch {
            result = "\(error)"
            // An error leaves the space as before for most of these, but not all (a pin that
            // faults pages in before failing): the model is dropped either way.
            history.append("\(step): [\(target)] unmodelled op -> \(error)")
            model = nil
            input = operands.input
            return check(target, "unmodelled op \(opcode % 32)")
        }
        input = operands.input
        history.append("\(step): [\(target)] \(what) -> \(result)")
        if target == 0 || opcode % 32 == 25 { model = nil }
        check(target, what)
    }

    /// Tears everything down; every frame and swap slot must come back.
    mutating func finish() {
        if let model, !spaces[0].isTornDown {
            let problems = ReferenceComparison.compare(spaces[0], model)
            if !problems.isEmpty { fail(problems, "final comparison") }
        }
        for space in spaces { space.teardown() }
        if let mirror, mirror.count != 0 { fail(["mirror not released (\(mirror.count) translations)"], "teardown") }
        for range in pins { _ = range.unpin() }
        pins = []
        for interval in intervals { interval.remove() }
        intervals = []
        mirror = nil
        spaces = []
        files = []
        // Frames of reclaimed VMAs, tables and objects come back after a grace period: wait for
        // one (rcu_barrier, tens of milliseconds) only when something is still out.
        if memory.framesInUse != 0 || memory.swap.slotsInUse != 0 { BenchmarkSupport.drainDeferredReclamation() }
        var problems: [String] = []
        if memory.framesInUse != 0 { problems.append("frames in use after teardown: \(memory.framesInUse)") }
        if memory.swap.slotsInUse != 0 { problems.append("swap slots in use after teardown: \(memory.swap.slotsInUse)") }
        if !problems.isEmpty { fail(problems, "accounting after teardown") }
    }
}

/// Operand decoding over the current VMAs.
struct Operands {
    var input: FuzzInput
    let areas: [(start: UInt64, end: UInt64)]
    static let page = OpsRun.page

    static let badAddresses: [UInt64] = [
        0, 1, OpsRun.window + 0x123, OpsRun.window - page, AddressSpace.userLimit - page, AddressSpace.userLimit,
        AddressSpace.userLimit + page, UInt64.max & ~(page - 1), UInt64.max,
    ]

    static let badLengths: [UInt64] = [
        0, UInt64.max, UInt64.max - page + 2, AddressSpace.userLimit, AddressSpace.userLimit + page, 1 << 63,
        AddressSpace.userLimit - OpsRun.window + page,
    ]

    mutating func pages(_ most: UInt64) -> UInt64 { (1 + input.below(most)) * Self.page }

    mutating func badLength() -> UInt64 { input.pick(Self.badLengths) }

    mutating func protection() -> Protection { input.pick(OpsRun.protections) }

    /// An address near the VMAs or in the window; sometimes a bad one.
    mutating func address() -> UInt64 {
        let roll = input.below(100)
        if roll < 50, !areas.isEmpty {
            let area = input.pick(areas)
            switch input.below(4) {
            case 0: return area.start
            case 1: return area.end
            case 2: return area.start + input.below((area.end - area.start) / Self.page) * Self.page
            default: return area.start &- pages(4)
            }
        }
        if roll < 92 { return OpsRun.window + input.below(OpsRun.windowPages) * Self.page }
        return input.pick(Self.badAddresses)
    }

    /// A length: mostly a few pages, sometimes unaligned, sometimes bad.
    mutating func length() -> UInt64 {
        let roll = input.below(100)
        if roll < 80 { return pages(32) }
        if roll < 92 { return pages(16) - input.below(Self.page - 1) }
        return badLength()
    }

    /// Mostly a range inside a run of adjacent VMAs, else any address and length.
    mutating func range() -> (address: UInt64, length: UInt64) {
        guard input.chance(70), !areas.isEmpty else { return (address(), length()) }
        let first = input.index(below: areas.count)
        var last = first
        while last + 1 < areas.count, areas[last + 1].start == areas[last].end, input.chance(60) { last += 1 }
        let area = areas[first]
        let start = area.start + input.below((area.end - area.start) / Self.page) * Self.page
        let end = areas[last].end
        let length = (1 + input.below((end - start) / Self.page)) * Self.page
        return (start, input.chance(10) ? length + Self.page : length)
    }

    /// An address inside a VMA (sometimes not page-aligned), else anywhere.
    mutating func accessAddress() -> UInt64 {
        if input.chance(85), !areas.isEmpty {
            let area = input.pick(areas)
            let page = area.start + input.below((area.end - area.start) / Self.page) * Self.page
            return input.chance(20) ? page + input.below(Self.page) : page
        }
        return address()
    }
}
