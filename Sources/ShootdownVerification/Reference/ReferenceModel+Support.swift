import Shootdown

extension UInt64 {
    /// Hexadecimal with a `0x` prefix, for messages.
    var hex: String { "0x" + String(self, radix: 16) }
}

/// The page-aligned addresses of `[start, end)` (both page-aligned).
func eachPage(_ start: UInt64, _ end: UInt64) -> StrideTo<UInt64> {
    stride(from: start, to: end, by: Int(AddressSpace.pageSize))
}
