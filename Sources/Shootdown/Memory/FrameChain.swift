import Synchronization

/// Frames gathered by a zap for freeing after the invalidation ends (the kernel's `mmu_gather`
/// page batch), threaded through the allocator's free-list links so that gathering any number of
/// frames needs no memory: appending is one store. A trivial value: no reference counting.
///
/// A chain belongs to one operation on one thread; it is consumed by ``PhysicalMemory/release(_:)``.
@frozen @usableFromInline
struct FrameChain: ~Copyable {
    /// Most recently appended small frame (head of the chain).
    @usableFromInline var first: UInt64 = 0
    /// First appended small frame (tail of the chain).
    @usableFromInline var last: UInt64 = 0
    /// Number of small frames.
    @usableFromInline var count: Int = 0
    /// Compound (huge) frames, threaded through the head frames' links the same way.
    @usableFromInline var hugeFirst: UInt64 = 0
    @usableFromInline var hugeCount: Int = 0

    @inlinable init() {}

    /// Appends a small frame whose last reference is gone.
    @inlinable @inline(__always)
    mutating func append(_ frame: UInt64, links: UnsafeMutablePointer<Atomic<UInt32>>) {
        if count == 0 {
            last = frame
        } else {
            links[Int(frame)].store(UInt32(truncatingIfNeeded: first), ordering: .relaxed)
        }
        first = frame
        count &+= 1
    }

    /// Appends a compound frame (by its head, which is never frame 0) whose last reference is gone.
    mutating func appendHuge(_ head: UInt64, links: UnsafeMutablePointer<Atomic<UInt32>>) {
        links[Int(head)].store(UInt32(truncatingIfNeeded: hugeFirst), ordering: .relaxed)
        hugeFirst = head
        hugeCount &+= 1
    }

    /// Whether nothing was gathered.
    @inlinable var isEmpty: Bool { count == 0 && hugeCount == 0 }

    /// Number of 4 KiB frames gathered, counting a compound frame as 512.
    @inlinable var frameCount: Int { count + hugeCount * PhysicalMemory.framesPerHugePage }
}
