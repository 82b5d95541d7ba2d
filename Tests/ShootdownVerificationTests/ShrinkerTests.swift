import Testing
@testable import ShootdownVerification

@Suite struct ShrinkerTests {
    /// The property: `needles` appear in this order (anything else may be removed).
    static func hasInOrder(_ list: [Int], _ needles: [Int]) -> Bool {
        var index = needles.startIndex
        for value in list where index < needles.endIndex && value == needles[index] { index += 1 }
        return index == needles.endIndex
    }

    @Test(arguments: [[57], [3, 41, 90], [0, 99], [12, 13, 14, 15]])
    func findsTheMinimalSublist(_ needles: [Int]) {
        let list = Array(0..<100)
        var tests = 0
        let result = Shrinker.minimize(list, budget: 10_000) { (candidate: [Int]) -> [Int]? in
            tests += 1
            return Self.hasInOrder(candidate, needles) ? candidate : nil
        }
        #expect(result == needles)
        #expect(tests < 1_000)
    }

    @Test func resultIsOneMinimal() {
        // A property that needs any two of the multiples of 10.
        let list = Array(0..<60)
        let property: ([Int]) -> Bool = { $0.filter { $0 % 10 == 0 }.count >= 2 }
        let result = Shrinker.minimize(list, budget: 10_000) { property($0) ? $0 : nil }
        #expect(result.count == 2 && property(result))
        for index in result.indices {
            var smaller = result
            smaller.remove(at: index)
            #expect(!property(smaller))
        }
    }

    @Test func respectsTheBudget() {
        var tests = 0
        let list = Array(0..<1000)
        let result = Shrinker.minimize(list, budget: 7) { (candidate: [Int]) -> [Int]? in
            tests += 1
            return candidate.contains(500) && candidate.contains(501) ? candidate : nil
        }
        #expect(tests <= 7)
        #expect(result.contains(500) && result.contains(501))
    }

    @Test func continuesFromTheReturnedPrefix() {
        // A replay stops at the first divergence: the test returns the prefix up to it.
        let list = Array(0..<50)
        let result = Shrinker.minimize(list, budget: 10_000) { (candidate: [Int]) -> [Int]? in
            guard let end = candidate.firstIndex(of: 30), candidate.contains(7) else { return nil }
            return Array(candidate.prefix(through: end))
        }
        #expect(result == [7, 30])
    }

    @Test func propagatesTypedErrors() {
        struct Stop: Error {}
        #expect(throws: Stop.self) {
            _ = try Shrinker.minimize([1, 2, 3], budget: 10) { (_: [Int]) throws(Stop) -> [Int]? in throw Stop() }
        }
    }
}
