import Shootdown
import Synchronization

/// A classic subscriber (`mmu_notifier` with start/end) that checks the pairing the engine
/// promises: every start is followed by its end, for a well-formed range, and no end comes
/// without a start. Counters only (atomics): it never sleeps, so it accepts non-blockable ranges.
///
/// Ownership: registered by the harness for one run; released by the space's teardown.
final class TorturePairingSubscriber: MMUNotifier, Sendable {
    /// Starts seen.
    let starts = Atomic<Int>(0)
    /// Ends seen.
    let ends = Atomic<Int>(0)
    /// Malformed ranges (unaligned, empty, past the user limit) or ends without a start.
    let malformed = Atomic<Int>(0)
    /// `release` calls.
    let releases = Atomic<Int>(0)

    var callbacks: NotifierCallbacks { [.invalidateRangeStart, .invalidateRangeEnd, .release] }

    /// Context: see ``MMUNotifier/invalidateRangeStart(_:)``; touches atomics only.
    func invalidateRangeStart(_ range: InvalidationRange) -> Bool {
        if range.start >= range.end || !AddressSpace.isPageAligned(range.start) || !AddressSpace.isPageAligned(range.end)
            || range.end > AddressSpace.userLimit
        {
            malformed.wrappingAdd(1, ordering: .relaxed)
        }
        // Sequentially consistent: compared with `ends` at the end of the run, after the joins.
        starts.wrappingAdd(1, ordering: .sequentiallyConsistent)
        return true
    }

    /// Context: as the matching start.
    func invalidateRangeEnd(_ range: InvalidationRange) {
        // Sequentially consistent: an end that overtakes every start is an end without a start.
        let ended = ends.wrappingAdd(1, ordering: .sequentiallyConsistent).newValue
        if ended > starts.load(ordering: .sequentiallyConsistent) { malformed.wrappingAdd(1, ordering: .relaxed) }
    }

    /// Context: teardown or unregistration, no engine lock.
    func release(space: UInt64) { releases.wrappingAdd(1, ordering: .relaxed) }
}

/// A classic subscriber with the secondary-TLB hook only (an IOMMU sharing the CPU tables):
/// counts flushes and checks their ranges. Runs under split locks: atomics only.
final class TortureTLBSubscriber: MMUNotifier, Sendable {
    /// Flushes seen.
    let flushes = Atomic<Int>(0)
    /// Malformed flush ranges.
    let malformed = Atomic<Int>(0)

    var callbacks: NotifierCallbacks { [.invalidateSecondaryTLBs] }

    /// Context: under the split lock of the changed entries; touches atomics only.
    func invalidateSecondaryTLBs(space: UInt64, start: UInt64, end: UInt64) {
        if start >= end || end > AddressSpace.userLimit { malformed.wrappingAdd(1, ordering: .relaxed) }
        flushes.wrappingAdd(1, ordering: .relaxed)
    }
}

/// The handler of the interval notifiers the workers insert and remove: advances the sequence and
/// counts. Holds no translations, so it needs no lock.
final class TortureIntervalHandler: IntervalNotifierHandler, Sendable {
    /// Invalidations received.
    let invalidations = Atomic<Int>(0)

    /// Context: see ``IntervalNotifierHandler/invalidate(_:range:currentSequence:)``; never sleeps.
    func invalidate(_ notifier: IntervalNotifier, range: InvalidationRange, currentSequence: UInt64) -> Bool {
        notifier.setSequence(currentSequence)
        invalidations.wrappingAdd(1, ordering: .relaxed)
        return true
    }
}
