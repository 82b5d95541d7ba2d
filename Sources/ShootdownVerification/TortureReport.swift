import Shootdown

/// One thing the ``TortureHarness`` found wrong, with what reproduces it.
public struct TortureViolation: Sendable, Hashable, Codable, CustomStringConvertible {
    /// The run's seed.
    public var seed: UInt64
    /// The worker thread (its region and random stream), or -1 for an end-of-run check.
    public var thread: Int
    /// The worker's step (1-based operation number) after which the check failed; 0 for
    /// end-of-run checks.
    public var step: Int
    /// The operation that had just returned (`nil` for end-of-run checks).
    public var operation: TortureOperation?
    /// What was wrong.
    public var detail: String

    /// A violation record.
    public init(seed: UInt64, thread: Int, step: Int, operation: TortureOperation?, detail: String) {
        self.seed = seed
        self.thread = thread
        self.step = step
        self.operation = operation
        self.detail = detail
    }

    public var description: String {
        let what = operation.map { "after \($0.rawValue)" } ?? "at the end"
        return "seed \(seed) thread \(thread) step \(step) \(what): \(detail)"
    }
}

/// What a ``TortureHarness`` run did and found.
public struct TortureReport: Sendable, Codable {
    /// The seed.
    public var seed: UInt64
    /// Worker threads.
    public var threads: Int
    /// Operations performed (all kinds).
    public var operations: Int
    /// Wall-clock seconds of the concurrent phase.
    public var seconds: Double
    /// Operations performed, by ``TortureOperation`` raw value.
    public var counts: [String: Int]
    /// Operations that threw (an expected outcome for most: random ranges hit holes, locked VMAs,
    /// guard markers...), by ``TortureOperation`` raw value.
    public var errors: [String: Int]
    /// Oracle checks (one per operation and mirror, plus the end-of-run ones) and the pages they
    /// covered.
    public var checks: Int
    /// Pages compared between the CPU page table and the mirrors.
    public var pagesChecked: Int
    /// Mirror translations the checks compared.
    public var translationsChecked: Int
    /// Every violation found.
    public var violationCount: Int
    /// The first violations (at most ``TortureHarness/maximumRecordedViolations``).
    public var violations: [TortureViolation]
    /// The space's audit after the concurrent phase, before teardown (field name to value).
    public var audit: [String: Int]
    /// The space's nonzero counters after the concurrent phase (``SpaceStatistics``): evidence of
    /// what the run reached (huge faults, collapses, splits, swap-ins, copy-on-write breaks...).
    public var statistics: [String: Int64]
    /// Frames still in use after teardown (must be 0).
    public var framesInUseAfterTeardown: Int
    /// Swap slots still in use after teardown (must be 0).
    public var swapSlotsInUseAfterTeardown: Int
    /// Invalidations the classic subscribers saw (starts; every one had its end).
    public var classicInvalidations: Int
    /// Invalidations the harness's own interval notifiers received.
    public var intervalInvalidations: Int

    /// No violation.
    public var passed: Bool { violationCount == 0 }

    /// Operations performed of `kind`.
    public func count(of kind: TortureOperation) -> Int { counts[kind.rawValue] ?? 0 }

    /// One line per kind, in declaration order: `kind  count  (errors)`.
    public var summaryLines: [String] {
        TortureOperation.allCases.map { kind in
            let name = kind.rawValue.padding(toLength: 18)
            let count = String(count(of: kind)).leftPadded(toLength: 12)
            let errors = errors[kind.rawValue] ?? 0
            return "\(name)\(count)   errors \(errors)"
        }
    }
}

extension String {
    fileprivate func padding(toLength length: Int) -> String {
        count >= length ? self : self + String(repeating: " ", count: length - count)
    }

    fileprivate func leftPadded(toLength length: Int) -> String {
        count >= length ? self : String(repeating: " ", count: length - count) + self
    }
}

extension AddressSpace.Audit {
    /// The fields by name (for reports).
    var fields: [String: Int] {
        [
            "tables": tables, "deadTablesReached": deadTablesReached, "tablesInHoles": tablesInHoles,
            "presentPages": presentPages, "swapEntries": swapEntries, "hugeMappings": hugeMappings,
            "entriesOutsideVMAs": entriesOutsideVMAs, "entriesExceedingProtection": entriesExceedingProtection,
            "vmas": vmas, "unmergedNeighbours": unmergedNeighbours,
        ]
    }

    /// The fields that must be 0, with their values, when nonzero.
    var failures: [(String, Int)] {
        [
            ("deadTablesReached", deadTablesReached), ("tablesInHoles", tablesInHoles),
            ("entriesOutsideVMAs", entriesOutsideVMAs), ("entriesExceedingProtection", entriesExceedingProtection),
            ("unmergedNeighbours", unmergedNeighbours),
        ].filter { $0.1 != 0 }
    }
}
