import Shootdown

/// The oracle: compares the mirrors' translations for a range with the CPU page table.
///
/// Ordering (see ``TortureHarness``): the CPU entries of the whole range are read first, the
/// mirrors' translations after; a correct mirror only loses or weakens translations in between.
/// One checker per worker thread (it keeps a buffer); not shared.
struct TortureChecker {
    let space: AddressSpace
    let mirrors: [any TortureMirror]
    /// The CPU entries of the range being checked (reused).
    private var cpu: [PageTableEntry?] = []
    /// Checks made, pages covered, translations compared.
    private(set) var checks = 0
    private(set) var pages = 0
    private(set) var translations = 0

    init(space: AddressSpace, mirrors: [any TortureMirror]) {
        self.space = space
        self.mirrors = mirrors
    }

    /// Checks `[start, start + pages pages)`; calls `violation` with a description of each stale
    /// translation.
    mutating func check(start: UInt64, pages count: Int, violation: (String) -> Void) {
        guard count > 0, !mirrors.isEmpty else { return }
        let end = start + UInt64(count) * AddressSpace.pageSize
        cpu.removeAll(keepingCapacity: true)
        var page = start
        while page < end {
            cpu.append(space.translate(page))
            page += AddressSpace.pageSize
        }
        pages += count
        for mirror in mirrors {
            checks += 1
            for held in mirror.translations(start: start, end: end) {
                translations += 1
                guard held.address >= start, held.address < end, AddressSpace.isPageAligned(held.address) else {
                    violation("\(mirror.name) answered 0x\(hex(held.address)) for [0x\(hex(start)), 0x\(hex(end)))")
                    continue
                }
                let entry = cpu[Int((held.address - start) / AddressSpace.pageSize)]
                if let entry, entry.isPresent, entry.frame == held.frame, !held.writable || entry.isWritable { continue }
                let access = held.writable ? "writable" : "read-only"
                let now = entry.map { "\($0)" } ?? "nothing"
                // Context for the report: the entry and the VMA as they are now.
                let later = space.translate(held.address).map { "\($0)" } ?? "nothing"
                let vma = space.mapping(containing: held.address).map { "\($0)" } ?? "no VMA"
                violation(
                    "\(mirror.name) holds 0x\(hex(held.address)) -> frame \(held.frame) \(access), but the CPU maps \(now) there (now: \(later); \(vma))")
            }
        }
    }

    private func hex(_ value: UInt64) -> String { String(value, radix: 16) }
}
