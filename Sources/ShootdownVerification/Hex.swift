/// `0x…` hex, as reproducers and reports print addresses.
func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }

/// `0x…` or `-0x…`.
func signedHex(_ value: Int64) -> String {
    value < 0 ? "-0x" + String(value.magnitude, radix: 16) : "0x" + String(value, radix: 16)
}
