import Synchronization

/// Frames gathered by a zap for freeing after the invalidation ends (the kernel's `mmu_gather`
/// page batch), threaded through the allocator's free-list links so that gathering any number of
/// frames needs no memory: appending is one store.
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
    /// Compound (huge) frames, at most a few per operation.
    @usableFromInline var huge: [UInt64] = []

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

    /// Appends a compound frame whose last reference is gone.
    mutating func appendHuge(_ head: UInt64) { huge.append(head) }

    /// Whether nothing was gathered.
    @inlinable var isEmpty: Bool { count == 0 && huge.isEmpty }

    /// Number of 4 KiB frames gathered, counting a compound frame as 512.
    @inlinable var frameCount: Int { count + huge.count * PhysicalMemory.framesPerHugePage }

    func hugeHeads() -> [UInt64] { huge }
}
