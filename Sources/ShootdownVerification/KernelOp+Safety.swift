extension KernelOp {
    /// Why running this operation could change one of the child's initial mappings (its code, C
    /// library, stack, fillers), or nil if it cannot. The oracle refuses unsafe operations, and the
    /// generator never makes them; the check depends only on the operation and the layout, so every
    /// subsequence of safe operations (what the shrinker replays) is safe.
    ///
    /// A syscall may act on `[start, start + PAGE_ALIGN(length))` (for mlock-style calls the start
    /// is rounded down and the offset added to the length). When that sum wraps past 2^64 every one
    /// of these syscalls fails before changing anything, except that the rounded length itself may
    /// wrap to a small value: that small range is checked too. Non-fixed mmap and mremap moves
    /// only ever use free space; brk only moves the heap, which the child no longer uses.
    public func unsafeReason(in layout: OracleLayout) -> String? {
        func check(_ address: KernelAddress, _ length: UInt64, roundDown: Bool = false) -> String? {
            var start = address.resolved(in: layout)
            var length = length
            if roundDown {
                length = length &+ (start & (LinuxABI.pageSize - 1))
                start &= ~(LinuxABI.pageSize - 1)
            }
            let (aligned, alignWrapped) = length.addingReportingOverflow(LinuxABI.pageSize - 1)
            let rounded = aligned & ~(LinuxABI.pageSize - 1)
            let (end, endWrapped) = start.addingReportingOverflow(rounded)
            if !alignWrapped && !endWrapped && rounded != 0 && layout.overlapsInitial(start: start, end: end) {
                return "[\(hex(start)), \(hex(end))) overlaps an initial mapping"
            }
            if alignWrapped && rounded != 0 {
                let (small, wrapped) = start.addingReportingOverflow(rounded)
                if !wrapped && layout.overlapsInitial(start: start, end: small) {
                    return "wrapped range [\(hex(start)), \(hex(small))) overlaps an initial mapping"
                }
            }
            return nil
        }
        switch self {
        case .mmap(let address, let length, _, let flags):
            let fixed = flags & LinuxABI.mapFixed != 0 && flags & LinuxABI.mapFixedNoReplace == 0
            return fixed ? check(address, length) : nil
        case .munmap(let address, let length), .mprotect(let address, let length, _),
            .madvise(let address, let length, _), .msync(let address, let length, _),
            .mseal(let address, let length, _):
            return check(address, length)
        case .mlock(let address, let length), .mlock2(let address, let length, _), .munlock(let address, let length):
            return check(address, length, roundDown: true)
        case .mremap(let address, let oldLength, let newLength, let flags, let newAddress):
            if let reason = check(address, max(oldLength, 1)) { return reason }
            if flags & LinuxABI.mremapFixed != 0, let reason = check(newAddress, newLength) { return reason }
            return nil
        case .write(let address, _):
            let start = address.resolved(in: layout)
            return layout.overlapsInitial(start: start, end: start &+ 8) ? "store into an initial mapping" : nil
        case .read(let address):
            // Harmless, but the engine has no contents for the child's own memory.
            let start = address.resolved(in: layout)
            return layout.overlapsInitial(start: start, end: start &+ 8) ? "load from an initial mapping" : nil
        case .mlockall, .munlockall, .brk, .mincore, .fork, .switchProcess:
            return nil
        }
    }
}
