import Shootdown

/// The checks that compare an ``AddressSpace`` with a ``ReferenceModel`` that received the same
/// operations (the differential test and the `ops` fuzz target use them after every step). Each
/// returns the problems found, as messages; empty means the two agree.
public enum ReferenceComparison {

    public static func compare(_ space: AddressSpace, _ model: ReferenceModel) -> [String] {
        var problems: [String] = []
        let libraryMappings = space.mappings()
        if libraryMappings != model.mappings() {
            problems.append("VMAs differ")
            return problems
        }
        let audit = space.audit()
        if audit.entriesOutsideVMAs != 0 { problems.append("audit: \(audit.entriesOutsideVMAs) entries outside VMAs") }
        if audit.entriesExceedingProtection != 0 {
            problems.append("audit: \(audit.entriesExceedingProtection) entries exceed protection")
        }
        if audit.deadTablesReached != 0 { problems.append("audit: \(audit.deadTablesReached) dead tables reached") }
        if audit.tablesInHoles != 0 { problems.append("audit: \(audit.tablesInHoles) page tables in holes") }
        // Only a failed munmap over a sealed VMA leaves compatible neighbours apart (as Linux does).
        if audit.unmergedNeighbours != model.keptApartCount {
            problems.append("audit: \(audit.unmergedNeighbours) unmerged neighbours, model \(model.keptApartCount)")
        }
        if audit.hugeMappings != 0 { problems.append("audit: \(audit.hugeMappings) huge mappings") }
        let modelPresent = model.pages.values.count { $0.residence == .mapped }
        let modelSwapped = model.pages.values.count { $0.residence == .swapped }
        if audit.presentPages != modelPresent || audit.swapEntries != modelSwapped {
            problems.append(
                "audit: \(audit.presentPages) present / \(audit.swapEntries) swap entries, model "
                    + "\(modelPresent) / \(modelSwapped)")
        }
        if space.memory.swap.slotsInUse != modelSwapped {
            problems.append("swap slots in use: \(space.memory.swap.slotsInUse), model swap entries: \(modelSwapped)")
        }
        for area in model.areas {
            for page in stride(from: area.start, to: area.end, by: Int(AddressSpace.pageSize)) {
                let actual = PageView(space: space, page: page)
                let expected = PageView(model: model, page: page)
                if actual != expected { problems.append("page \(page.hex): library \(actual), model \(expected)") }
            }
        }
        return problems + checkFrames(space, model)
    }

    /// Whose content a frame holds.
    public enum FrameOwner: Hashable, CustomStringConvertible {
        case privatePage(UInt64)
        case sharedPage(object: Int, page: UInt64)

        public var description: String {
            switch self {
            case .privatePage(let address): "private page \(address.hex)"
            case .sharedPage(let object, let page): "page \(page) of shared object \(object)"
            }
        }
    }

    /// Frame accounting without fork: a private page has its own frame, referenced by its entry
    /// only; a page of a shared object has one frame, referenced by its object's page cache and by
    /// every entry mapping it (a shared page may be mapped at several addresses, as when mremap
    /// grows a moved part of a shared mapping over pages the rest still maps, like Linux); no swap
    /// slot is used twice.
    public static func checkFrames(_ space: AddressSpace, _ model: ReferenceModel) -> [String] {
        var problems: [String] = []
        var frameOf: [FrameOwner: UInt64] = [:]
        var ownerOf: [UInt64: FrameOwner] = [:]
        var entries: [UInt64: Int] = [:]
        var slots = Set<UInt32>()
        for (page, modelPage) in model.pages.sorted(by: { $0.key < $1.key }) {
            guard let entry = space.translate(page) else { continue }  // reported by the page comparison
            if let slot = entry.swapSlot {
                if !slots.insert(slot).inserted { problems.append("swap slot \(slot) used twice (\(page.hex))") }
                continue
            }
            guard let frame = entry.frame, frame != PhysicalMemory.zeroFrame else { continue }
            let owner: FrameOwner
            if case .shared(let object, let objectPage) = modelPage.content {
                owner = .sharedPage(object: object, page: objectPage)
            } else {
                owner = .privatePage(page)
            }
            if let other = frameOf.updateValue(frame, forKey: owner), other != frame {
                problems.append("\(owner) is in frames \(other) and \(frame)")
            }
            if let other = ownerOf.updateValue(owner, forKey: frame), other != owner {
                problems.append("frame \(frame) holds \(other) and \(owner)")
            }
            entries[frame, default: 0] += 1
        }
        let memory = space.memory
        for (frame, count) in entries.sorted(by: { $0.key < $1.key }) {
            let cached = if case .sharedPage = ownerOf[frame]! { 1 } else { 0 }
            if memory.mapcount(frame) != count || memory.refcount(frame) != count + cached {
                problems.append(
                    "frame \(frame) (\(ownerOf[frame]!)): mapcount \(memory.mapcount(frame)), refcount "
                        + "\(memory.refcount(frame)), expected \(count) and \(count + cached)")
            }
        }
        return problems
    }

    /// The mirror's guarantee: every translation it holds is the CPU's current one, and is never
    /// writable where the CPU's is not.
    public static func checkCoherence(_ mirror: SoftwareMirror, _ space: AddressSpace) -> [String] {
        var problems: [String] = []
        for (page, translation) in mirror.translations.sorted(by: { $0.key < $1.key }) {
            let entry = space.translate(page)
            if entry?.isPresent != true || entry?.frame != translation.frame
                || (translation.writable && entry?.isWritable != true)
            {
                problems.append(
                    "mirror holds \(page.hex) -> frame \(translation.frame)\(translation.writable ? " writable" : ""), "
                        + "CPU has \(entry.map(\.description) ?? "none")")
            }
        }
        return problems
    }
}
