import Shootdown

// Hot loops of the benchmarks: free functions, never in main.swift, taking their state as
// parameters (swift-on-linux.md pitfall P1), so what is timed is the engine, not the harness.

/// Write-faults `count` pages starting at `base`.
@inline(never)
func faultPages(_ space: AddressSpace, _ base: UInt64, _ count: Int, access: AddressSpace.Access = .write) throws {
    var address = base
    for _ in 0..<count {
        try space.fault(at: address, access: access)
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
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        let address = base &+ (state % UInt64(slots)) &* stride
        space._invalidateWithoutChange(start: address, end: address &+ 4096, event: .clear)
    }
}

/// ``invalidatePairs(_:_:base:stride:slots:state:)`` from a fixed seed.
func invalidatePairs(_ space: AddressSpace, _ count: Int, base: UInt64, stride: UInt64, slots: Int) {
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    invalidatePairs(space, count, base: base, stride: stride, slots: slots, state: &state)
}

/// The same loop without the notifier call: what "no notifier code at all" costs.
@inline(never)
func emptyPairs(_ count: Int, base: UInt64, stride: UInt64, slots: Int) -> UInt64 {
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    var sink: UInt64 = 0
    for _ in 0..<count {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        sink &+= opaqueIdentity(base &+ (state % UInt64(slots)) &* stride)
    }
    return sink
}

@inline(never)
func opaqueIdentity(_ value: UInt64) -> UInt64 { value }

/// `count` lock-free VMA lookups of pseudo-random addresses among `slots` mappings.
@inline(never)
func lookupMappings(_ space: AddressSpace, _ count: Int, base: UInt64, stride: UInt64, slots: Int) -> Int {
    var state: UInt64 = 0x2545_F491_4F6C_DD1D
    var found = 0
    for _ in 0..<count {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        let address = base &+ (state % UInt64(slots)) &* stride &+ 100
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
