@_spi(Benchmarking) import Shootdown
import Synchronization

// Hot loops of the benchmarks: free functions, never in main.swift, taking their state as
// parameters (docs/swift-notes.md, "Hot loops"), so what is timed is the engine, not the harness.

/// One xorshift64 step (13, 7, 17): advances `state` and returns it. The pseudo-random stream of
/// every benchmark loop and of the torture run.
@inline(__always)
func xorshift(_ state: inout UInt64) -> UInt64 {
    state ^= state << 13
    state ^= state >> 7
    state ^= state << 17
    return state
}

/// Write-faults `count` pages starting at `base`.
@inline(never)
func faultPages(_ space: AddressSpace, _ base: UInt64, _ count: Int) throws {
    var address = base
    for _ in 0..<count {
        try space.fault(at: address, access: .write)
        address &+= 4096
    }
}

/// Write-faults `count` pages, timing every `sampleEvery`-th fault individually.
@inline(never)
func faultPagesSampled(
    _ space: AddressSpace, _ base: UInt64, _ count: Int, sampleEvery: Int, into latency: inout LatencyRecorder
) throws {
    var address = base
    for index in 0..<count {
        if index % sampleEvery == 0 {
            let start = nowNanoseconds()
            try space.fault(at: address, access: .write)
            latency.record(nowNanoseconds() - start)
        } else {
            try space.fault(at: address, access: .write)
        }
        address &+= 4096
    }
}

/// `count` invalidation start/end pairs over 4 KiB ranges at pseudo-random slots (xorshift from
/// `state`, which carries over between calls).
@inline(never)
func invalidatePairs(
    _ space: AddressSpace, _ count: Int, base: UInt64, stride: UInt64, slots: Int, state: inout UInt64
) {
    for _ in 0..<count {
        let address = base &+ (xorshift(&state) % UInt64(slots)) &* stride
        space._invalidateWithoutChange(start: address, end: address &+ 4096, event: .clear)
    }
}

/// The seed of the invalidation address stream.
let invalidationSeed: UInt64 = 0x9E37_79B9_7F4A_7C15

/// ``invalidatePairs(_:_:base:stride:slots:state:)`` from ``invalidationSeed``.
func invalidatePairs(_ space: AddressSpace, _ count: Int, base: UInt64, stride: UInt64, slots: Int) {
    var state = invalidationSeed
    invalidatePairs(space, count, base: base, stride: stride, slots: slots, state: &state)
}

/// The same loop without the notifier call: what "no notifier code at all" costs.
@inline(never)
func emptyPairs(_ count: Int, base: UInt64, stride: UInt64, slots: Int) -> UInt64 {
    var state = invalidationSeed
    var sink: UInt64 = 0
    for _ in 0..<count {
        sink &+= opaqueIdentity(base &+ (xorshift(&state) % UInt64(slots)) &* stride)
    }
    return sink
}

@inline(never)
func opaqueIdentity(_ value: UInt64) -> UInt64 { value }

/// The seed of the VMA lookup address stream.
let lookupSeed: UInt64 = 0x2545_F491_4F6C_DD1D

/// The next address of the VMA lookup stream: inside one of `slots` mappings `stride` apart from
/// `base` (100 bytes into its first page).
@inline(__always)
func nextLookupAddress(_ state: inout UInt64, base: UInt64, stride: UInt64, slots: Int) -> UInt64 {
    base &+ (xorshift(&state) % UInt64(slots)) &* stride &+ 100
}

/// `count` lock-free VMA lookups of pseudo-random addresses among `slots` mappings (the stream of
/// ``nextLookupAddress(_:base:stride:slots:)`` from ``lookupSeed``); returns how many were found.
@inline(never)
func lookupMappings(_ space: AddressSpace, _ count: Int, base: UInt64, stride: UInt64, slots: Int) -> Int {
    var state = lookupSeed
    var found = 0
    for _ in 0..<count {
        let address = nextLookupAddress(&state, base: base, stride: stride, slots: slots)
        if space.mapping(containing: address) != nil { found &+= 1 }
    }
    return found
}

/// Writes a token to `count` pages (copy-on-write or soft-dirty re-arm faults as needed).
@inline(never)
func writePages(_ space: AddressSpace, _ base: UInt64, _ count: Int, token: UInt64) throws {
    var address = base
    for index in 0..<count {
        try space.write(token &+ UInt64(index), at: address)
        address &+= 4096
    }
}

/// `count` loads from a working set of `pages` pages at `base`, one page after another (wrapping);
/// returns the sum of the tokens read.
@inline(never)
func readSequential(_ space: AddressSpace, _ base: UInt64, pages: Int, _ count: Int) throws -> UInt64 {
    var sum: UInt64 = 0
    var page = 0
    for _ in 0..<count {
        sum &+= try space.read(at: base &+ UInt64(truncatingIfNeeded: page) &<< 12)
        page &+= 1
        if page == pages { page = 0 }
    }
    return sum
}

/// `count` stores to a working set of `pages` pages at `base`, one page after another (wrapping).
@inline(never)
func writeSequential(_ space: AddressSpace, _ base: UInt64, pages: Int, _ count: Int) throws {
    var page = 0
    for index in 0..<count {
        try space.write(UInt64(truncatingIfNeeded: index), at: base &+ UInt64(truncatingIfNeeded: page) &<< 12)
        page &+= 1
        if page == pages { page = 0 }
    }
}

/// A pseudo-random page of `pages` (xorshift, reduced by multiply-shift: no division).
@inline(__always)
func randomPage(_ state: inout UInt64, pages: Int) -> UInt64 {
    ((xorshift(&state) &>> 32) &* UInt64(truncatingIfNeeded: pages)) &>> 32
}

/// `count` loads from pseudo-random pages of a working set of `pages` pages at `base`.
@inline(never)
func readRandom(_ space: AddressSpace, _ base: UInt64, pages: Int, _ count: Int, state: inout UInt64) throws -> UInt64 {
    var sum: UInt64 = 0
    for _ in 0..<count {
        sum &+= try space.read(at: base &+ randomPage(&state, pages: pages) &<< 12)
    }
    return sum
}

/// `count` stores to pseudo-random pages of a working set of `pages` pages at `base`.
@inline(never)
func writeRandom(_ space: AddressSpace, _ base: UInt64, pages: Int, _ count: Int, state: inout UInt64) throws {
    for index in 0..<count {
        try space.write(UInt64(truncatingIfNeeded: index), at: base &+ randomPage(&state, pages: pages) &<< 12)
    }
}

/// Loads from pseudo-random pages of `pages` pages at `base` until `stop` is set (a thread that
/// holds TLB entries for the space and is inside an access most of the time); returns the loads.
@inline(never)
func readUntilStopped(_ space: AddressSpace, _ base: UInt64, pages: Int, stop: borrowing Atomic<Bool>) -> Int {
    var state: UInt64 = 0x5DEE_CE66_D1CE_4E5B
    var loads = 0
    while !stop.load(ordering: .relaxed) {
        for _ in 0..<64 {
            _ = try? space.read(at: base &+ randomPage(&state, pages: pages) &<< 12)
        }
        loads &+= 64
    }
    return loads
}
