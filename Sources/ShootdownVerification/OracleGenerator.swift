/// Makes random operations that reach every success and error path of the syscalls the engine can
/// express (``EngineCapabilities``): mostly ranges around existing mappings (whole, head, tail,
/// middle, across holes and neighbours), page touches that fault memory in so zaps, moves and locks
/// act on real pages, and a steady share of bad arguments (unaligned, zero, overflowing lengths,
/// ranges below `mmap_min_addr` or past `TASK_SIZE`, bad flags). Every operation it returns is safe
/// (``KernelOp/unsafeReason(in:)``).
public struct OracleGenerator {
    /// What the generator sees of the session.
    public struct View {
        public var layout: OracleLayout
        public var facts: LinuxFacts
        /// Linux's mappings of the current process outside the initial ones.
        public var mappings: [MappingView]
        public var processCount: Int

        public init(layout: OracleLayout, facts: LinuxFacts, mappings: [MappingView], processCount: Int) {
            self.layout = layout
            self.facts = facts
            self.mappings = mappings
            self.processCount = processCount
        }
    }

    private var random: SplitMix64
    public let capabilities: EngineCapabilities
    /// Most processes a run keeps (forks beyond are not made).
    public var maxProcesses = 4

    public init(seed: UInt64, capabilities: EngineCapabilities = .current) {
        random = SplitMix64(seed: seed)
        self.capabilities = capabilities
    }

    private static let page = LinuxABI.pageSize

    /// The next operation for `view`.
    public mutating func next(_ view: View) -> KernelOp {
        for _ in 0..<64 {
            let op = candidate(view)
            if op.unsafeReason(in: view.layout) == nil { return op }
        }
        return .read(.window(-Int64(Self.page)))
    }

    private enum Kind: CaseIterable {
        case mmap, munmap, mprotect, mremap, madvise, read, write, fork, switchProcess
        case mlock, mlock2, munlock, mlockall, munlockall, brk, msync, mseal, mincore
    }

    private mutating func candidate(_ view: View) -> KernelOp {
        let supported = capabilities.syscalls
        var choices: [(Kind, Int)] = [(.read, 80), (.write, 140)]
        if supported.contains(.mmap) { choices.append((.mmap, 170)) }
        if supported.contains(.munmap) { choices.append((.munmap, 70)) }
        if supported.contains(.mprotect) { choices.append((.mprotect, 90)) }
        if supported.contains(.mremap) { choices.append((.mremap, 80)) }
        if supported.contains(.madvise) { choices.append((.madvise, 110)) }
        if supported.contains(.mlock) { choices.append((.mlock, 20)) }
        if supported.contains(.mlock2) { choices.append((.mlock2, 12)) }
        if supported.contains(.munlock) { choices.append((.munlock, 15)) }
        if supported.contains(.mlockall) { choices.append((.mlockall, 4)) }
        if supported.contains(.munlockall) { choices.append((.munlockall, 4)) }
        if supported.contains(.brk) { choices.append((.brk, 15)) }
        if supported.contains(.msync) { choices.append((.msync, 15)) }
        if supported.contains(.mseal) { choices.append((.mseal, 3)) }
        if supported.contains(.mincore) { choices.append((.mincore, 25)) }
        if view.processCount < maxProcesses { choices.append((.fork, 8)) }
        if view.processCount > 1 { choices.append((.switchProcess, 10)) }

        switch random.weighted(choices) {
        case .mmap: return mmap(view)
        case .munmap:
            let (address, length) = range(view)
            return .munmap(address, length: length)
        case .mprotect:
            let (address, length) = range(view)
            return .mprotect(address, length: length, protection: protection())
        case .mremap: return mremap(view)
        case .madvise:
            let (address, length) = range(view)
            return .madvise(address, length: length, advice: advice(view))
        case .read: return .read(touchAddress(view))
        case .write: return .write(touchAddress(view), value: random.next() | 1)
        case .fork: return .fork
        case .switchProcess: return .switchProcess(random.chance(95) ? random.int(0...(view.processCount - 1)) : view.processCount)
        case .mlock:
            let (address, length) = range(view, unalignedAddresses: true)
            return .mlock(address, length: length)
        case .mlock2:
            let (address, length) = range(view, unalignedAddresses: true)
            return .mlock2(address, length: length, flags: random.weighted([(0, 40), (LinuxABI.mlockOnFault, 50), (2, 10)]))
        case .munlock:
            let (address, length) = range(view, unalignedAddresses: true)
            return .munlock(address, length: length)
        case .mlockall:
            let flags = random.weighted([
                (LinuxABI.mclFuture, 30), (LinuxABI.mclCurrent, 20), (LinuxABI.mclFuture | LinuxABI.mclOnFault, 20),
                (LinuxABI.mclOnFault, 10), (0, 10), (8, 10),
            ])
            return .mlockall(flags: flags)
        case .munlockall: return .munlockall
        case .brk: return brk(view)
        case .msync:
            let (address, length) = range(view)
            let flags = random.weighted([
                (LinuxABI.msAsync, 25), (LinuxABI.msSync, 25), (LinuxABI.msInvalidate, 10),
                (LinuxABI.msSync | LinuxABI.msInvalidate, 10), (LinuxABI.msAsync | LinuxABI.msSync, 10), (0, 10),
                (8, 10),
            ])
            return .msync(address, length: length, flags: flags)
        case .mseal:
            let (address, length) = range(view)
            return .mseal(address, length: length, flags: random.chance(90) ? 0 : 1)
        case .mincore:
            let (address, length) = range(view)
            return .mincore(address, length: length)
        }
    }

    // MARK: - Pieces

    /// A window address `pages` pages below the window top.
    private func window(_ offset: UInt64) -> KernelAddress { .window(-Int64(offset)) }

    /// A page-aligned address inside the window.
    private mutating func windowPage(_ view: View) -> UInt64 {
        let pages = view.layout.windowSize / Self.page
        // Biased towards the top, where non-fixed mappings land.
        let depth = random.chance(70) ? random.below(min(pages, 2048)) + 1 : random.below(pages) + 1
        return depth * Self.page
    }

    private mutating func length(large: Bool = false) -> UInt64 {
        switch random.below(100) {
        case 0..<55: return UInt64(random.int(1...8)) * Self.page
        case 55..<80: return UInt64(random.int(9...64)) * Self.page
        case 80..<90: return UInt64(random.int(65...(large ? 4096 : 600))) * Self.page
        default: return UInt64(random.int(1...2)) * LinuxABI.hugePageSize
        }
    }

    private mutating func protection() -> UInt64 {
        let r = LinuxABI.protRead, w = LinuxABI.protWrite, x = LinuxABI.protExec
        let choices: [(UInt64, Int)] = [
            (r | w, 45), (r, 18), (0, 12), (r | w | x, 5), (r | x, 5), (w, 5), (x, 4), (w | x, 2),
            (r | LinuxABI.protSem, 2), (r | w | 0x10, 1), (r | LinuxABI.protGrowsDown, 1), (r | LinuxABI.protGrowsUp, 1),
        ]
        return random.weighted(choices)
    }

    /// Special addresses for error paths.
    private mutating func specialAddress(_ view: View) -> KernelAddress {
        let minimum = view.facts.mmapMinAddress
        return random.pick([
            .absolute(0), .absolute(minimum &- Self.page), .absolute(minimum), .absolute(minimum + 7 * Self.page),
            .absolute(LinuxABI.taskSize), .absolute(LinuxABI.taskSize + Self.page), .absolute(1 << 47),
            .absolute(0xFFFF_8000_0000_0000), .absolute(UInt64.max & ~(Self.page - 1)),
        ])
    }

    /// Lengths for error paths.
    private mutating func specialLength() -> UInt64 {
        random.pick([0, 1, Self.page - 1, Self.page + 1, UInt64.max, UInt64.max - Self.page + 2, 1 << 63,
                     LinuxABI.taskSize, 1 << 47, (1 << 47) + Self.page])
    }

    /// A range for a syscall: around an existing mapping mostly, else in the window, else special.
    private mutating func range(_ view: View, unalignedAddresses: Bool = false) -> (KernelAddress, UInt64) {
        let layout = view.layout
        var (start, length): (UInt64, UInt64)
        let roll = random.below(100)
        if roll < 65, !view.mappings.isEmpty {
            let index = Int(random.below(UInt64(view.mappings.count)))
            let mapping = view.mappings[index]
            let pages = (mapping.end &- mapping.start) / Self.page
            switch random.below(8) {
            case 0, 1:  // whole
                (start, length) = (mapping.start, mapping.end &- mapping.start)
            case 2:  // head
                (start, length) = (mapping.start, random.below(pages) * Self.page &+ Self.page)
            case 3:  // tail
                let skip = random.below(pages)
                (start, length) = (mapping.start &+ skip * Self.page, (pages &- skip) * Self.page)
            case 4:  // middle
                let skip = random.below(pages)
                (start, length) = (mapping.start &+ skip * Self.page, (random.below(max(1, pages &- skip)) &+ 1) * Self.page)
            case 5:  // into the next mapping or hole
                let skip = random.below(pages)
                let next = index &+ 1 < view.mappings.count ? view.mappings[index &+ 1].end : mapping.end &+ 4 * Self.page
                (start, length) = (mapping.start &+ skip * Self.page, next &- mapping.start &- skip * Self.page)
            case 6:  // from before the mapping
                let before = UInt64(random.int(1...4)) * Self.page
                (start, length) = (mapping.start &- before, before &+ random.below(pages &+ 1) * Self.page)
            default:  // several mappings
                let last = view.mappings[min(view.mappings.count &- 1, index &+ Int(random.below(4)))]
                (start, length) = (mapping.start, max(last.end, mapping.end) &- mapping.start)
            }
        } else if roll < 88 {
            start = layout.windowTop &- windowPage(view)
            length = self.length()
        } else {
            // Bad arguments: exactly one thing wrong, mostly.
            start = layout.windowTop &- windowPage(view)
            length = self.length()
            switch random.below(5) {
            case 0: start &+= UInt64(random.int(1...Int(Self.page - 1)))
            case 1: length = specialLength()
            case 2: start = specialAddress(view).resolved(in: layout)
            case 3: length &+= UInt64(random.int(1...Int(Self.page - 1)))
            default: length = 0
            }
        }
        if unalignedAddresses && random.chance(15) { start &+= UInt64(random.int(1...Int(Self.page - 1))) }
        return (KernelAddress.describing(start, in: layout), length)
    }

    /// mmap flags: the type, then each optional flag with its own chance (per mille). Flags the
    /// engine has no option for are made too, rarely: the engine reports them inexpressible.
    private mutating func mmapFlags() -> UInt64 {
        var flags = LinuxABI.mapAnonymous
        flags |= random.chance(80) ? LinuxABI.mapPrivate : LinuxABI.mapShared
        let optional: [(UInt64, UInt64)] = [
            (LinuxABI.mapPopulate, 100), (LinuxABI.mapLocked, 30), (LinuxABI.mapNoReserve, 60),
            (LinuxABI.mapGrowsDown, 20), (LinuxABI.mapStack, 10), (LinuxABI.mapUninitialized, 3),
            (LinuxABI.map32Bit, 3), (LinuxABI.mapNonBlock, 3), (LinuxABI.mapDenyWrite, 2), (LinuxABI.mapExecutable, 2),
        ]
        for (flag, perMille) in optional where random.below(1000) < perMille { flags |= flag }
        if random.below(1000) < 6 {
            flags = flags & ~LinuxABI.mapType | random.pick([0, LinuxABI.mapSharedValidate, 4, 0xF])
        }
        if random.below(1000) < 3 { flags &= ~LinuxABI.mapAnonymous }
        return flags
    }

    private mutating func mmap(_ view: View) -> KernelOp {
        var flags = mmapFlags()
        var length = self.length(large: flags & LinuxABI.mapPopulate == 0)
        if random.chance(6) { length = specialLength() }
        let address: KernelAddress
        switch random.below(100) {
        case 0..<45:
            address = .absolute(0)
        case 45..<60:  // hint
            if random.chance(20) {
                address = specialAddress(view)
            } else if let mapping = view.mappings.randomElement(using: &random), random.chance(40) {
                address = KernelAddress.describing(mapping.start, in: view.layout)
            } else {
                let offset = windowPage(view) &- (random.chance(10) ? UInt64(random.int(1...4095)) : 0)
                address = window(offset)
            }
        default:  // fixed or fixed-noreplace
            flags |= random.chance(75) ? LinuxABI.mapFixed : LinuxABI.mapFixedNoReplace
            if random.chance(8) {
                address = specialAddress(view)
            } else if let mapping = view.mappings.randomElement(using: &random), random.chance(55) {
                // Over, inside, or adjacent to an existing mapping.
                let choice = random.below(4)
                let start: UInt64 =
                    switch choice {
                    case 0: mapping.start
                    case 1: mapping.end
                    case 2: mapping.start &- length.clampedPages
                    default: mapping.start &+ random.below((mapping.end &- mapping.start) / Self.page) * Self.page
                    }
                address = KernelAddress.describing(start, in: view.layout)
            } else {
                let offset = windowPage(view) &- (random.chance(5) ? UInt64(random.int(1...4095)) : 0)
                address = window(offset)
            }
        }
        return .mmap(address, length: length, protection: protection(), flags: flags)
    }

    private mutating func mremap(_ view: View) -> KernelOp {
        let (address, oldLength) = range(view)
        var newLength: UInt64
        switch random.below(10) {
        case 0..<3: newLength = oldLength / 2 & ~(Self.page &- 1)
        case 3..<7: newLength = oldLength &+ UInt64(random.int(1...64)) * Self.page
        case 7: newLength = oldLength
        case 8: newLength = self.length()
        default: newLength = specialLength()
        }
        var old = oldLength
        if random.chance(4) { old = 0 }
        let move = LinuxABI.mremapMayMove, fixed = LinuxABI.mremapFixed, dontUnmap = LinuxABI.mremapDontUnmap
        let flags = random.weighted([
            (0, 25), (move, 35), (move | fixed, 20), (move | dontUnmap, 8), (move | fixed | dontUnmap, 4), (fixed, 2),
            (dontUnmap, 2), (8, 2),
        ])
        if flags & dontUnmap != 0 && random.chance(70) { newLength = oldLength }
        var target: KernelAddress = .absolute(0)
        if flags & LinuxABI.mremapFixed != 0 || random.chance(5) {
            if let mapping = view.mappings.randomElement(using: &random), random.chance(40) {
                target = KernelAddress.describing(random.chance(50) ? mapping.start : mapping.end, in: view.layout)
            } else if random.chance(8) {
                target = specialAddress(view)
            } else {
                target = window(windowPage(view) &- (random.chance(5) ? 1 : 0))
            }
        }
        return .mremap(address, oldLength: old, newLength: newLength, flags: flags, newAddress: target)
    }

    /// An advice: every value this kernel knows, weighted towards those that change pages, and a
    /// few it does not (`MADV_HWPOISON` and `MADV_SOFT_OFFLINE` only without `CAP_SYS_ADMIN`: with
    /// it, a kernel with memory-failure support would really poison a page).
    private mutating func advice(_ view: View) -> UInt64 {
        var choices: [(UInt64, Int)] = [
            (4, 14), (8, 6), (9, 3), (10, 4), (11, 3), (18, 4), (19, 2), (14, 6), (15, 4), (22, 5), (23, 6), (21, 3),
            (20, 2), (0, 1), (1, 1), (2, 1), (3, 1), (16, 2), (17, 1), (12, 2), (13, 1), (24, 3), (25, 3), (102, 4),
            (103, 3), (5, 1), (7, 1), (26, 1), (104, 1), (UInt64.max, 1), (1 << 32 | 4, 1),
        ]
        if view.facts.effectiveCapabilities & (1 << 21) == 0 { choices += [(100, 1), (101, 1)] }
        return random.weighted(choices)
    }

    private mutating func brk(_ view: View) -> KernelOp {
        let page = Int64(Self.page)
        return .brk(random.weighted([
            (.programBreak(Int64(random.int(0...64)) * page), 60),
            (.programBreak(Int64(random.int(0...64)) * page + Int64(random.int(1...4095))), 10),
            (.programBreak(-Int64(random.int(1...16)) * page), 10),
            (.absolute(0), 10),
            (.absolute(view.layout.windowBottom), 5),
            (.absolute(UInt64.max & ~(Self.page - 1)), 5),
        ]))
    }

    /// A page to load or store: mostly inside a mapping, sometimes in a hole.
    private mutating func touchAddress(_ view: View) -> KernelAddress {
        if let mapping = view.mappings.randomElement(using: &random), random.chance(88) {
            let pages = (mapping.end - mapping.start) / Self.page
            // Favour the first pages, so repeated touches hit the same pages.
            let index = random.chance(60) ? random.below(min(pages, 8)) : random.below(pages)
            return KernelAddress.describing(mapping.start + index * Self.page, in: view.layout)
        }
        return window(windowPage(view))
    }
}

extension UInt64 {
    /// Rounded up to whole pages, at most 16 MiB (for placing a mapping below another).
    fileprivate var clampedPages: UInt64 {
        Swift.min((self &+ LinuxABI.pageSize - 1) & ~(LinuxABI.pageSize - 1), 16 << 20)
    }
}
