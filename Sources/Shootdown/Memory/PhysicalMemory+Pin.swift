import Synchronization

/// Long-term pins (`pin_user_pages(FOLL_LONGTERM)`): a device (an RDMA adapter) holds a frame for
/// DMA, so the frame must stay where it is and stay allocated whatever happens to the mappings.
///
/// Representation: the kernel's bias trick, made exact. A frame's reference count (bits 0–31 of
/// its counts word) holds ordinary references in bits 0–19 and pins in bits 20–31, so one pin adds
/// ``pinOne`` (2^20) and a frame carries at most ``maxPins`` pins; ordinary references (one per
/// mapping, plus a page cache's) stay below 2^20. Keeping pins inside the same word as the
/// reference and map counts costs nothing where it matters:
/// - every path that moves, evicts or frees a frame already requires the word to be exactly "one
///   reference, one mapping" (``isExclusive(_:)``): a pinned frame fails that test, so reclaim,
///   page-out, migration and collapse leave it alone without a separate check;
/// - unmapping drops one reference and one mapping; a pinned frame's word does not reach zero, so
///   the frame stays allocated until the last pin goes (``releasePin(_:into:)`` frees it then);
/// - a write fault may reuse a pinned frame mapped once (``isExclusiveIgnoringPins(_:)``): it must,
///   or the CPU would copy away from the frame the device uses.
/// Unlike the kernel's bias (1024, with false positives), the split is exact: pins can be counted.
extension PhysicalMemory {
    /// One pin in a frame's counts word.
    @usableFromInline static let pinOne: UInt64 = 1 << 20
    /// The pin field of a counts word.
    @usableFromInline static let pinMask: UInt64 = 0xFFF << 20
    /// The ordinary-reference field of a counts word.
    @usableFromInline static let referenceMask: UInt64 = pinOne - 1
    /// Most pins one frame can carry.
    public static let maxPins = 0xFFF

    /// Whether `frame` is mapped once and referenced by nothing else but pins: a private page a
    /// write fault may reuse in place.
    @inlinable
    func isExclusiveIgnoringPins(_ frame: UInt64) -> Bool {
        frame != Self.zeroFrame && counts[Int(frame)].load(ordering: .acquiring) & ~Self.pinMask == Self.exclusivelyMapped
    }

    /// Whether every reference to `frame` is a page-table mapping: no pin and no page-cache
    /// reference (Linux's `is_refcount_suitable`). A private page a fork shares qualifies.
    @inlinable
    func isReferencedOnlyByMappings(_ frame: UInt64) -> Bool {
        guard frame != Self.zeroFrame else { return false }
        let word = counts[Int(frame)].load(ordering: .acquiring)
        return word & Self.pinMask == 0 && word & Self.referenceMask == word >> 32
    }

    /// Whether `frame` carries a pin.
    @inlinable
    func isPinned(_ frame: UInt64) -> Bool {
        counts[Int(frame)].load(ordering: .relaxed) & Self.pinMask != 0
    }

    /// The number of pins `frame` carries (0 for the zero page and for free frames).
    public func pinCount(_ frame: UInt64) -> Int {
        guard frame > Self.zeroFrame, frame < UInt64(totalFrames) else { return 0 }
        return Int((counts[Int(frame)].load(ordering: .relaxed) & Self.pinMask) >> 20)
    }

    /// Adds a pin to `frame`. Returns `false` if the frame already carries ``maxPins``.
    ///
    /// - Precondition: `frame` is mapped and the caller holds the split lock of an entry mapping
    ///   it (so it cannot be freed meanwhile); not the zero page.
    func takePin(_ frame: UInt64) -> Bool {
        checkInvariant(frame != Self.zeroFrame, "pinning the zero page")
        let word = counts + Int(frame)
        var current = word.pointee.load(ordering: .relaxed)
        while true {
            if current & Self.pinMask == Self.pinMask { return false }
            // Relaxed: the frame is referenced by the entry under the caller's lock; the pin only has
            // to be counted before that entry can go, which the lock orders.
            let result = word.pointee.compareExchange(
                expected: current, desired: current &+ Self.pinOne, ordering: .relaxed)
            if result.exchanged { return true }
            current = result.original
        }
    }

    /// Drops a pin of `frame`; if that was its last reference (it is no longer mapped anywhere),
    /// appends it to `chain` for freeing. Needs no lock: a pin is a reference of its own.
    func releasePin(_ frame: UInt64, into chain: inout FrameChain) {
        // Acquiring and releasing, as every reference drop: the last one frees the frame.
        let remaining = counts[Int(frame)].wrappingSubtract(Self.pinOne, ordering: .acquiringAndReleasing).newValue
        checkInvariant(remaining & Self.pinMask != Self.pinMask, "frame \(frame) pin count underflow")
        if remaining == 0 { chain.append(frame, links: links) }
    }

    /// Stores `token` as the content of a pinned frame (a DMA write).
    ///
    /// - Precondition: the caller holds a pin on `frame`.
    func storeThroughPin(_ token: UInt64, of frame: UInt64) {
        checkInvariant(isPinned(frame), "storing through a pin to an unpinned frame")
        setToken(token, of: frame)
    }
}
