/// Delta debugging (Zeller's ddmin) over lists: the shortest sublist found that still has a
/// property, within a budget of tests.
public enum Shrinker {
    /// Shrinks `list`, which must have the property. `test(candidate)` checks a candidate sublist
    /// and returns the list to continue from when it has the property (the candidate, or a prefix
    /// of it: a replay stops at the first divergence), nil when not. At most `budget` tests run;
    /// with enough budget the result is 1-minimal (removing any one element loses the property).
    ///
    /// Order of attempts: the last element alone and short tails first (a divergence often needs
    /// only the operation that shows it and a few before), then ddmin: remove chunks of size
    /// n/k, k doubling while nothing can be removed, down to single elements.
    public static func minimize<Element, Failure: Error>(
        _ list: [Element], budget: Int, test: ([Element]) throws(Failure) -> [Element]?
    ) throws(Failure) -> [Element] {
        var best = list
        var remaining = budget
        func attempt(_ candidate: [Element]) throws(Failure) -> Bool {
            guard remaining > 0, !candidate.isEmpty, candidate.count < best.count else { return false }
            remaining -= 1
            guard let kept = try test(candidate) else { return false }
            best = kept
            return true
        }
        for tail in [1, 2, 4] where tail < best.count {
            if try attempt(Array(best.suffix(tail))) { break }
        }
        var parts = 2
        while best.count >= 2 && remaining > 0 {
            let chunk = (best.count + parts - 1) / parts
            var reduced = false
            var start = 0
            while start < best.count {
                var candidate = best
                candidate.removeSubrange(start..<min(best.count, start + chunk))
                if try attempt(candidate) {
                    reduced = true
                    break
                }
                start += chunk
            }
            if reduced {
                parts = max(parts - 1, 2)
            } else {
                if chunk == 1 { break }
                parts = min(best.count, parts * 2)
            }
        }
        return best
    }
}
