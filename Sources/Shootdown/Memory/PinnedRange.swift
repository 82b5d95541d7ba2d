import Synchronization

/// Pages pinned for a device (`pin_user_pages(FOLL_LONGTERM)`), created by
/// ``AddressSpace/pin(address:length:write:)``: the frames the range mapped when it was pinned,
/// held by a pin each. While pinned, none of them is moved (migration, collapse), evicted
/// (reclaim, page-out) or freed, and none is shared with a fork (the child gets a copy); unmapping
/// the range still invalidates its mirrors and removes the CPU mappings, but the frames stay
/// allocated until ``unpin()``, and are freed then.
///
/// The device reaches the frames through ``read(at:)`` and ``write(_:at:)`` (DMA), by the
/// addresses they had when pinned. What the CPU sees at those addresses is the same page as long as
/// the mapping stays (writes through the CPU go to the pinned frame: a write fault reuses it rather
/// than copying it); after an unmap or a `dontNeed`, the address maps a new page and the device
/// keeps the old one, as in Linux.
///
/// Ownership and lifetime: independent of the address space (a pin outlives a teardown); the
/// range holds its ``PhysicalMemory``. Dropping the last reference unpins. Thread-safe: device
/// accesses may run on any thread concurrently with each other and with ``unpin()``, which waits
/// for accesses in flight and fails later ones with ``MemoryError/detached``.
public final class PinnedRange: @unchecked Sendable {
    // @unchecked: `frames` is immutable after init; `state` is atomic; the frames' contents and
    // counts are atomics of `memory`.

    /// First pinned address (page-aligned).
    public let address: UInt64
    /// Bytes pinned (whole pages).
    public let length: UInt64
    /// Whether the pin allows device writes (`FOLL_WRITE`).
    public let isWritable: Bool
    /// The memory the frames belong to.
    public let memory: PhysicalMemory

    private let frames: [UInt64]
    /// Bit 63: unpinned. Bits 0–62: device accesses in flight.
    private let state = Atomic<UInt64>(0)
    private static let unpinnedBit: UInt64 = 1 << 63

    init(address: UInt64, frames: [UInt64], writable: Bool, memory: PhysicalMemory) {
        self.address = address
        length = UInt64(frames.count) * AddressSpace.pageSize
        self.frames = frames
        isWritable = writable
        self.memory = memory
    }

    deinit { unpin() }

    /// Number of pinned pages.
    public var pageCount: Int { frames.count }

    /// Whether the pins are still held (``unpin()`` has not run).
    public var isPinned: Bool { state.load(ordering: .acquiring) & Self.unpinnedBit == 0 }

    /// The frame pinned for the page of `address`.
    ///
    /// - Throws: ``MemoryError/invalidArgument`` outside the range; ``MemoryError/detached`` after
    ///   ``unpin()``.
    public func frame(at address: UInt64) throws(MemoryError) -> UInt64 {
        let frame = try frameIndex(address)
        if !isPinned { throw .detached }
        return frames[frame]
    }

    /// A device load (DMA read) of the page at `address`.
    ///
    /// Context: any thread; never sleeps, takes no lock.
    ///
    /// - Throws: ``MemoryError/invalidArgument`` outside the range; ``MemoryError/detached`` after
    ///   ``unpin()``.
    public func read(at address: UInt64) throws(MemoryError) -> UInt64 {
        let index = try frameIndex(address)
        guard beginAccess() else { throw .detached }
        defer { endAccess() }
        return memory.token(of: frames[index])
    }

    /// A device store (DMA write) of `token` as the content of the page at `address`. The CPU
    /// sees it through every mapping of the pinned frame.
    ///
    /// Context: any thread; never sleeps, takes no lock.
    ///
    /// - Throws: ``MemoryError/invalidArgument`` outside the range; ``MemoryError/badAddress`` if
    ///   the range was pinned read-only; ``MemoryError/detached`` after ``unpin()``.
    public func write(_ token: UInt64, at address: UInt64) throws(MemoryError) {
        let index = try frameIndex(address)
        guard isWritable else { throw .badAddress }
        guard beginAccess() else { throw .detached }
        defer { endAccess() }
        memory.storeThroughPin(token, of: frames[index])
    }

    /// Releases every pin (`unpin_user_pages`), after waiting for device accesses in flight; a
    /// frame that is no longer mapped anywhere is freed now. Later device accesses throw
    /// ``MemoryError/detached``. Also runs when the last reference goes away.
    ///
    /// Context: any thread; never sleeps (accesses in flight take a few instructions).
    ///
    /// - Returns: `false` if the range was unpinned already (then it does nothing).
    @discardableResult
    public func unpin() -> Bool {
        // Acquiring and releasing: orders the accesses that ended before against the frees below.
        let old = state.bitwiseOr(Self.unpinnedBit, ordering: .acquiringAndReleasing).oldValue
        if old & Self.unpinnedBit != 0 { return false }
        var backoff = Backoff()
        // Acquiring: pairs with the releasing end of each access still in flight.
        while state.load(ordering: .acquiring) & ~Self.unpinnedBit != 0 { backoff.wait() }
        var chain = FrameChain()
        for frame in frames { memory.releasePin(frame, into: &chain) }
        memory.release(chain)
        return true
    }

    private func frameIndex(_ address: UInt64) throws(MemoryError) -> Int {
        guard address >= self.address, address - self.address < length else { throw .invalidArgument }
        return Int((address - self.address) / AddressSpace.pageSize)
    }

    private func beginAccess() -> Bool {
        var current = state.load(ordering: .relaxed)
        while current & Self.unpinnedBit == 0 {
            // Acquiring: the access happens after the pin is known to be held.
            let result = state.compareExchange(expected: current, desired: current &+ 1, ordering: .acquiring)
            if result.exchanged { return true }
            current = result.original
        }
        return false
    }

    private func endAccess() {
        // Releasing: the access happens before an unpin that sees it ended.
        state.wrappingSubtract(1, ordering: .releasing)
    }
}
