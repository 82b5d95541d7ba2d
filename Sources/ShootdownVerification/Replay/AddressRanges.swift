/// A set of page ranges `[start, end)`, kept sorted, disjoint and coalesced.
public struct AddressRanges: Sendable, Hashable, CustomStringConvertible {
    /// The ranges in address order.
    public private(set) var ranges: [Range<UInt64>] = []

    public init() {}

    public init(_ ranges: [Range<UInt64>]) {
        for range in ranges { insert(range) }
    }

    /// Index of the first range whose end is at or above `address`.
    private func firstIndex(endingAtOrAbove address: UInt64) -> Int {
        var low = 0
        var high = ranges.count
        while low < high {
            let middle = (low + high) / 2
            if ranges[middle].upperBound < address { low = middle + 1 } else { high = middle }
        }
        return low
    }

    /// Adds `range` (merging with ranges it overlaps or touches).
    public mutating func insert(_ range: Range<UInt64>) {
        guard !range.isEmpty else { return }
        let first = firstIndex(endingAtOrAbove: range.lowerBound)
        var last = first
        var lower = range.lowerBound
        var upper = range.upperBound
        while last < ranges.count && ranges[last].lowerBound <= upper {
            lower = min(lower, ranges[last].lowerBound)
            upper = max(upper, ranges[last].upperBound)
            last += 1
        }
        ranges.replaceSubrange(first..<last, with: [lower..<upper])
    }

    /// Removes `range`.
    public mutating func remove(_ range: Range<UInt64>) {
        guard !range.isEmpty else { return }
        let first = firstIndex(endingAtOrAbove: range.lowerBound &+ 1)
        var last = first
        var kept: [Range<UInt64>] = []
        while last < ranges.count && ranges[last].lowerBound < range.upperBound {
            let existing = ranges[last]
            if existing.lowerBound < range.lowerBound { kept.append(existing.lowerBound..<range.lowerBound) }
            if existing.upperBound > range.upperBound { kept.append(range.upperBound..<existing.upperBound) }
            last += 1
        }
        ranges.replaceSubrange(first..<last, with: kept)
    }

    /// Whether every address of `range` is in the set.
    public func contains(_ range: Range<UInt64>) -> Bool {
        if range.isEmpty { return true }
        let index = firstIndex(endingAtOrAbove: range.lowerBound &+ 1)
        return index < ranges.count && ranges[index].lowerBound <= range.lowerBound
            && ranges[index].upperBound >= range.upperBound
    }

    /// The parts of `range` outside the set.
    public func gaps(in range: Range<UInt64>) -> [Range<UInt64>] {
        var result: [Range<UInt64>] = []
        var cursor = range.lowerBound
        var index = firstIndex(endingAtOrAbove: range.lowerBound &+ 1)
        while cursor < range.upperBound {
            guard index < ranges.count, ranges[index].lowerBound < range.upperBound else {
                result.append(cursor..<range.upperBound)
                break
            }
            if ranges[index].lowerBound > cursor { result.append(cursor..<ranges[index].lowerBound) }
            cursor = max(cursor, ranges[index].upperBound)
            index += 1
        }
        return result
    }

    public var description: String {
        ranges.map { String($0.lowerBound, radix: 16) + "-" + String($0.upperBound, radix: 16) }.joined(separator: " ")
    }
}
