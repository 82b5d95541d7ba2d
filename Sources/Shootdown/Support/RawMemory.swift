import Synchronization

/// Cache-line size used to pad per-thread and per-lock data so two writers never share a line.
@usableFromInline let cacheLineSize = 64

/// Raw, aligned allocations that hold atomics.
///
/// Everything allocated here is owned by exactly one object, which frees it in `deinit`; the
/// pointers are never handed out beyond the handle types of that object.
@usableFromInline
enum RawMemory {
    /// Allocates `count` atomics of `T`, each initialised to `initial`, aligned to a cache line.
    @usableFromInline
    static func allocateAtomics<T: AtomicRepresentable>(
        _: T.Type, count: Int, initial: T
    ) -> UnsafeMutablePointer<Atomic<T>> {
        let capacity = max(count, 1)
        let raw = UnsafeMutableRawPointer.allocate(
            byteCount: capacity * MemoryLayout<Atomic<T>>.stride, alignment: cacheLineSize)
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
        UnsafeMutableRawPointer(pointer).deallocate()
    }
}
