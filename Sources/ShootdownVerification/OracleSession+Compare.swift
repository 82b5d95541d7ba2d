import Shootdown

extension OracleSession {
    /// Compares the current process's two sides after `op`.
    func compare(_ op: KernelOp, _ linuxOutcome: KernelOutcome, _ engineOutcome: KernelOutcome, fullCheck: Bool)
        throws(OracleError) -> OracleStep
    {
        var pair = processes[current]
        var differences: [Difference] = []
        let page = LinuxABI.pageSize

        // 1. Mappings. The initial ones must be exactly as they were: anything else means an
        // operation reached the child's own memory, and nothing after it can be trusted.
        var initialSeen = 0
        let smaps = try pair.linux.smaps { start, end in
            if layout.isInitial(start: start, end: end) {
                initialSeen += 1
                return false
            }
            return true
        }
        var linuxEntries: [SmapsEntry] = []
        for entry in smaps {
            guard layout.overlapsInitial(start: entry.start, end: entry.end) else {
                linuxEntries.append(entry)
                continue
            }
            // An initial mapping that a merge extended (a heap grown from the bss's end): the
            // extension is compared like any mapping, the initial part stays out.
            guard let initial = layout.initialMapping(extendedTo: entry.start, entry.end),
                initial.permissions == entry.permissions
            else { throw .layout("an initial mapping changed: \(entry) after \(op)") }
            initialSeen += 1
            for (start, end) in [(entry.start, initial.start), (initial.end, entry.end)] where start < end {
                var part = entry
                part.start = start
                part.end = end
                linuxEntries.append(part)
            }
        }
        guard initialSeen == layout.initialMappings.count else {
            throw .layout("an initial mapping disappeared after \(op)")
        }
        let linuxMappings = linuxEntries.map(MappingView.init)
        // The same for the engine: an initial mapping (the mirrored bss) that a merge extended
        // shows only its extension.
        var engineMappings: [MappingView] = []
        for view in pair.engine.space.mappings().map(MappingView.init) {
            guard layout.overlapsInitial(start: view.start, end: view.end),
                let initial = layout.initialMapping(extendedTo: view.start, view.end)
            else {
                engineMappings.append(view)
                continue
            }
            for (start, end) in [(view.start, initial.start), (initial.end, view.end)] where start < end {
                var part = view
                part.start = start
                part.end = end
                engineMappings.append(part)
            }
        }
        pair.lastMappings = linuxMappings

        // 2. The outcome (a mincore vector only where Linux is deterministic).
        markUnsettled(&pair, linuxEntries)
        if case .inexpressible(let what) = engineOutcome {
            differences.append(.inexpressible(what))
        } else if !outcomesAgree(op, linuxOutcome, engineOutcome, unsettled: pair.unsettled) {
            differences.append(.outcome(linux: linuxOutcome, engine: engineOutcome))
        }
        if linuxMappings != engineMappings {
            differences.append(.mappings(linux: linuxMappings, engine: engineMappings))
        }

        // 3. Residency of the pages the operation may have changed (every page on a full check),
        // then the contents of touched pages resident and readable on both sides.
        if differences.allSatisfy({ $0.category != "mappings" }) {
            let affected = fullCheck ? [0..<UInt64.max] : affectedRanges(op, linuxOutcome)
            var residentBoth: Set<UInt64> = []
            var firstDifference: (UInt64, Bool, Bool)? = nil
            var differing = 0
            var settledNow: [UInt64] = []
            var firstMappedDifference: (UInt64, Bool, Bool)? = nil
            var mappedDiffering = 0
            for entry in linuxEntries where entry.end - entry.start <= options.residencyScanLimit {
                for range in affected {
                    let start = max(entry.start, range.lowerBound & ~(page - 1))
                    let end = min(entry.end, range.upperBound)
                    guard start < end else { continue }
                    let (result, vector) = try pair.linux.mincore(address: start, length: end - start)
                    let pages = Int((end - start + page - 1) / page)
                    guard result == 0, vector.count == pages else {
                        throw .layout("mincore of \(hex(start))-\(hex(end)) in \(entry) failed: \(KernelOutcome.raw(result))")
                    }
                    guard let engine = pair.engine.residency(start, end), engine.count == pages else {
                        differences.append(.outcome(linux: .residency(vector.map { $0 & 1 != 0 }), engine: .error(0)))
                        continue
                    }
                    let readable = entry.permissions.hasPrefix("r")
                    if entry.permissions.hasSuffix("s") {
                        // Shared memory: mincore reports the object's cache, so compare the
                        // page-table entries too (pagemap bit 63, PROT_NONE entries included).
                        let words = try pair.linux.pagemap(address: start, pages: pages)
                        for (index, word) in words.enumerated() {
                            let address = start + UInt64(index) * page
                            let linuxMaps = word >> 63 != 0
                            let engineMaps = pair.engine.space.translate(address)?.frame != nil
                            if linuxMaps != engineMaps {
                                mappedDiffering += 1
                                if firstMappedDifference == nil { firstMappedDifference = (address, linuxMaps, engineMaps) }
                            }
                        }
                    }
                    for index in 0..<pages {
                        let address = start + UInt64(index) * page
                        let linuxResident = vector[index] & 1 != 0
                        var engineResident = engine[index]
                        if !linuxResident && engineResident && followsHostReclaim(op, entry, address, pair.engine) {
                            engineResident = false
                        }
                        if linuxResident && engineResident && readable { residentBoth.insert(address) }
                        if pair.unsettled.contains(address) {
                            unsettledPagesScanned += 1
                            if linuxResident != engineResident { unsettledPagesDiffering += 1 }
                            if !linuxResident && !engineResident { settledNow.append(address) }
                            continue
                        }
                        if linuxResident != engineResident {
                            differing += 1
                            if firstDifference == nil { firstDifference = (address, linuxResident, engineResident) }
                        }
                    }
                }
            }
            if let (address, linux, engine) = firstDifference {
                differences.append(.residency(address: address, linux: linux, engine: engine, pages: differing))
            }
            if let (address, linux, engine) = firstMappedDifference {
                differences.append(.mapped(address: address, linux: linux, engine: engine, pages: mappedDiffering))
            }
            settle(&pair, settledNow, linuxEntries, full: fullCheck)

            let check = pair.touched.filter { page in
                residentBoth.contains(page) && affected.contains { $0.contains(page) }
            }.sorted()
            if !check.isEmpty {
                let loaded = try pair.linux.load(check)
                for (address, touch) in zip(check, loaded) {
                    let linux: KernelOutcome =
                        switch touch {
                        case .value(let value): .loaded(value)
                        case .signal(let signal): .signal(signal)
                        }
                    let engine = pair.engine.load(address)
                    if linux != engine {
                        differences.append(.content(address: address, linux: linux, engine: engine))
                        break
                    }
                }
            }
        }
        processes[current] = pair
        return OracleStep(
            op: op, process: current, linux: linuxOutcome, engine: engineOutcome, differences: differences,
            linuxMappings: linuxMappings, engineMappings: engineMappings)
    }

    /// Whether two outcomes agree. mincore vectors are compared on settled pages outside the
    /// child's initial mappings only: a vector may run on into the child's own memory (mincore only
    /// reads, so the range is allowed), whose pages the engine's mirror does not have.
    private func outcomesAgree(_ op: KernelOp, _ linux: KernelOutcome, _ engine: KernelOutcome, unsettled: Set<UInt64>)
        -> Bool
    {
        guard case .residency(let linuxPages) = linux, case .residency(let enginePages) = engine,
            case .mincore(let address, _) = op, linuxPages.count == enginePages.count
        else { return linux == engine }
        let start = address.resolved(in: layout) & ~(LinuxABI.pageSize - 1)
        for index in 0..<linuxPages.count where linuxPages[index] != enginePages[index] {
            let page = start &+ UInt64(index) &* LinuxABI.pageSize
            if unsettled.contains(page) || layout.overlapsInitial(start: page, end: page &+ LinuxABI.pageSize) {
                continue
            }
            return false
        }
        return true
    }

    /// Marks every page of every block a transparent huge page may back: each aligned block of
    /// the smallest enabled THP size that lies inside a mapping Linux calls THP-eligible. Blocks
    /// already eligible at the previous step are still fully marked (``settle`` never unmarks a
    /// page inside an eligible block), so only new ones are marked page by page.
    private func markUnsettled(_ pair: inout ProcessPair, _ entries: [SmapsEntry]) {
        guard let block = facts.transparentHugePageSizes.min() else { return }
        var eligible: Set<UInt64> = []
        for entry in entries where entry.transparentHugePageEligible == true {
            var start = (entry.start + block - 1) & ~(block - 1)
            while start + block <= entry.end {
                eligible.insert(start)
                if !pair.eligibleBlocks.contains(start) {
                    for page in stride(from: start, to: start + block, by: Int(LinuxABI.pageSize)) {
                        pair.unsettled.insert(page)
                    }
                }
                start += block
            }
        }
        pair.eligibleBlocks = eligible
    }

    /// Whether Linux's dropping the shared anonymous page at `address`, which the engine still
    /// caches, is reclaim, and the engine has followed it. Linux may reclaim a clean page of shmem
    /// that nothing maps at any moment (on this machine a DAMON `pageout` scheme over unmapped
    /// page cache does, about a minute after a region goes cold), so no operation list decides
    /// it. The engine drops the page too if, in the engine, no process maps it, nothing pins it
    /// and it is clean (``AddressSpace/reclaimUnmappedObjectPage(at:)``); otherwise the difference
    /// stands. Never followed inside the range of an operation that drops pages itself (a hole
    /// punch, page-out, `MADV_COLD`, a collapse): there the engine has to match Linux on its own,
    /// and following would hide its mistake.
    func followsHostReclaim(_ op: KernelOp, _ entry: SmapsEntry, _ address: UInt64, _ engine: EngineProcess) -> Bool {
        guard entry.permissions.hasSuffix("s") else { return false }
        if case .madvise(let start, let length, let advice) = op,
            ["REMOVE", "PAGEOUT", "COLD", "COLLAPSE"].contains(where: { LinuxABI.adviceValue($0) == advice })
        {
            let first = start.resolved(in: layout) & ~(LinuxABI.pageSize - 1)
            let (end, overflow) = first.addingReportingOverflow(length)
            if address >= first && (overflow || address < end) { return false }
        }
        guard (try? engine.space.reclaimUnmappedObjectPage(at: address)) == true else { return false }
        hostReclaimsFollowed += 1
        return true
    }

    /// Unmarks pages not resident on either side and outside every eligible block (they can only
    /// become resident again through an operation); on a full check also the marks of pages
    /// outside every mapping.
    private func settle(_ pair: inout ProcessPair, _ candidates: [UInt64], _ entries: [SmapsEntry], full: Bool) {
        guard !pair.unsettled.isEmpty else { return }
        let block = facts.transparentHugePageSizes.min() ?? LinuxABI.hugePageSize
        for page in candidates where !pair.eligibleBlocks.contains(page & ~(block - 1)) {
            pair.unsettled.remove(page)
        }
        if full {
            pair.unsettled = pair.unsettled.filter { page in entries.contains { $0.start <= page && page < $0.end } }
        }
    }
}
