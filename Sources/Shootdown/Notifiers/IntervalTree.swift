import CInterop
import Synchronization

/// The interval index of a space's interval notifiers (the kernel's `interval_tree`): closed
/// intervals `[start, last]` in a B+tree of fanout 16 ordered by `(start, handle)`, each child
/// entry augmented with the largest `last` in its subtree. An overlap query descends only into
/// children whose smallest start is ≤ the query's last and whose largest last is ≥ the query's
/// start: O(log₁₆ n + k) nodes.
///
/// Why not a binary tree (as the kernel's rbtree): at 100 000 intervals an AVL query visits ~20
/// nodes, each a dependent cache miss; this tree has 5 levels whose keys sit on adjacent lines, so a
/// query costs a few misses (measured: `shootdown bench notifier --intervals 100000`).
///
/// Intervals are named by a stable 32-bit handle returned by ``insert(start:last:value:)``.
/// Not thread-safe by itself: mutated under ``IntervalNotifierState``'s lock, and read either under
/// that lock or while the tree is frozen (an interval invalidation epoch is open).
@usableFromInline
final class IntervalTree: @unchecked Sendable {
    @usableFromInline static let fanout = 16
    static let minimumFill = 4

    /// What a handle names.
    @usableFromInline
    struct Entry {
        @usableFromInline var start: UInt64
        @usableFromInline var last: UInt64
        @usableFromInline var nextFree: Int32
    }

    @usableFromInline @exclusivity(unchecked) var entries: UnsafeMutablePointer<Entry>
    @usableFromInline @exclusivity(unchecked) var root: UnsafeMutableRawPointer?
    @exclusivity(unchecked) private var capacity: Int
    @exclusivity(unchecked) private var used = 0
    @exclusivity(unchecked) private var freeHead: Int32 = -1
    /// Number of intervals.
    @exclusivity(unchecked) private(set) var count = 0

    init(capacity: Int = 64) {
        self.capacity = max(capacity, 1)
        entries = .allocate(capacity: self.capacity)
    }

    deinit {
        if let root { free(Node(root)) }
        entries.deallocate()
    }

    // MARK: - Queries

    /// Calls `body(handle, value)` for every interval intersecting `[start, last]`, in order of
    /// start, until `body` returns `false`.
    @inlinable
    func forEachIntersecting(_ start: UInt64, _ last: UInt64, _ body: (Int32, UnsafeMutableRawPointer) -> Bool) {
        guard let root else { return }
        _ = visit(Node(root), start, last, body)
    }

    @inlinable
    func visit(_ node: Node, _ start: UInt64, _ last: UInt64, _ body: (Int32, UnsafeMutableRawPointer) -> Bool) -> Bool {
        let count = node.count
        var index = 0
        if node.level == 0 {
            while index < count {
                if node.start(index) > last { return true }
                if node.last(index) >= start {
                    // Leaves keep the value in the child slot: no trip through `entries`.
                    if !body(node.handle(index), node.value(index)) { return false }
                }
                index &+= 1
            }
            return true
        }
        while index < count {
            if node.start(index) > last { return true }
            if node.last(index) >= start {
                let child = node.child(index)
                child.prefetch()
                if !visit(child, start, last, body) { return false }
            }
            index &+= 1
        }
        return true
    }

    /// Whether any interval intersects `[start, last]`.
    @inlinable
    func intersects(_ start: UInt64, _ last: UInt64) -> Bool {
        var found = false
        forEachIntersecting(start, last) { _, _ in
            found = true
            return false
        }
        return found
    }

    /// The interval named by `handle`.
    func interval(_ handle: Int32) -> (start: UInt64, last: UInt64) {
        (entries[Int(handle)].start, entries[Int(handle)].last)
    }

    /// Levels of the tree (0 when empty).
    var height: Int {
        var levels = 0
        var node = root.map(Node.init)
        while let current = node {
            levels += 1
            node = current.level == 0 ? nil : current.child(0)
        }
        return levels
    }

    // MARK: - Changes

    /// Inserts `[start, last]` carrying `value`; returns its handle.
    func insert(start: UInt64, last: UInt64, value: UnsafeMutableRawPointer) -> Int32 {
        let handle = allocateEntry(start: start, last: last)
        if root == nil { root = Node.allocate(level: 0).raw }
        let current = Node(root!)
        if let split = insert(into: current, start: start, handle: handle, last: last, value: value) {
            let top = Node.allocate(level: current.level + 1)
            top.insertChild(current, at: 0)
            top.insertChild(split, at: 1)
            root = top.raw
        }
        count += 1
        return handle
    }

    /// Removes the interval named by `handle`.
    func remove(_ handle: Int32) {
        let entry = entries[Int(handle)]
        let current = Node(root.unsafelyUnwrapped)
        remove(from: current, start: entry.start, handle: handle)
        if current.count == 0 {
            free(current)
            root = nil
        } else if current.level > 0 && current.count == 1 {
            root = current.child(0).raw
            current.raw.deallocate()
        }
        entries[Int(handle)].nextFree = freeHead
        freeHead = handle
        count -= 1
    }

    // MARK: - B+tree internals

    private func allocateEntry(start: UInt64, last: UInt64) -> Int32 {
        let handle: Int32
        if freeHead >= 0 {
            handle = freeHead
            freeHead = entries[Int(handle)].nextFree
        } else {
            if used == capacity {
                let grown = UnsafeMutablePointer<Entry>.allocate(capacity: capacity * 2)
                grown.moveInitialize(from: entries, count: used)
                entries.deallocate()
                entries = grown
                capacity *= 2
            }
            handle = Int32(used)
            used += 1
        }
        (entries + Int(handle)).initialize(to: Entry(start: start, last: last, nextFree: -1))
        return handle
    }

    /// Whether `(startA, handleA)` orders before `(startB, handleB)`.
    private static func precedes(_ startA: UInt64, _ handleA: Int32, _ startB: UInt64, _ handleB: Int32) -> Bool {
        startA < startB || (startA == startB && handleA < handleB)
    }

    /// The slot of `node` whose subtree (or entry) covers key `(start, handle)`: the last slot
    /// whose key is ≤ the key, or 0.
    private func slot(in node: Node, start: UInt64, handle: Int32) -> Int {
        var index = 0
        while index + 1 < node.count && !Self.precedes(start, handle, node.start(index + 1), node.handle(index + 1)) {
            index += 1
        }
        return index
    }

    /// Inserts into the subtree of `node`; returns a new right sibling if `node` split.
    private func insert(
        into node: Node, start: UInt64, handle: Int32, last: UInt64, value: UnsafeMutableRawPointer
    ) -> Node? {
        if node.level == 0 {
            var position = 0
            while position < node.count && Self.precedes(node.start(position), node.handle(position), start, handle) {
                position += 1
            }
            if node.count < Self.fanout {
                node.insertEntry(start: start, handle: handle, last: last, value: value, at: position)
                return nil
            }
            let right = node.splitOff()
            if position <= node.count {
                node.insertEntry(start: start, handle: handle, last: last, value: value, at: position)
            } else {
                right.insertEntry(start: start, handle: handle, last: last, value: value, at: position - node.count)
            }
            return right
        }
        let index = slot(in: node, start: start, handle: handle)
        let child = node.child(index)
        let split = insert(into: child, start: start, handle: handle, last: last, value: value)
        node.refresh(index)
        guard let split else { return nil }
        if node.count < Self.fanout {
            node.insertChild(split, at: index + 1)
            return nil
        }
        let right = node.splitOff()
        if index + 1 <= node.count {
            node.insertChild(split, at: index + 1)
        } else {
            right.insertChild(split, at: index + 1 - node.count)
        }
        return right
    }

    private func remove(from node: Node, start: UInt64, handle: Int32) {
        if node.level == 0 {
            for index in 0..<node.count where node.handle(index) == handle {
                node.removeSlot(index)
                return
            }
            checkInvariant(false, "removing an interval that is not in the tree")
            return
        }
        let index = slot(in: node, start: start, handle: handle)
        let child = node.child(index)
        remove(from: child, start: start, handle: handle)
        if child.count == 0 {
            free(child)
            node.removeSlot(index)
            return
        }
        node.refresh(index)
        if child.count < Self.minimumFill && node.count > 1 {
            let left = index + 1 < node.count ? index : index - 1
            let leftChild = node.child(left)
            let rightChild = node.child(left + 1)
            if leftChild.count + rightChild.count <= Self.fanout {
                leftChild.append(contentsOf: rightChild)
                rightChild.raw.deallocate()
                node.removeSlot(left + 1)
                node.refresh(left)
            }
        }
    }

    private func free(_ node: Node) {
        if node.level > 0 {
            for index in 0..<node.count { free(node.child(index)) }
        }
        node.raw.deallocate()
    }

    /// One node in raw memory: count, level (0 = leaf), then per slot: the smallest start in the
    /// slot, the largest last in it, the handle ordering ties (leaves: the interval's handle;
    /// above: the handle of the subtree's first interval) and the child (in leaves: the value).
    @frozen @usableFromInline
    struct Node {
        @usableFromInline static let startsOffset = 8
        @usableFromInline static let lastsOffset = startsOffset + 8 * 16
        @usableFromInline static let handlesOffset = lastsOffset + 8 * 16
        @usableFromInline static let childrenOffset = handlesOffset + 4 * 16
        @usableFromInline static let byteCount = childrenOffset + 8 * 16

        @usableFromInline let raw: UnsafeMutableRawPointer

        @inlinable init(_ raw: UnsafeMutableRawPointer) { self.raw = raw }

        static func allocate(level: Int) -> Node {
            let raw = UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: 64)
            raw.storeBytes(of: Int32(0), as: Int32.self)
            raw.storeBytes(of: Int32(level), toByteOffset: 4, as: Int32.self)
            return Node(raw)
        }

        /// Starts loading every line of the node at once: a descent then waits for one miss per
        /// level instead of one per line it reads.
        @inlinable @inline(__always)
        func prefetch() { RawMemory.prefetchLines(raw, byteCount: Self.byteCount) }

        @inlinable var count: Int { Int(raw.load(as: Int32.self)) }
        @inlinable var level: Int { Int(raw.load(fromByteOffset: 4, as: Int32.self)) }
        @inlinable func start(_ index: Int) -> UInt64 { raw.load(fromByteOffset: Self.startsOffset &+ 8 &* index, as: UInt64.self) }
        @inlinable func last(_ index: Int) -> UInt64 { raw.load(fromByteOffset: Self.lastsOffset &+ 8 &* index, as: UInt64.self) }
        @inlinable func handle(_ index: Int) -> Int32 { raw.load(fromByteOffset: Self.handlesOffset &+ 4 &* index, as: Int32.self) }
        /// A leaf slot's value (stored where a child pointer would be).
        @inlinable func value(_ index: Int) -> UnsafeMutableRawPointer {
            raw.load(fromByteOffset: Self.childrenOffset &+ 8 &* index, as: UnsafeMutableRawPointer.self)
        }
        @inlinable func child(_ index: Int) -> Node {
            Node(raw.load(fromByteOffset: Self.childrenOffset &+ 8 &* index, as: UnsafeMutableRawPointer.self))
        }

        private func setCount(_ value: Int) { raw.storeBytes(of: Int32(value), as: Int32.self) }

        private func store(_ index: Int, start: UInt64, last: UInt64, handle: Int32, child: UnsafeMutableRawPointer?) {
            raw.storeBytes(of: start, toByteOffset: Self.startsOffset + 8 * index, as: UInt64.self)
            raw.storeBytes(of: last, toByteOffset: Self.lastsOffset + 8 * index, as: UInt64.self)
            raw.storeBytes(of: handle, toByteOffset: Self.handlesOffset + 4 * index, as: Int32.self)
            raw.storeBytes(of: child, toByteOffset: Self.childrenOffset + 8 * index, as: UnsafeMutableRawPointer?.self)
        }

        private func copy(_ from: Int, to: Int, in other: Node) {
            other.store(
                to, start: start(from), last: last(from), handle: handle(from),
                child: raw.load(fromByteOffset: Self.childrenOffset + 8 * from, as: UnsafeMutableRawPointer?.self))
        }

        private func makeRoom(at position: Int) {
            var index = count
            while index > position {
                copy(index - 1, to: index, in: self)
                index -= 1
            }
        }

        func insertEntry(start: UInt64, handle: Int32, last: UInt64, value: UnsafeMutableRawPointer, at position: Int) {
            makeRoom(at: position)
            store(position, start: start, last: last, handle: handle, child: value)
            setCount(count + 1)
        }

        func insertChild(_ child: Node, at position: Int) {
            makeRoom(at: position)
            store(position, start: child.start(0), last: child.maxLast, handle: child.handle(0), child: child.raw)
            setCount(count + 1)
        }

        /// Recomputes slot `index` from its child (smallest key, largest last).
        func refresh(_ index: Int) {
            let child = self.child(index)
            store(index, start: child.start(0), last: child.maxLast, handle: child.handle(0), child: child.raw)
        }

        /// The largest last in this node.
        var maxLast: UInt64 {
            var result: UInt64 = 0
            for index in 0..<count { result = Swift.max(result, last(index)) }
            return result
        }

        func removeSlot(_ position: Int) {
            for index in position..<(count - 1) { copy(index + 1, to: index, in: self) }
            setCount(count - 1)
        }

        /// Moves the upper half into a new node of the same level and returns it.
        func splitOff() -> Node {
            let right = Node.allocate(level: level)
            let keep = count / 2
            for index in keep..<count { copy(index, to: index - keep, in: right) }
            right.setCount(count - keep)
            setCount(keep)
            return right
        }

        func append(contentsOf other: Node) {
            let base = count
            for index in 0..<other.count { other.copy(index, to: base + index, in: self) }
            setCount(base + other.count)
        }
    }
}
