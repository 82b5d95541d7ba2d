import Synchronization
/// What one operation unlinked from RCU-visible structures: page-table blocks, VMA-index nodes,
/// VMAs. Handed to liburcu's `call_rcu` as one batch when the operation finishes, so a lockless
/// reader that still holds a pointer keeps valid memory until its read section ends.
///
/// Owned by one writer (under the mmap write lock) until ``submit()``; after that only the
/// reclamation callback touches it.
@usableFromInline
final class RetireList: @unchecked Sendable {
    /// Detached page-table blocks and their level (3 = PGD ... 0 = PTE).
    private(set) var tables: [(block: TableBlock, level: Int)] = []
    /// Retired VMA-index nodes (raw allocations owned by the index).
    private(set) var nodes: [UnsafeMutableRawPointer] = []
    /// Retired objects readers may still reference (VMAs).
    private(set) var objects: [AnyObject] = []

    init() {}

    var isEmpty: Bool { tables.isEmpty && nodes.isEmpty && objects.isEmpty }

    /// Retires a detached table block (and, recursively, anything still linked below it).
    func retire(table: TableBlock, level: Int) {
        checkInvariant(table.state.pointee.load(ordering: .relaxed) == TableState.live, "retiring a non-live table")
        table.state.pointee.store(TableState.retired, ordering: .relaxed)
        tables.append((table, level))
    }

    /// Retires an unlinked VMA-index node.
    func retire(node: UnsafeMutableRawPointer) { nodes.append(node) }

    /// Retires an object that lockless readers may still hold unretained.
    func retire(object: AnyObject) { objects.append(object) }

    /// Queues everything for reclamation after a grace period and empties the list.
    func submit() {
        if isEmpty { return }
        let batch = RetireList()
        swap(&batch.tables, &tables)
        swap(&batch.nodes, &nodes)
        swap(&batch.objects, &objects)
        RCU.call(afterGracePeriod: { batch.reclaim() })
    }

    /// Frees everything now. Runs after the grace period (or for data never published).
    func reclaim() {
        for (block, level) in tables { Self.freeTree(block, level: level) }
        for node in nodes { node.deallocate() }
        tables.removeAll()
        nodes.removeAll()
        objects.removeAll()
    }

    /// Frees `block` and every table still linked below it. A speculative fault may have installed
    /// a lower table into a detached upper table before the grace period ended; those are found
    /// and freed here. Leaf entries are always empty by now: zaps precede detachment.
    static func freeTree(_ block: TableBlock, level: Int) {
        if level > 0 {
            for index in 0..<TableBlock.entries {
                let entry = block.load(index)
                if entry.isNone { continue }
                checkInvariant(!entry.isHuge, "a huge mapping inside a detached PMD table")
                if !entry.isHuge {
                    let child = TableBlock(entry: entry)
                    if child.state.pointee.load(ordering: .relaxed) == TableState.live {
                        child.state.pointee.store(TableState.retired, ordering: .relaxed)
                    }
                    freeTree(child, level: level - 1)
                }
                block[index].pointee.store(0, ordering: .relaxed)
            }
        } else {
            #if SHOOTDOWN_INTERNAL_CHECKS
            for index in 0..<TableBlock.entries {
                checkInvariant(block.load(index).isNone, "a populated PTE table was detached")
            }
            #endif
        }
        TableAllocator.shared.free(block)
    }
}
