/// The fuzzer's bytes, read front to back as the decisions of one run. Every read is of a fixed
/// width and an exhausted input reads as zeros, so a given input always decodes to the same
/// operations (the corpus stays meaningful as long as this decoding does not change).
struct FuzzInput {
    let bytes: UnsafeBufferPointer<UInt8>
    var position = 0

    init(_ bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    var isExhausted: Bool { position >= bytes.count }

    mutating func byte() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }

    /// Two bytes, little-endian.
    mutating func u16() -> UInt64 { UInt64(byte()) | UInt64(byte()) << 8 }

    /// Eight bytes, little-endian.
    mutating func u64() -> UInt64 {
        var value: UInt64 = 0
        for shift in stride(from: 0, to: 64, by: 8) { value |= UInt64(byte()) << UInt64(shift) }
        return value
    }

    /// A value in `0..<bound` (one byte when the bound fits in one, else two).
    mutating func below(_ bound: UInt64) -> UInt64 {
        guard bound > 1 else { return 0 }
        return (bound <= 256 ? UInt64(byte()) : u16()) % bound
    }

    mutating func index(below count: Int) -> Int { Int(below(UInt64(count))) }

    mutating func pick<T>(_ choices: [T]) -> T { choices[index(below: choices.count)] }

    /// True with `percent` % probability over the byte's values.
    mutating func chance(_ percent: UInt64) -> Bool { UInt64(byte()) % 100 < percent }
}

extension UInt64 {
    /// `0x…`, for messages.
    var hex: String { "0x" + String(self, radix: 16) }
}
