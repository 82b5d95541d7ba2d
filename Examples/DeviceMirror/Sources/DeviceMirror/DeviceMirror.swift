import Shootdown
import Synchronization

/// Why a device access failed.
public enum DeviceError: Error, Hashable, Sendable {
    /// ``DeviceMirror/detach()`` ran.
    case detached
    /// The address space was torn down (or released).
    case spaceGone
    /// The address lies outside the mirrored interval.
    case outsideInterval
    /// The device fault could not be resolved: ``MemoryError/badAddress`` when the page is not
    /// mapped with the access (the GPU would raise a page-fault error to its context), or another
    /// error of the space.
    case fault(MemoryError)
    /// The engine found the device translation stale (the CPU page table no longer maps its frame).
    /// A coherent mirror never sees this: it would mean an invalidation was missed.
    case staleTranslation(UInt64)
}

/// What a device mirror has done.
public struct DeviceStatistics: Hashable, Sendable {
    /// Device page faults (a load or store that found no usable translation).
    public var faults = 0
    /// Translations installed by faults, prefetched neighbours included.
    public var pagesMapped = 0
    /// Invalidations that reached the mirror.
    public var invalidations = 0
    /// Translations removed by invalidations.
    public var pagesUnmapped = 0
    /// Translations made read-only by invalidations that only take write access away.
    public var pagesDowngraded = 0
    /// Snapshots taken again after a collision with an invalidation.
    public var retries = 0
}

/// A device page table — what a GPU driver keeps for a process it shares memory with — fed by
/// device faults and kept coherent by an interval notifier.
///
/// The device reaches memory only through its own table (``load(at:)``, ``store(_:at:)``). A
/// miss is a device fault: the mirror faults the CPU side in and snapshots it with
/// ``AddressSpace/mirror(address:length:write:notifier:retryLimit:commit:)`` over an aligned window
/// of `prefetch` pages around the address (clipped to the interval and to the mapping, so one fault
/// maps its neighbours too), and installs the translations under its lock after checking for a
/// collision. Invalidations remove the translations they cover, or make them read-only when the
/// change only takes write access away (mprotect to read-only, fork's write-protection,
/// soft-dirty).
///
/// The table has two levels like a real one: a dictionary of 2 MiB blocks, each an array of 512
/// entries (frame number and a writable bit). Each device access runs under the mirror's lock and
/// goes through ``AddressSpace/deviceRead(at:frame:)`` / ``AddressSpace/deviceWrite(_:at:frame:)``,
/// which check the translation against the CPU page table: a stale one would surface as
/// ``DeviceError/staleTranslation(_:)``.
///
/// Ownership: the space holds the mirror (its interval handler) until ``detach()`` or the space's
/// teardown; the mirror holds the space weakly. Thread-safe; nothing may be called from a notifier
/// callback.
public final class DeviceMirror: IntervalNotifierHandler, @unchecked Sendable {
    // @unchecked: `notifier` is written once in `init`, before the mirror is shared; the table is
    // behind `state`'s lock.

    /// The mirrored space, while it lives.
    public weak let space: AddressSpace?
    /// First mirrored address.
    public let start: UInt64
    /// End of the mirrored interval (exclusive).
    public let end: UInt64
    /// Pages a device fault maps at once (an aligned window around the faulting page).
    public let prefetch: Int

    private struct Table {
        /// 2 MiB block index → 512 entries: `frame << 2 | writable << 1 | present`, 0 for none (frame 0,
        /// the shared zero page, is a valid read-only translation).
        var blocks: [UInt64: [UInt64]] = [:]
        var count = 0
        var statistics = DeviceStatistics()
        var detached = false
        var released = false

        func entry(_ page: UInt64) -> (frame: UInt64, writable: Bool)? {
            guard let block = blocks[page >> 21] else { return nil }
            let raw = block[Int((page >> 12) & 511)]
            return raw == 0 ? nil : (raw >> 2, raw & 2 != 0)
        }

        mutating func set(_ page: UInt64, frame: UInt64, writable: Bool) {
            let slot = Int((page >> 12) & 511)
            let raw = frame << 2 | (writable ? 2 : 0) | 1
            let old = blocks[page >> 21, default: Array(repeating: 0, count: 512)][slot]
            blocks[page >> 21, default: Array(repeating: 0, count: 512)][slot] = raw
            if old == 0 { count += 1 }
        }

        /// Removes or downgrades the entries of `[low, high)`.
        mutating func invalidate(_ low: UInt64, _ high: UInt64, downgrade: Bool) {
            var page = low
            while page < high {
                let key = page >> 21
                let blockEnd = min((key + 1) << 21, high)
                if var block = blocks.removeValue(forKey: key) {
                    var live = 0
                    for slot in Int((page >> 12) & 511)..<Int(((blockEnd - 1) >> 12) & 511) + 1 where block[slot] != 0 {
                        if downgrade {
                            if block[slot] & 2 != 0 { statistics.pagesDowngraded += 1 }
                            block[slot] &= ~2
                        } else {
                            block[slot] = 0
                            count -= 1
                            statistics.pagesUnmapped += 1
                        }
                    }
                    live = block.reduce(0) { $0 + ($1 != 0 ? 1 : 0) }
                    if live > 0 { blocks[key] = block }
                }
                page = blockEnd
            }
        }
    }

    private let state = Mutex(Table())
    private var notifier: IntervalNotifier!

    /// Mirrors `[start, start + length)` of `space` (nothing is mapped until the device faults).
    ///
    /// - Throws: ``MemoryError/invalidArgument`` for an unaligned or empty interval;
    ///   ``MemoryError/addressSpaceDead``.
    public init(space: AddressSpace, start: UInt64, length: UInt64, prefetch: Int = 16) throws(MemoryError) {
        guard prefetch > 0, prefetch <= 512, prefetch & (prefetch - 1) == 0 else { throw .invalidArgument }
        self.space = space
        self.start = start
        self.end = start &+ length
        self.prefetch = prefetch
        notifier = try space.insertIntervalNotifier(start: start, length: length, handler: self)
    }

    /// Stops mirroring: empties the table, refuses later accesses (``DeviceError/detached``) and
    /// removes the interval notifier. Idempotent. May sleep; not from a notifier callback.
    public func detach() {
        let first = state.withLock { table -> Bool in
            defer {
                table.detached = true
                table.blocks.removeAll()
                table.count = 0
            }
            return !table.detached
        }
        if first { notifier.remove() }
    }

    // MARK: Device side

    /// A device load of the page at `address`: through the table, after a device fault if needed.
    public func load(at address: UInt64) throws(DeviceError) -> UInt64 {
        let page = try pageOf(address)
        while true {
            let space = try attachedSpace()
            let value = try state.withLock { table throws(DeviceError) -> UInt64? in
                if table.detached { throw .detached }
                guard let entry = table.entry(page) else { return nil }
                return try Self.checked(page) { () throws(MemoryError) in
                    try space.deviceRead(at: page, frame: entry.frame)
                }
            }
            if let value { return value }
            try deviceFault(page, write: false)
        }
    }

    /// A device store of `token` to the page at `address`: through a writable translation, after
    /// a device write fault if needed (which breaks copy-on-write on the CPU side).
    public func store(_ token: UInt64, at address: UInt64) throws(DeviceError) {
        let page = try pageOf(address)
        while true {
            let space = try attachedSpace()
            let stored = try state.withLock { table throws(DeviceError) -> Bool in
                if table.detached { throw .detached }
                guard let entry = table.entry(page), entry.writable else { return false }
                try Self.checked(page) { () throws(MemoryError) in
                    try space.deviceWrite(token, at: page, frame: entry.frame)
                }
                return true
            }
            if stored { return }
            try deviceFault(page, write: true)
        }
    }

    /// Resolves a device fault at `page`: mirrors the prefetch window around it (the page alone if
    /// the window cannot be mirrored with the access).
    private func deviceFault(_ page: UInt64, write: Bool) throws(DeviceError) {
        let space = try attachedSpace()
        state.withLock { $0.statistics.faults += 1 }
        let window = UInt64(prefetch) * AddressSpace.pageSize
        var low = max(page & ~(window - 1), start)
        var high = min((page & ~(window - 1)) + window, end)
        if let mapping = space.mapping(containing: page) {
            low = max(low, mapping.start)
            high = min(high, mapping.end)
        }
        do {
            try mirror(space, low, high, write: write)
        } catch .fault(.badAddress) where high - low > AddressSpace.pageSize {
            try mirror(space, page, page + AddressSpace.pageSize, write: write)
        }
    }

    /// The collision-retry protocol over `[low, high)`, committing under the table's lock.
    private func mirror(_ space: AddressSpace, _ low: UInt64, _ high: UInt64, write: Bool) throws(DeviceError) {
        let notifier = self.notifier!
        let outcome: MirrorOutcome
        do {
            outcome = try space.mirror(address: low, length: high - low, write: write, notifier: notifier) { pages, sequence in
                state.withLock { table -> MirrorCommit in
                    if table.detached || table.released { return .abort }
                    if notifier.readRetry(sequence) { return .retry }
                    for page in pages { table.set(page.address, frame: page.frame, writable: page.writable) }
                    table.statistics.pagesMapped += pages.count
                    return .committed
                }
            }
        } catch .addressSpaceDead {
            throw .spaceGone
        } catch .detached {
            throw .detached
        } catch {
            throw .fault(error)
        }
        state.withLock { $0.statistics.retries += outcome.retries }
        if case .aborted = outcome {
            throw state.withLock { $0.detached } ? .detached : .spaceGone
        }
    }

    private static func checked<R>(_ page: UInt64, _ access: () throws(MemoryError) -> R) throws(DeviceError) -> R {
        do {
            return try access()
        } catch .badAddress {
            throw .staleTranslation(page)
        } catch .addressSpaceDead {
            throw .spaceGone
        } catch {
            throw .fault(error)
        }
    }

    private func pageOf(_ address: UInt64) throws(DeviceError) -> UInt64 {
        guard address >= start, address < end else { throw .outsideInterval }
        return AddressSpace.pageAlignDown(address)
    }

    private func attachedSpace() throws(DeviceError) -> AddressSpace {
        if state.withLock({ $0.detached }) { throw .detached }
        guard let space, !space.isTornDown else { throw .spaceGone }
        return space
    }

    // MARK: Invalidations

    /// Removes (or downgrades) the translations `range` covers, under the table's lock (a sleeping
    /// lock: allowed for blockable ranges; a non-blockable one is refused if the lock is busy).
    public func invalidate(_ notifier: IntervalNotifier, range: InvalidationRange, currentSequence: UInt64) -> Bool {
        let apply = { (table: inout Table) in
            notifier.setSequence(currentSequence)
            table.statistics.invalidations += 1
            if range.event == .release { table.released = true }
            let low = max(range.start, self.start)
            let high = min(range.end, self.end)
            if low < high { table.invalidate(low, high, downgrade: range.onlyDowngradesToReadOnly) }
        }
        if range.isBlockable {
            state.withLock { apply(&$0) }
            return true
        }
        return state.withLockIfAvailable { apply(&$0) } != nil
    }

    // MARK: Introspection

    /// The device translation of `address`'s page, if any.
    public func translation(for address: UInt64) -> (frame: UInt64, writable: Bool)? {
        state.withLock { $0.entry(AddressSpace.pageAlignDown(address)) }
    }

    /// Translations held.
    public var count: Int { state.withLock { $0.count } }

    /// A snapshot of the statistics.
    public var statistics: DeviceStatistics { state.withLock { $0.statistics } }

    /// The translations intersecting `[low, high)`, as (page, writable). Takes only the mirror's
    /// lock, so a classic notifier's blockable start callback may call it.
    public func translations(intersecting low: UInt64, _ high: UInt64) -> [(page: UInt64, writable: Bool)] {
        state.withLock { table in
            var result: [(page: UInt64, writable: Bool)] = []
            for (key, block) in table.blocks {
                for slot in 0..<512 where block[slot] != 0 {
                    let page = key << 21 | UInt64(slot) << 12
                    if page >= low && page < high { result.append((page, block[slot] & 2 != 0)) }
                }
            }
            return result
        }
    }

    /// Checks every translation against the CPU page table: the CPU maps the same frame there,
    /// present, and writable if the device's translation is. One line per problem. Meaningful when
    /// nothing changes the space concurrently.
    public func audit() -> [String] {
        guard let space else { return [] }
        return state.withLock { table in
            var problems: [String] = []
            var counted = 0
            for (key, block) in table.blocks {
                for slot in 0..<512 where block[slot] != 0 {
                    counted += 1
                    let page = key << 21 | UInt64(slot) << 12
                    let frame = block[slot] >> 2
                    let writable = block[slot] & 2 != 0
                    guard let cpu = space.translate(page), cpu.isPresent, cpu.frame == frame else {
                        problems.append("0x\(String(page, radix: 16)): device frame \(frame), CPU \(space.translate(page).map { "\($0)" } ?? "none")")
                        continue
                    }
                    if writable && !cpu.isWritable { problems.append("0x\(String(page, radix: 16)): writable on the device only") }
                }
            }
            if counted != table.count { problems.append("count \(table.count), entries \(counted)") }
            return problems
        }
    }
}
