import CInterop
import Synchronization

/// The RCU-safe ordered map from address to VMA (the kernel's maple tree in RCU mode).
///
/// A path-copying B+tree of fanout 16, keyed by VMA start:
/// - Readers (``lookup(_:)``) search without locks inside an RCU (memb) read section. Nodes are
///   immutable once published; a reader loads the root with acquire ordering and sees a complete
///   tree, either before or after any writer's change, never in between.
/// - Writers hold the mmap write lock. An edit copies the nodes on the path it changes (nodes
///   created by the same edit are changed in place), then ``commit(retire:)`` publishes the new
///   root with one release store and retires the replaced nodes, which are freed after a grace
///   period. Several changes in one edit (an munmap over five VMAs) become visible at once.
/// - Writers also keep the VMAs in a doubly linked list for ordered iteration (read under the
///   mmap lock only).
///
/// The index owns one strong reference per VMA in it; ``remove(_:retire:)`` hands that reference
/// to the retire list so the VMA outlives any reader that found it.
@usableFromInline
final class VMAIndex: @unchecked Sendable {
    /// Keeps `publishedRoot` off the line holding the object header.
    private let headerPadding = CacheLinePadding()
    /// The published root (readers). Alone on its line: stored only when an edit changed the tree.
    @usableFromInline let publishedRoot = Atomic<UInt>(0)
    /// Keeps the writer-owned fields below off `publishedRoot`'s line.
    private let writerPadding = CacheLinePadding()
    /// The writer's working root (equal to `publishedRoot` outside an edit).
    private var root: IndexNode?
    /// Number of VMAs.
    private(set) var count = 0
    /// Lowest and highest VMA.
    private(set) var first: VMA?
    private(set) var last: VMA?
    /// Identifier of the open edit; nodes stamped with it are private to the writer.
    private var edit: UInt64 = 1
    /// Published nodes replaced during the open edit.
    private var replaced: [IndexNode] = []

    init() {}

    deinit {
        // Teardown: no reader can hold this index any more.
        if let root { freeTree(root, releasingValues: true) }
    }

    // MARK: - Readers

    /// The VMA containing `address`, if any. Lock-free.
    ///
    /// - Precondition: inside an RCU read section (or holding the mmap lock). The result is valid
    ///   until the read section ends; validate its fields with its sequence count. A `nil` is not
    ///   validated: the bounds it tests may belong to a change not yet published.
    @inlinable
    func lookup(_ address: UInt64) -> Unmanaged<VMA>? {
        // No VMA contains the last address, and below it every search lands on a used key (the
        // unused ones are `UInt64.max`).
        if address == .max { return nil }
        let root = publishedRootBits
        if root == 0 { return nil }
        let key = IndexNode(root: root).leafKey(belowMaximum: address)
        if key.pointee > address { return nil }
        let vma = Unmanaged<VMA>.fromOpaque(IndexNode.slot(at: key).unsafelyUnwrapped)
        let end = vma._withUnsafeGuaranteedRef { $0.end }
        return address < end ? vma : nil
    }

    /// The published root (0: an empty index), for ``IndexNode/candidate(belowMaximum:)``.
    ///
    /// Acquiring: the nodes reachable from it are fully initialised. A root, once replaced, is
    /// retired and never published again, so inside one read section an equal value read later
    /// means the index did not change in between (the same test works with the root's memory
    /// reused only after a grace period).
    @inlinable
    var publishedRootBits: UInt { publishedRoot.load(ordering: .acquiring) }

    // MARK: - Writer queries (mmap lock held)

    /// The VMA with the greatest start ≤ `address` (it may end before `address`).
    func floor(_ address: UInt64) -> VMA? {
        guard var node = root else { return nil }
        while true {
            let position = node.rank(of: address)
            if position < 0 { return nil }
            let slot = node.slot(position).unsafelyUnwrapped
            if node.level == 0 { return Unmanaged<VMA>.fromOpaque(slot).takeUnretainedValue() }
            node = IndexNode(raw: slot)
        }
    }

    /// ``floor(_:)`` without a reference count (writer side: the mmap lock keeps the VMA alive).
    func floorUnretained(_ address: UInt64) -> Unmanaged<VMA>? {
        guard var node = root else { return nil }
        while true {
            let position = node.rank(of: address)
            if position < 0 { return nil }
            let slot = node.slot(position).unsafelyUnwrapped
            if node.level == 0 { return Unmanaged<VMA>.fromOpaque(slot) }
            node = IndexNode(raw: slot)
        }
    }

    /// Whether any VMA intersecting `[start, end)` satisfies `test`, visiting them in order
    /// without reference counting (mmap lock held).
    func contains(intersecting start: UInt64, _ end: UInt64, where test: (VMA) -> Bool) -> Bool {
        var cursor = floorUnretained(start)
        if cursor == nil, let first { cursor = Unmanaged.passUnretained(first) }
        while let current = cursor {
            let (hit, next, pastEnd) = current._withUnsafeGuaranteedRef { vma -> (Bool, Unmanaged<VMA>?, Bool) in
                if vma.start >= end { return (false, nil, true) }
                let hit = vma.end > start && test(vma)
                return (hit, vma.next.map { Unmanaged.passUnretained($0) }, false)
            }
            if hit { return true }
            if pastEnd { return false }
            cursor = next
        }
        return false
    }

    /// The VMA containing `address`, or else the first VMA above it (`find_vma`).
    func findFirst(endingAfter address: UInt64) -> VMA? {
        if let candidate = floor(address) {
            return candidate.end > address ? candidate : candidate.next
        }
        return first
    }

    /// The VMA containing `address` (writer view).
    func find(containing address: UInt64) -> VMA? {
        guard let candidate = floor(address), candidate.end > address else { return nil }
        return candidate
    }

    /// The VMAs intersecting `[start, end)`, in order.
    func intersecting(_ start: UInt64, _ end: UInt64) -> [VMA] {
        var result: [VMA] = []
        var cursor = findFirst(endingAfter: start)
        while let vma = cursor, vma.start < end {
            result.append(vma)
            cursor = vma.next
        }
        return result
    }

    /// All VMAs in order.
    var all: [VMA] {
        var result: [VMA] = []
        result.reserveCapacity(count)
        var cursor = first
        while let vma = cursor {
            result.append(vma)
            cursor = vma.next
        }
        return result
    }

    // MARK: - Writer changes (mmap write lock held)

    /// Adds `vma`, which must not overlap any VMA in the index.
    func insert(_ vma: VMA) {
        let previous = floor(vma.start)
        checkInvariant(previous == nil || previous!.end <= vma.start, "overlapping VMA insert")
        let value = Unmanaged.passRetained(vma).toOpaque()
        insertKey(vma.start, value: value)
        count += 1
        // Link into the ordered list.
        vma.previous = previous
        vma.next = previous != nil ? previous!.next : first
        if let previous { previous.next = vma } else { first = vma }
        if let next = vma.next { next.previous = vma } else { last = vma }
        checkInvariant(vma.next == nil || vma.end <= vma.next!.start, "overlapping VMA insert")
    }

    /// Removes `vma`, handing the index's reference to `retire` (released after a grace period).
    func remove(_ vma: VMA, retire: RetireList) {
        let value = removeKey(vma.start)
        checkInvariant(value == Unmanaged.passUnretained(vma).toOpaque(), "removing a VMA that is not indexed")
        retire.retire(object: Unmanaged<VMA>.fromOpaque(value).takeRetainedValue())
        count -= 1
        if let previous = vma.previous { previous.next = vma.next } else { first = vma.next }
        if let next = vma.next { next.previous = vma.previous } else { last = vma.previous }
        vma.previous = nil
        vma.next = nil
    }

    /// Re-keys `vma` after its start moved from `oldStart` (order relative to neighbours unchanged).
    func rekey(_ vma: VMA, from oldStart: UInt64) {
        if vma.start == oldStart { return }
        let value = removeKey(oldStart)
        insertKey(vma.start, value: value)
    }

    /// Publishes the edit's root and retires the nodes it replaced.
    func commit(retire: RetireList) {
        let bits = UInt(bitPattern: root?.raw)
        // Skipping an unchanged root keeps the readers' line clean (mprotect in place, zaps).
        if publishedRoot.load(ordering: .relaxed) != bits {
            publishedRoot.store(bits, ordering: .releasing)
        }
        for node in replaced { retire.retire(node: node.raw) }
        replaced.removeAll(keepingCapacity: true)
        edit &+= 1
    }

    // MARK: - B+tree internals

    /// A node private to the open edit (copied from `node` if it was published).
    private func writable(_ node: IndexNode) -> IndexNode {
        if node.edit == edit { return node }
        replaced.append(node)
        return node.copy(edit: edit)
    }

    private func insertKey(_ key: UInt64, value: UnsafeMutableRawPointer) {
        guard let current = root else {
            let leaf = IndexNode.allocate(level: 0, edit: edit)
            leaf.insert(at: 0, key: key, slot: value)
            root = leaf
            return
        }
        let (left, right) = insert(into: current, key: key, value: value)
        if let right {
            let top = IndexNode.allocate(level: left.level + 1, edit: edit)
            top.insert(at: 0, key: left.key(0), slot: left.raw)
            top.insert(at: 1, key: right.key(0), slot: right.raw)
            root = top
        } else {
            root = left
        }
    }

    private func insert(into node: IndexNode, key: UInt64, value: UnsafeMutableRawPointer) -> (IndexNode, IndexNode?) {
        let current = writable(node)
        if current.level == 0 {
            let position = current.rank(of: key) + 1
            if current.count < IndexNode.fanout {
                current.insert(at: position, key: key, slot: value)
                return (current, nil)
            }
            let right = current.splitOff(edit: edit, appending: position == current.count)
            if position <= current.count {
                current.insert(at: position, key: key, slot: value)
            } else {
                right.insert(at: position - current.count, key: key, slot: value)
            }
            return (current, right)
        }
        let position = max(current.rank(of: key), 0)
        let (child, split) = insert(into: IndexNode(raw: current.slot(position)!), key: key, value: value)
        current.setSlot(position, key: child.key(0), slot: child.raw)
        guard let split else { return (current, nil) }
        if current.count < IndexNode.fanout {
            current.insert(at: position + 1, key: split.key(0), slot: split.raw)
            return (current, nil)
        }
        let right = current.splitOff(edit: edit, appending: position + 1 == current.count)
        if position + 1 <= current.count {
            current.insert(at: position + 1, key: split.key(0), slot: split.raw)
        } else {
            right.insert(at: position + 1 - current.count, key: split.key(0), slot: split.raw)
        }
        return (current, right)
    }

    private func removeKey(_ key: UInt64) -> UnsafeMutableRawPointer {
        let current = root.unsafelyUnwrapped
        let (newRoot, value) = remove(from: current, key: key)
        if newRoot.count == 0 {
            discard(newRoot)
            root = nil
        } else if newRoot.level > 0 && newRoot.count == 1 {
            root = IndexNode(raw: newRoot.slot(0)!)
            discard(newRoot)
        } else {
            root = newRoot
        }
        return value
    }

    private func remove(from node: IndexNode, key: UInt64) -> (IndexNode, UnsafeMutableRawPointer) {
        let current = writable(node)
        let position = current.rank(of: key)
        if current.level == 0 {
            checkInvariant(position >= 0 && current.key(position) == key, "removing a missing key")
            let value = current.slot(position)!
            current.remove(at: position)
            return (current, value)
        }
        let (child, value) = remove(from: IndexNode(raw: current.slot(position)!), key: key)
        if child.count == 0 {
            discard(child)
            current.remove(at: position)
        } else {
            current.setSlot(position, key: child.key(0), slot: child.raw)
            if child.count < IndexNode.minimumFill && current.count > 1 {
                rebalance(current, around: position)
            }
        }
        return (current, value)
    }

    /// Merges or redistributes the underfull child at `position` with a neighbour.
    private func rebalance(_ parent: IndexNode, around position: Int) {
        let leftPosition = position + 1 < parent.count ? position : position - 1
        let left = writable(IndexNode(raw: parent.slot(leftPosition)!))
        let right = writable(IndexNode(raw: parent.slot(leftPosition + 1)!))
        if left.count + right.count <= IndexNode.fanout {
            left.append(contentsOf: right)
            parent.setSlot(leftPosition, key: left.key(0), slot: left.raw)
            parent.remove(at: leftPosition + 1)
            discard(right)
        } else {
            IndexNode.redistribute(left, right)
            parent.setSlot(leftPosition, key: left.key(0), slot: left.raw)
            parent.setSlot(leftPosition + 1, key: right.key(0), slot: right.raw)
        }
    }

    /// Frees a node created by the open edit that is no longer referenced (never published).
    private func discard(_ node: IndexNode) {
        checkInvariant(node.edit == edit, "discarding a published node")
        node.raw.deallocate()
    }

    private func freeTree(_ node: IndexNode, releasingValues: Bool) {
        for index in 0..<node.count {
            let slot = node.slot(index)!
            if node.level == 0 {
                if releasingValues { Unmanaged<VMA>.fromOpaque(slot).release() }
            } else {
                freeTree(IndexNode(raw: slot), releasingValues: releasingValues)
            }
        }
        node.raw.deallocate()
    }

    /// Height of the tree (diagnostics).
    var height: Int {
        var height = 0
        var node = root
        while let current = node {
            height += 1
            node = current.level == 0 ? nil : IndexNode(raw: current.slot(0)!)
        }
        return height
    }
}

/// One B+tree node in raw memory: 16 keys (unused keys are `UInt64.max`, so a branchless search
/// over all 16 works), 16 slots (VMAs in leaves, child nodes above), then `count`, `level`
/// (0 = leaf) and the edit that created it. 272 bytes, 64-byte aligned: the keys fill lines 0-1,
/// the slots lines 2-3 (a lock-free search reads only those four), the header line 4.
@frozen @usableFromInline
struct IndexNode {
    @usableFromInline static let fanout = 16
    @usableFromInline static let minimumFill = 4
    @usableFromInline static let keysOffset = 0
    @usableFromInline static let slotsOffset = 8 * 16
    /// Header: `count` (Int32), `level` (Int32), `edit` (UInt64).
    @usableFromInline static let headerOffset = slotsOffset + 8 * 16
    @usableFromInline static let byteCount = headerOffset + 16
    /// The lines a search reads (keys and slots).
    @usableFromInline static let searchedByteCount = headerOffset

    @usableFromInline let raw: UnsafeMutableRawPointer

    @inlinable init(raw: UnsafeMutableRawPointer) { self.raw = raw }

    static func allocate(level: Int, edit: UInt64) -> IndexNode {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: 64)
        let node = IndexNode(raw: raw)
        raw.storeBytes(of: Int32(0), toByteOffset: headerOffset, as: Int32.self)
        raw.storeBytes(of: Int32(level), toByteOffset: headerOffset + 4, as: Int32.self)
        raw.storeBytes(of: edit, toByteOffset: headerOffset + 8, as: UInt64.self)
        for index in 0..<fanout {
            raw.storeBytes(of: UInt64.max, toByteOffset: keysOffset + 8 * index, as: UInt64.self)
            raw.storeBytes(of: nil, toByteOffset: slotsOffset + 8 * index, as: UnsafeMutableRawPointer?.self)
        }
        return node
    }

    func copy(edit: UInt64) -> IndexNode {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: Self.byteCount, alignment: 64)
        raw.copyMemory(from: self.raw, byteCount: Self.byteCount)
        raw.storeBytes(of: edit, toByteOffset: Self.headerOffset + 8, as: UInt64.self)
        return IndexNode(raw: raw)
    }

    /// Starts loading the lines a search reads (keys and slots; not the header).
    @inlinable @inline(__always)
    func prefetch() { RawMemory.prefetchLines(raw, byteCount: Self.searchedByteCount) }

    // MARK: Lock-free descent

    /// A published root (non-zero ``VMAIndex/publishedRootBits``).
    @inlinable
    init(root bits: UInt) {
        checkInvariant(bits != 0, "the root of an empty index")
        raw = UnsafeMutableRawPointer(bitPattern: bits).unsafelyUnwrapped
    }

    /// In the index rooted at this node, the VMA with the greatest start ≤ `address`, or the
    /// first VMA if every start is above `address`: ``VMAIndex/lookup(_:)`` without its bounds
    /// tests, for a caller that tests the VMA's bounds itself in a validated snapshot
    /// (``AddressSpace/mapping(containing:)``).
    ///
    /// - Precondition: `address != UInt64.max`; this node the root read from
    ///   ``VMAIndex/publishedRootBits`` in the current RCU read section. The result is valid until
    ///   the read section ends.
    ///
    /// Out of line: a call keeps the inline part of ``AddressSpace/mapping(containing:)`` small
    /// enough to be inlined into its callers (measured: inlining the descent there instead makes
    /// the caller call `mapping(containing:)`, 35 instructions more per lookup).
    @usableFromInline
    func candidate(belowMaximum address: UInt64) -> Unmanaged<VMA> {
        // Every reachable leaf holds at least one VMA, so even the first slot is used.
        Unmanaged<VMA>.fromOpaque(Self.slot(at: leafKey(belowMaximum: address)).unsafelyUnwrapped)
    }

    /// The leaf key for `address` in the index rooted at this node: the last key ≤ `address`, or
    /// the first key of the first leaf if every key is above it. Lock-free.
    @inlinable @inline(__always)
    func leafKey(belowMaximum address: UInt64) -> UnsafePointer<UInt64> {
        checkInvariant(address != .max, "leafKey(belowMaximum:) of UInt64.max")
        var node = self
        // Every leaf is at the same depth: the root's level says how many inner nodes follow, so
        // the descent reads no child's level.
        //
        // Inner nodes need no "below every key" test: an inner key is its child's first key, so
        // below the root the search always finds a key ≤ `address`; at the root, an address below
        // every VMA descends along the first keys to the first leaf.
        //
        // Up to four inner levels (trees of up to 16^5 VMAs) descend in straight-line code entered
        // at the root's depth, not in a loop: inside a loop whose iterations depend on each other,
        // x86 code generation turns the searches' conditional moves into branches, which
        // mispredict on every other step for unpredictable addresses. Deeper trees go out of line.
        switch node.unsignedLevel {
        case 4:
            node = node.child(containing: address)
            fallthrough
        case 3:
            node = node.child(containing: address)
            fallthrough
        case 2:
            node = node.child(containing: address)
            fallthrough
        case 1:
            node = node.child(containing: address)
            fallthrough
        case 0:
            checkInvariant(node.level == 0, "VMA index leaf at an unexpected depth")
            return node.lastKey(atMost: address)
        default:
            return node.deepLeafKey(belowMaximum: address)
        }
    }

    /// ``leafKey(belowMaximum:)`` below a root above level 4 (six levels or more: over a million
    /// VMAs in full nodes): a loop.
    @usableFromInline @inline(never)
    func deepLeafKey(belowMaximum address: UInt64) -> UnsafePointer<UInt64> {
        var node = self
        while node.level > 0 { node = node.child(containing: address) }
        return node.lastKey(atMost: address)
    }

    // MARK: Fields

    @inlinable var count: Int { Int(raw.load(fromByteOffset: Self.headerOffset, as: Int32.self)) }
    @inlinable var level: Int { Int(raw.load(fromByteOffset: Self.headerOffset + 4, as: Int32.self)) }
    /// ``level`` (never negative), unsigned.
    @inlinable var unsignedLevel: UInt { UInt(raw.load(fromByteOffset: Self.headerOffset + 4, as: UInt32.self)) }
    var edit: UInt64 { raw.load(fromByteOffset: Self.headerOffset + 8, as: UInt64.self) }

    @inlinable func key(_ index: Int) -> UInt64 {
        raw.load(fromByteOffset: Self.keysOffset &+ 8 &* index, as: UInt64.self)
    }

    @inlinable func slot(_ index: Int) -> UnsafeMutableRawPointer? {
        raw.load(fromByteOffset: Self.slotsOffset &+ 8 &* index, as: UnsafeMutableRawPointer?.self)
    }

    /// The child to descend into for `key` (an inner node; `key` at least its first key or below
    /// every key of the tree), with the lines its search reads already being loaded.
    @inlinable @inline(__always)
    func child(containing key: UInt64) -> IndexNode {
        checkInvariant(level > 0, "descending from a VMA index leaf")
        let found = lastKey(atMost: key)
        let child = IndexNode(raw: Self.slot(at: found).unsafelyUnwrapped)
        checkInvariant(child.level == level - 1, "VMA index node at an unexpected depth")
        checkInvariant(child.key(0) == found.pointee, "VMA index key differs from its child's first key")
        // The search below reads keys and a slot on up to four lines of the child, each depending
        // on the last: start loading all of them now.
        child.prefetch()
        return child
    }

    /// The slot that goes with the key at `key` (a result of ``lastKey(atMost:)``): keys and slots
    /// are parallel arrays, so it is a fixed distance away.
    @inlinable @inline(__always)
    static func slot(at key: UnsafePointer<UInt64>) -> UnsafeMutableRawPointer? {
        UnsafeRawPointer(key).load(fromByteOffset: slotsOffset &- keysOffset, as: UnsafeMutableRawPointer?.self)
    }

    /// Index of the last key ≤ `key`, or -1. Unused slots hold `UInt64.max`, so the result is
    /// clamped to the used keys for `key == UInt64.max`.
    @inlinable @inline(__always)
    func rank(of key: UInt64) -> Int {
        let found = lastKey(atMost: key)
        if found.pointee > key { return -1 }
        return min(found - keys, count &- 1)
    }

    @inlinable var keys: UnsafePointer<UInt64> {
        UnsafePointer(raw.advanced(by: Self.keysOffset).assumingMemoryBound(to: UInt64.self))
    }

    /// The last of all 16 keys that is ≤ `key`, or the first key if none is: a branchless binary
    /// search over the key pointer (four dependent loads and conditional moves, instead of a scan
    /// whose branch mispredicts; the pointer, not an index, so the slot is one load away).
    /// Unused keys (`UInt64.max`) are found only for `key == UInt64.max`.
    @inlinable @inline(__always)
    func lastKey(atMost key: UInt64) -> UnsafePointer<UInt64> {
        var found = keys
        found = found[8] <= key ? found + 8 : found
        found = found[4] <= key ? found + 4 : found
        found = found[2] <= key ? found + 2 : found
        found = found[1] <= key ? found + 1 : found
        return found
    }

    private func setCount(_ value: Int) {
        raw.storeBytes(of: Int32(value), toByteOffset: Self.headerOffset, as: Int32.self)
    }

    private func store(_ index: Int, key: UInt64, slot: UnsafeMutableRawPointer?) {
        raw.storeBytes(of: key, toByteOffset: Self.keysOffset + 8 * index, as: UInt64.self)
        raw.storeBytes(of: slot, toByteOffset: Self.slotsOffset + 8 * index, as: UnsafeMutableRawPointer?.self)
    }

    func setSlot(_ index: Int, key: UInt64, slot: UnsafeMutableRawPointer) { store(index, key: key, slot: slot) }

    func insert(at position: Int, key: UInt64, slot: UnsafeMutableRawPointer) {
        let count = self.count
        checkInvariant(count < Self.fanout && position <= count, "index node overflow")
        var index = count
        while index > position {
            store(index, key: self.key(index - 1), slot: self.slot(index - 1))
            index -= 1
        }
        store(position, key: key, slot: slot)
        setCount(count + 1)
    }

    func remove(at position: Int) {
        let count = self.count
        for index in position..<(count - 1) {
            store(index, key: key(index + 1), slot: slot(index + 1))
        }
        store(count - 1, key: .max, slot: nil)
        setCount(count - 1)
    }

    /// Moves the upper half into a new node (same level) and returns it. When the key that
    /// overflowed the node goes after all of its keys (`appending`: mappings placed in address
    /// order, the common way a space fills), only ``minimumFill`` - 1 keys move, so such nodes
    /// stay nearly full and the tree one level lower (10,000 sequential mappings: 4 levels,
    /// not 5); the new right node gets the key and holds ``minimumFill``.
    func splitOff(edit: UInt64, appending: Bool = false) -> IndexNode {
        let right = IndexNode.allocate(level: level, edit: edit)
        let count = self.count
        let keep = appending ? count - (Self.minimumFill - 1) : count / 2
        for index in keep..<count {
            right.store(index - keep, key: key(index), slot: slot(index))
            store(index, key: .max, slot: nil)
        }
        right.setCount(count - keep)
        setCount(keep)
        return right
    }

    func append(contentsOf other: IndexNode) {
        let count = self.count
        for index in 0..<other.count {
            store(count + index, key: other.key(index), slot: other.slot(index))
        }
        setCount(count + other.count)
    }

    /// Evens out two neighbours (left's keys all precede right's).
    static func redistribute(_ left: IndexNode, _ right: IndexNode) {
        var keys: [UInt64] = []
        var slots: [UnsafeMutableRawPointer?] = []
        for node in [left, right] {
            for index in 0..<node.count {
                keys.append(node.key(index))
                slots.append(node.slot(index))
            }
            for index in 0..<fanout { node.store(index, key: .max, slot: nil) }
        }
        let half = keys.count / 2
        for index in 0..<half { left.store(index, key: keys[index], slot: slots[index]) }
        for index in half..<keys.count { right.store(index - half, key: keys[index], slot: slots[index]) }
        left.setCount(half)
        right.setCount(keys.count - half)
    }
}
