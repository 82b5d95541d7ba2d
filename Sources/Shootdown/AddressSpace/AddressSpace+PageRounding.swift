extension AddressSpace {
    /// `address` rounded down to the start of its page (`PAGE_ALIGN_DOWN`). Never fails.
    @inlinable
    public static func pageAlignDown(_ address: UInt64) -> UInt64 { address & ~(pageSize - 1) }

    /// `value` rounded up to a multiple of the page size (`PAGE_ALIGN`): an address up to the next
    /// page boundary, or a length up to whole pages.
    ///
    /// - Throws: ``MemoryError/invalidArgument`` if the rounding overflows 64 bits.
    @inlinable
    public static func pageAlignUp(_ value: UInt64) throws(MemoryError) -> UInt64 {
        guard let aligned = pageAlign(value) else { throw .invalidArgument }
        return aligned
    }

    /// The whole pages covering the bytes `[address, address + length)`: the start rounded down,
    /// the end rounded up (what a registration cache does to a user buffer before it pins or
    /// mirrors it, like `ib_umem_get`). The result is page-aligned and can be passed to every range
    /// operation.
    ///
    /// - Throws: ``MemoryError/invalidArgument`` for a zero length, or a range that overflows or
    ///   ends past ``userLimit``.
    public static func pageRange(covering address: UInt64, length: UInt64) throws(MemoryError)
        -> (address: UInt64, length: UInt64)
    {
        let (last, overflow) = address.addingReportingOverflow(length)
        guard length != 0, !overflow, last <= userLimit, let end = pageAlign(last) else { throw .invalidArgument }
        let start = pageAlignDown(address)
        return (start, end - start)
    }
}
