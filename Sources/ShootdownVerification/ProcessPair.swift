/// One kernel process, its engine twin, and what the oracle tracks about it.
struct ProcessPair {
    let linux: LinuxProcess
    let engine: EngineProcess
    let parent: Int?
    /// Pages the operations loaded or stored (moved along by mremap): their contents are compared.
    var touched: Set<UInt64> = []
    /// Pages whose residency Linux does not decide deterministically: pages in a block a
    /// transparent huge page may back (a THP-eligible mapping's aligned block), since the last
    /// time both sides had them not resident outside such a block. khugepaged may collapse such a
    /// block at any moment (making all of it resident), and a THP fault may fall back to small
    /// pages; contents stay comparable, residency does not.
    var unsettled: Set<UInt64> = []
    /// Starts of the THP-eligible blocks at the last step (all their pages are unsettled).
    var eligibleBlocks: Set<UInt64> = []
    /// The Linux mappings after the last step.
    var lastMappings: [MappingView] = []

    init(linux: LinuxProcess, engine: EngineProcess, parent: Int?) {
        self.linux = linux
        self.engine = engine
        self.parent = parent
    }

    /// Moves the marks of pages in `[start, end)` to `target` (keeping the source marks too).
    mutating func carry(from start: UInt64, to end: UInt64, onto target: UInt64) {
        for page in touched where page >= start && page < end { touched.insert(page &- start &+ target) }
        for page in unsettled where page >= start && page < end { unsettled.insert(page &- start &+ target) }
    }
}
