import Synchronization
/// An augmented AVL interval tree over closed intervals `[start, last]` (the kernel's
/// `interval_tree`), with nodes in one growable raw buffer addressed by 32-bit indices: no ARC, no
/// per-node allocation, and queries are O(log n + k).
///
/// Not thread-safe by itself: mutated under ``IntervalNotifierState``'s lock, and read either under
/// that lock or while the tree is frozen (an interval invalidation epoch is open).
@usableFromInline
final class IntervalTree: @unchecked Sendable {
    @frozen @usableFromInline
    struct Node {
        @usableFromInline var start: UInt64
        @usableFromInline var last: UInt64
        @usableFromInline var maxLast: UInt64
        @usableFromInline var left: Int32
        @usableFromInline var right: Int32
        @usableFromInline var height: Int32
        @usableFromInline var nextFree: Int32
        @usableFromInline var value: UnsafeMutableRawPointer?
    }

    @usableFromInline @exclusivity(unchecked) var nodes: UnsafeMutablePointer<Node>
    @usableFromInline @exclusivity(unchecked) var root: Int32 = -1
    @exclusivity(unchecked) private var capacity: Int
    @exclusivity(unchecked) private var used = 0
    @exclusivity(unchecked) private var freeHead: Int32 = -1
    /// Number of intervals.
    @exclusivity(unchecked) private(set) var count = 0

    init(capacity: Int = 64) {
        self.capacity = capacity
        nodes = .allocate(capacity: capacity)
    }

    deinit { nodes.deallocate() }

    // MARK: Queries

    /// Calls `body` with the value of every interval intersecting `[start, last]`, in order of
    /// start, until `body` returns `false`. Uses a fixed stack (height ≤ 1.44 log₂ n < 64).
    @inlinable
    func forEachIntersecting(_ start: UInt64, _ last: UInt64, _ body: (Int32, UnsafeMutableRawPointer) -> Bool) {
        withUnsafeTemporaryAllocation(of: Int32.self, capacity: 64) { stack in
            var depth = 0
            var current = root
            while true {
                while current >= 0 && nodes[Int(current)].maxLast >= start {
                    stack[depth] = current
                    depth &+= 1
                    current = nodes[Int(current)].left
                }
                if depth == 0 { return }
                depth &-= 1
                let node = stack[depth]
                if nodes[Int(node)].start > last { return }
                if nodes[Int(node)].last >= start {
                    if !body(node, nodes[Int(node)].value.unsafelyUnwrapped) { return }
                }
                current = nodes[Int(node)].right
            }
        }
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

    // MARK: Changes

    /// Inserts `[start, last]` carrying `value`; returns the node index.
    func insert(start: UInt64, last: UInt64, value: UnsafeMutableRawPointer) -> Int32 {
        let node = allocateNode()
        nodes[Int(node)] = Node(
            start: start, last: last, maxLast: last, left: -1, right: -1, height: 1, nextFree: -1, value: value)
        root = insert(node, into: root)
        count += 1
        return node
    }

    /// Removes the interval at node index `node`.
    func remove(_ node: Int32) {
        root = remove(node, from: root)
        nodes[Int(node)].value = nil
        nodes[Int(node)].nextFree = freeHead
        freeHead = node
        count -= 1
    }

    /// The interval at `node`.
    func interval(_ node: Int32) -> (start: UInt64, last: UInt64) {
        (nodes[Int(node)].start, nodes[Int(node)].last)
    }

    /// Height of the tree (tests check the AVL bound).
    var height: Int { Int(height(root)) }

    // MARK: AVL internals

    private func allocateNode() -> Int32 {
        if freeHead >= 0 {
            let node = freeHead
            freeHead = nodes[Int(node)].nextFree
            return node
        }
        if used == capacity {
            let grown = UnsafeMutablePointer<Node>.allocate(capacity: capacity * 2)
            grown.moveInitialize(from: nodes, count: used)
            nodes.deallocate()
            nodes = grown
            capacity *= 2
        }
        used += 1
        return Int32(used - 1)
    }

    private func precedes(_ a: Int32, _ b: Int32) -> Bool {
        let startA = nodes[Int(a)].start
        let startB = nodes[Int(b)].start
        return startA < startB || (startA == startB && a < b)
    }

    private func height(_ node: Int32) -> Int32 { node < 0 ? 0 : nodes[Int(node)].height }

    private func maxLast(_ node: Int32) -> UInt64 { node < 0 ? 0 : nodes[Int(node)].maxLast }

    private func update(_ node: Int32) {
        let left = nodes[Int(node)].left
        let right = nodes[Int(node)].right
        nodes[Int(node)].height = 1 + max(height(left), height(right))
        nodes[Int(node)].maxLast = max(nodes[Int(node)].last, max(maxLast(left), maxLast(right)))
    }

    private func rotateLeft(_ node: Int32) -> Int32 {
        let pivot = nodes[Int(node)].right
        nodes[Int(node)].right = nodes[Int(pivot)].left
        nodes[Int(pivot)].left = node
        update(node)
        update(pivot)
        return pivot
    }

    private func rotateRight(_ node: Int32) -> Int32 {
        let pivot = nodes[Int(node)].left
        nodes[Int(node)].left = nodes[Int(pivot)].right
        nodes[Int(pivot)].right = node
        update(node)
        update(pivot)
        return pivot
    }

    private func balance(_ node: Int32) -> Int32 {
        update(node)
        let left = nodes[Int(node)].left
        let right = nodes[Int(node)].right
        let factor = height(left) - height(right)
        if factor > 1 {
            if height(nodes[Int(left)].left) < height(nodes[Int(left)].right) {
                nodes[Int(node)].left = rotateLeft(left)
            }
            return rotateRight(node)
        }
        if factor < -1 {
            if height(nodes[Int(right)].right) < height(nodes[Int(right)].left) {
                nodes[Int(node)].right = rotateRight(right)
            }
            return rotateLeft(node)
        }
        return node
    }

    private func insert(_ node: Int32, into subtree: Int32) -> Int32 {
        if subtree < 0 { return node }
        if precedes(node, subtree) {
            nodes[Int(subtree)].left = insert(node, into: nodes[Int(subtree)].left)
        } else {
            nodes[Int(subtree)].right = insert(node, into: nodes[Int(subtree)].right)
        }
        return balance(subtree)
    }

    private func removeMinimum(_ subtree: Int32) -> (root: Int32, minimum: Int32) {
        let left = nodes[Int(subtree)].left
        if left < 0 { return (nodes[Int(subtree)].right, subtree) }
        let (newLeft, minimum) = removeMinimum(left)
        nodes[Int(subtree)].left = newLeft
        return (balance(subtree), minimum)
    }

    private func remove(_ node: Int32, from subtree: Int32) -> Int32 {
        checkInvariant(subtree >= 0, "removing an interval that is not in the tree")
        if subtree == node {
            let left = nodes[Int(node)].left
            let right = nodes[Int(node)].right
            if left < 0 { return right }
            if right < 0 { return left }
            let (newRight, successor) = removeMinimum(right)
            nodes[Int(successor)].left = left
            nodes[Int(successor)].right = newRight
            return balance(successor)
        }
        if precedes(node, subtree) {
            nodes[Int(subtree)].left = remove(node, from: nodes[Int(subtree)].left)
        } else {
            nodes[Int(subtree)].right = remove(node, from: nodes[Int(subtree)].right)
        }
        return balance(subtree)
    }
}
