extension AddressSpace {
    /// `MAP_*` bits of `mmap(2)` (x86-64 values), as ``map(address:length:protection:rawFlags:)``
    /// takes them.
    public enum RawMapFlag {
        public static let shared: UInt64 = 0x01
        public static let `private`: UInt64 = 0x02
        /// The map type field (`MAP_SHARED`, `MAP_PRIVATE`, `MAP_SHARED_VALIDATE`, `MAP_DROPPABLE`).
        public static let type: UInt64 = 0x0F
        public static let fixed: UInt64 = 0x10
        public static let anonymous: UInt64 = 0x20
        public static let low32Bit: UInt64 = 0x40
        public static let growsDown: UInt64 = 0x100
        public static let locked: UInt64 = 0x2000
        public static let noReserve: UInt64 = 0x4000
        public static let populate: UInt64 = 0x8000
        public static let nonBlock: UInt64 = 0x1_0000
        public static let stack: UInt64 = 0x2_0000
        public static let fixedNoReplace: UInt64 = 0x10_0000
    }

    /// `mmap(addr, length, prot, flags, -1, 0)`, from the raw `MAP_*` bits as the syscall takes
    /// them. Without `MAP_ANONYMOUS` the call names file descriptor -1: `EBADF` before any other
    /// check, as Linux looks the descriptor up first (file mappings are made with
    /// ``map(file:offset:length:protection:placement:options:access:)``). With it, decodes the bits into
    /// ``map(length:protection:placement:options:)``, whose rules and order apply, as Linux 6.18
    /// does (measured):
    /// - the type: `MAP_SHARED` or `MAP_PRIVATE`; any other (0, `MAP_SHARED_VALIDATE`, 4–15) is
    ///   `EINVAL` after placement and the lock checks (so `EEXIST`, `EPERM` and `EAGAIN` come
    ///   first) and before anything changes, even under `MAP_FIXED`. `MAP_DROPPABLE` (8) is not
    ///   modelled and is refused the same way, where Linux maps it.
    /// - `MAP_FIXED_NOREPLACE` over `MAP_FIXED`, then `MAP_FIXED`, else `addr` is a hint (0: none);
    /// - `MAP_POPULATE` populates unless `MAP_NONBLOCK` is set too (a locked mapping populates
    ///   anyway); `MAP_LOCKED`, `MAP_NORESERVE`, `MAP_GROWSDOWN` as their options;
    /// - `MAP_STACK` sets `nh` (``MapOptions/noHugePage``); `MAP_32BIT` places non-fixed mappings
    ///   in the low 2 GiB (``MapOptions/below2GiB``);
    /// - every other bit is ignored, as Linux ignores the legacy `MAP_DENYWRITE`,
    ///   `MAP_EXECUTABLE`, `MAP_UNINITIALIZED` and unknown bits for these types. `MAP_HUGETLB` and
    ///   `MAP_SYNC` are not modelled: callers comparing with Linux must refuse them themselves.
    ///
    /// - Returns: the start address of the mapping.
    @discardableResult
    public func map(address: UInt64, length: UInt64, protection: Protection, rawFlags: UInt64) throws(MemoryError)
        -> UInt64
    {
        typealias Flag = RawMapFlag
        guard rawFlags & Flag.anonymous != 0 else { throw .badFileDescriptor }
        let type = rawFlags & Flag.type
        var options: MapOptions = type == Flag.shared ? .shared : []
        if rawFlags & Flag.populate != 0 && rawFlags & Flag.nonBlock == 0 { options.insert(.populate) }
        if rawFlags & Flag.locked != 0 { options.insert(.locked) }
        if rawFlags & Flag.noReserve != 0 { options.insert(.noReserve) }
        if rawFlags & Flag.growsDown != 0 { options.insert(.growsDown) }
        if rawFlags & Flag.stack != 0 { options.insert(.noHugePage) }
        if rawFlags & Flag.low32Bit != 0 { options.insert(.below2GiB) }
        let placement: Placement =
            if rawFlags & Flag.fixedNoReplace != 0 {
                .fixedNoReplace(address)
            } else if rawFlags & Flag.fixed != 0 {
                .fixed(address)
            } else if address == 0 {
                .anywhere
            } else {
                .hint(address)
            }
        return try mapArea(
            length: length, protection: protection, placement: placement, options: options, file: nil,
            invalidType: type != Flag.shared && type != Flag.private)
    }
}
