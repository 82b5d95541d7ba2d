import CInterop
import Synchronization

/// The distance that keeps two writers' data from interfering: two 64-byte lines, because this
/// class of x86 CPU prefetches lines in adjacent pairs (measured: 2-thread fault scaling 1.49x
/// with 64-byte separation, 1.95x with 128).
@usableFromInline let cacheLineSize = 128

/// One cache line of padding, stored between an object's fields that lockless readers load on every
/// operation and the fields writers change, so a writer never invalidates the readers' line (the
/// kernel's `____cacheline_aligned_in_smp` on `mm_struct` members). Swift lays out a class's
/// stored properties in declaration order and objects are 16-byte aligned, so ``cacheLineSize``
/// (128) bytes of padding guarantee the two groups never share a line or a prefetch pair. The header's reference count (offset 8) counts as
/// a writer field: retains by writers must not touch the readers' line either.
@usableFromInline
struct CacheLinePadding {
    @usableFromInline let words: (
        UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
        UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64
    ) = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    @usableFromInline init() {}
}

/// Raw, aligned allocations that hold atomics.
///
/// Everything allocated here is owned by exactly one object, which frees it in `deinit`; the
/// pointers are never handed out beyond the handle types of that object.
@usableFromInline
enum RawMemory {
    /// Starts loading every 64-byte line of `[base, base + byteCount)` at once, so a reader that
    /// then reads several of them waits for one miss instead of one per line (B+tree nodes).
    @inlinable @inline(__always)
    static func prefetchLines(_ base: UnsafeRawPointer, byteCount: Int) {
        var offset = 0
        while offset < byteCount {
            cinterop_prefetch(base + offset)
            offset &+= 64
        }
    }

    /// Allocates `count` atomics of `T`, each initialised to `initial`, aligned to a cache line.
    @usableFromInline
    static func allocateAtomics<T: AtomicRepresentable>(
        _: T.Type, count: Int, initial: T
    ) -> UnsafeMutablePointer<Atomic<T>> {
        let capacity = max(count, 1)
        let raw = allocate(byteCount: capacity * MemoryLayout<Atomic<T>>.stride)
        let typed = raw.bindMemory(to: Atomic<T>.self, capacity: capacity)
        for index in 0..<capacity {
            (typed + index).initialize(to: Atomic(initial))
        }
        return typed
    }

    /// Frees memory returned by ``allocateAtomics(_:count:initial:)``.
    @usableFromInline
    static func deallocateAtomics<T: AtomicRepresentable>(_ pointer: UnsafeMutablePointer<Atomic<T>>, count: Int) {
        pointer.deinitialize(count: max(count, 1))
        deallocate(UnsafeMutableRawPointer(pointer), byteCount: max(count, 1) * MemoryLayout<Atomic<T>>.stride)
    }

    /// Allocations at least this large (the per-frame arrays of a ``PhysicalMemory``) are mapped
    /// 2 MiB-aligned with transparent huge pages requested, so sweeping them (zap, fault, audit)
    /// costs one TLB entry per 2 MiB instead of per 4 KiB.
    static let hugeThreshold = 2 << 20

    private static func allocate(byteCount: Int) -> UnsafeMutableRawPointer {
        if byteCount >= hugeThreshold {
            let length = (byteCount + hugeThreshold - 1) / hugeThreshold * hugeThreshold
            guard let mapped = cinterop_map_aligned(length, hugeThreshold) else {
                preconditionFailure("out of host memory for \(byteCount) bytes of metadata")
            }
            _ = cinterop_advise_huge_pages(mapped, length)
            return mapped
        }
        return UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: cacheLineSize)
    }

    private static func deallocate(_ pointer: UnsafeMutableRawPointer, byteCount: Int) {
        if byteCount >= hugeThreshold {
            cinterop_unmap(pointer, (byteCount + hugeThreshold - 1) / hugeThreshold * hugeThreshold)
        } else {
            pointer.deallocate()
        }
    }
}
