import Synchronization

/// A userspace model of a Linux address space (`struct mm_struct`): VMAs in an RCU-safe index, a
/// 4-level page table with split locks, frames from a ``PhysicalMemory``, and MMU notifiers that
/// keep secondary mirrors coherent.
///
/// Operations follow Linux semantics (see each method) and the invalidation shape of the kernel:
/// the range is fixed once, notifiers start outside any page-table lock, entries change under the
/// split lock of their table, notifiers end, and only then are frames freed (tables and VMAs after
/// an RCU grace period).
///
/// Locking: structural operations take the mmap lock for writing; the classic fault path and
/// page-level operations (madvise, reclaim, migration, aging) take it for reading; the speculative
/// fault path takes no lock but an RCU read section and one split lock; the per-VMA-lock fault
/// path takes the VMA's read lock, which writers of that VMA take for writing under the mmap
/// write lock (`VMAEdit`).
///
/// Every public operation validates its input and throws a ``MemoryError``; where Linux has
/// partial effects before an error (mprotect, madvise, mlock over holes; mremap's fixed target) the
/// engine has the same, as each operation documents.
public final class AddressSpace: @unchecked Sendable {
    /// Which fault path serves faults (a design knob).
    public enum FaultPath: String, Sendable, CaseIterable {
        /// VMA lookup without the mmap lock, validated by the VMA's sequence count; falls back to
        /// the classic path on any conflict (default).
        case speculative
        /// Always the classic path under the mmap read lock.
        case mmapLock = "mmap-lock"
        /// Per-VMA locks (Linux 6.4+, `lock_vma_under_rcu`): lockless lookup, then the VMA's read
        /// lock (one reference-count RMW), and the whole fault under it; falls back to the classic
        /// path when the VMA is write-locked, missing or moved (AddressSpace+VMALockFault.swift).
        case perVMALock = "per-vma-lock"
    }

    /// The kind of access that faulted.
    public enum Access: Sendable, Hashable {
        /// A load.
        case read
        /// A store.
        case write
    }

    /// Capabilities of the modelled process that change what the memory syscalls allow.
    public struct Capabilities: OptionSet, Hashable, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }

        /// `CAP_IPC_LOCK`: mlock ignores `RLIMIT_MEMLOCK`.
        public static let ipcLock = Capabilities(rawValue: 1 << 0)
        /// `CAP_SYS_RAWIO`: mappings may go below `mmapMinAddress` (down to 0).
        public static let sysRawIO = Capabilities(rawValue: 1 << 1)
    }

    /// Settings fixed when a space is created. The defaults are those of an unprivileged process
    /// on the reference machine (Linux 6.18 x86-64).
    public struct Configuration: Sendable, Hashable {
        /// Which fault path serves faults (default ``FaultPath/speculative``).
        public var faultPath: FaultPath
        /// How the subscriber list is protected (default ``NotifierListProtection/rcu``).
        public var notifierList: NotifierListProtection
        /// How PTE tables are locked (default ``PageTableLocking/split``).
        public var pageTableLocking: PageTableLocking
        /// Top of the area searched top-down for non-fixed mappings (`mm->mmap_base`).
        public var mmapBase: UInt64
        /// Lowest address a mapping may use without ``Capabilities/sysRawIO``
        /// (`vm.mmap_min_addr`, 4096): below it mmap fails with `EPERM`.
        public var mmapMinAddress: UInt64
        /// Lowest address a non-fixed hint is raised to (the security module's floor,
        /// `CONFIG_LSM_MMAP_MIN_ADDR`, 65536 here): a nonzero hint below it becomes it.
        public var hintMinAddress: UInt64
        /// Maximum number of VMAs (`vm.max_map_count`, 65530); more fail with `ENOMEM`.
        public var maxMapCount: Int
        /// `RLIMIT_MEMLOCK` in bytes (8 MiB); `nil` is unlimited.
        public var lockedMemoryLimit: UInt64?
        /// The process's capabilities (none).
        public var capabilities: Capabilities
        /// `RLIMIT_STACK` in bytes (8 MiB): how far a growsdown VMA may grow.
        public var stackLimit: UInt64
        /// `mm->start_brk`: where the program break starts (page-aligned); `nil` for a space
        /// without a brk area (brk then always returns 0, refusing).
        public var programBreakStart: UInt64?
        /// Whether loads and stores go through per-thread software TLBs (docs/tlb.md).
        public var tlb: TLBMode
        /// Heuristic overcommit (`vm.overcommit_memory` 0): RAM plus swap in bytes. One charge
        /// larger than this fails (`__vm_enough_memory`): a brk growth returns the old break, an
        /// mmap of charged memory (private writable, or shared, without `MAP_NORESERVE`) is
        /// `ENOMEM`. `nil` (the default): no commit accounting. Not checked by mremap growth and
        /// mprotect, which Linux also charges.
        public var commitLimit: UInt64?

        /// A configuration; the defaults are the engine's normal settings.
        public init(
            faultPath: FaultPath = .speculative, notifierList: NotifierListProtection = .rcu,
            pageTableLocking: PageTableLocking = .split, mmapBase: UInt64 = 0x7F00_0000_0000,
            mmapMinAddress: UInt64 = 4096, hintMinAddress: UInt64 = 65536, maxMapCount: Int = 65530,
            lockedMemoryLimit: UInt64? = 8 << 20, capabilities: Capabilities = [], stackLimit: UInt64 = 8 << 20,
            programBreakStart: UInt64? = nil, tlb: TLBMode = .none, commitLimit: UInt64? = nil
        ) {
            self.faultPath = faultPath
            self.notifierList = notifierList
            self.pageTableLocking = pageTableLocking
            self.mmapBase = mmapBase
            self.mmapMinAddress = mmapMinAddress
            self.hintMinAddress = hintMinAddress
            self.maxMapCount = maxMapCount
            self.lockedMemoryLimit = lockedMemoryLimit
            self.capabilities = capabilities
            self.stackLimit = stackLimit
            self.programBreakStart = programBreakStart
            self.tlb = tlb
            self.commitLimit = commitLimit
        }
    }

    /// Page size (4 KiB).
    public static let pageSize: UInt64 = PageTable.pageSize
    /// Huge page size (2 MiB).
    public static let hugePageSize: UInt64 = PageTable.hugePageSize
    /// End of the user address space with 4-level paging (`TASK_SIZE`, `0x7ffffffff000`: one
    /// page below 2^47, the guard page x86 keeps under the non-canonical hole).
    public static let userLimit: UInt64 = PageTable.userLimit

    private static let nextID = Atomic<UInt64>(1)

    /// Keeps the fields below off the line holding the object header (writers retain the space).
    private let headerPadding = CacheLinePadding()
    /// A process-unique identifier, carried by every ``InvalidationRange``.
    public let id: UInt64
    /// The settings the space was created with.
    public let configuration: Configuration
    /// The frames this space maps (shared with its forks).
    public let memory: PhysicalMemory

    @usableFromInline let mmapLock = MmapLock()
    @usableFromInline let pageTable: PageTable
    @usableFromInline let index = VMAIndex()
    /// `Unmanaged<NotifierSubscriptions>` bits, 0 until the first subscriber (with software TLBs,
    /// set from the start: see ``tlbSubscriptions(_:)``).
    @usableFromInline let subscriptionsWord: Atomic<UInt>
    @usableFromInline let counters = SlotCounters(width: SpaceCounter.allCases.count)
    @usableFromInline let speculativeEnabled: Bool
    /// Faults use per-VMA locks, so VMA writers must write-lock the VMAs they change.
    @usableFromInline let vmaLocksEnabled: Bool
    /// Set by teardown (read without the lock by accessors; written under the mmap write lock).
    @usableFromInline let dead = Atomic<Bool>(false)
    /// The per-thread software TLBs, with ``TLBMode/perThread`` (owned: unmapped in `deinit`).
    @usableFromInline let tlb: SoftwareTLB?
    /// Keeps the writer-owned fields below off the lines the fault path reads.
    private let writerPadding = CacheLinePadding()
    /// Where the last top-down search ended (`free_area_cache`; mmap write lock).
    var freeAreaCache: UInt64
    /// `mm->def_flags`: ``VMFlags/locked`` (and ``VMFlags/lockOnFault``) after
    /// `mlockall(MCL_FUTURE)`; every new mapping gets them (mmap write lock).
    var defaultFlags: VMFlags = []
    /// `mm->brk`: the current program break (mmap write lock); `start_brk` is in the
    /// configuration.
    var programBreak: UInt64
    /// Pages `mm->locked_vm` still counts though no VMA is locked there any more: a
    /// `MREMAP_DONTUNMAP` move of a locked VMA unlocks the old VMA without uncharging it
    /// (measured on 6.18: the locked total grows by the moved length and never comes back, not
    /// even by munlockall; a fork's child starts at 0). Mmap write lock.
    var leakedLockedPages: UInt64 = 0
    /// Serialises the first `anon_vma` assignment of VMAs under the mmap read lock.
    let anonVMALock = SpinLock()

    /// Creates an empty address space.
    ///
    /// - Throws: ``MemoryError/invalidArgument`` for an inconsistent configuration,
    ///   ``MemoryError/outOfMemory`` if the page-table root cannot be allocated.
    public init(configuration: Configuration = Configuration(), memory: PhysicalMemory = PhysicalMemory())
        throws(MemoryError)
    {
        guard configuration.mmapBase % Self.pageSize == 0, configuration.mmapMinAddress % Self.pageSize == 0,
            configuration.hintMinAddress % Self.pageSize == 0,
            configuration.mmapMinAddress < configuration.mmapBase, configuration.mmapBase <= Self.userLimit,
            configuration.maxMapCount > 0,
            configuration.programBreakStart.map({ $0 % Self.pageSize == 0 && $0 < Self.userLimit }) ?? true
        else { throw .invalidArgument }
        var tlb: SoftwareTLB? = nil
        if configuration.tlb != .none {
            tlb = SoftwareTLB.allocate(membarrier: configuration.tlb == .perThread && Membarrier.available)
            if tlb == nil { throw .outOfMemory }
        }
        guard let pageTable = PageTable(locking: configuration.pageTableLocking) else {
            tlb?.deallocate()
            throw .outOfMemory
        }
        self.tlb = tlb
        id = Self.nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        var subscriptions: UInt = 0
        if let tlb { subscriptions = Self.tlbSubscriptions(tlb, space: id, configuration, counters) }
        subscriptionsWord = Atomic(subscriptions)
        self.configuration = configuration
        self.memory = memory
        self.pageTable = pageTable
        speculativeEnabled = configuration.faultPath == .speculative
        vmaLocksEnabled = configuration.faultPath == .perVMALock
        freeAreaCache = configuration.mmapBase
        programBreak = configuration.programBreakStart ?? 0
    }

    deinit {
        if !dead.load(ordering: .relaxed) { teardown() }
        if let subscriptions = subscriptionsPointer { subscriptions.release() }
        tlb?.deallocate()
    }

    // MARK: - Notifier plumbing

    /// The subscriptions, if any subscriber ever registered (one pointer test).
    @inlinable
    var subscriptionsPointer: Unmanaged<NotifierSubscriptions>? {
        let bits = subscriptionsWord.load(ordering: .acquiring)
        return bits == 0 ? nil : Unmanaged.fromOpaque(UnsafeRawPointer(bitPattern: bits).unsafelyUnwrapped)
    }

    /// The subscriptions, created if needed, marked as having had a registration. Caller holds
    /// the mmap write lock.
    func ensureSubscriptions() -> NotifierSubscriptions {
        if let existing = subscriptionsPointer?.takeUnretainedValue() {
            existing.registered.store(true, ordering: .relaxed)
            return existing
        }
        let created = NotifierSubscriptions(
            space: id, protection: configuration.notifierList, domain: SleepableRCU.notifiers, counters: counters)
        created.registered.store(true, ordering: .relaxed)
        // Releasing: the object is complete before any dispatcher sees it.
        subscriptionsWord.store(UInt(bitPattern: Unmanaged.passRetained(created).toOpaque()), ordering: .releasing)
        return created
    }

    /// Begins a blockable invalidation of `[start, end)`. Call outside any split lock.
    func beginInvalidation(
        _ start: UInt64, _ end: UInt64, _ event: InvalidationEvent, vma: VMASnapshot? = nil,
        owner: InvalidationOwner = .none
    ) -> InvalidationScope {
        counters.increment(SpaceCounter.invalidationsIndex(event))
        // The range is built in the scope itself: built first and then copied into the scope, it
        // cost a copy of the whole range when nothing is subscribed (the copy stays because only
        // a subscribed end reads it).
        let scope = InvalidationScope(
            range: InvalidationRange(
                space: id, start: start, end: end, event: event, flags: .blockable, vma: vma, owner: owner),
            subscriptions: subscriptionsPointer)
        if let subscriptions = scope.subscriptions {
            _ = subscriptions._withUnsafeGuaranteedRef { $0.invalidateRangeStart(scope.range) }
        }
        return scope
    }

    /// Begins a non-blockable invalidation; `nil` if a subscriber refused (the range must then be
    /// left untouched; every end owed has been called).
    func tryBeginInvalidation(
        _ start: UInt64, _ end: UInt64, _ event: InvalidationEvent, vma: VMASnapshot? = nil
    ) -> InvalidationScope? {
        let range = InvalidationRange(space: id, start: start, end: end, event: event, flags: [], vma: vma)
        let subscriptions = subscriptionsPointer
        if let subscriptions {
            let accepted = subscriptions._withUnsafeGuaranteedRef { $0.invalidateRangeStart(range) }
            if !accepted {
                counters.increment(SpaceCounter.invalidationsRefused.rawValue)
                return nil
            }
        }
        counters.increment(SpaceCounter.invalidationsIndex(event))
        return InvalidationScope(range: range, subscriptions: subscriptions)
    }

    /// Zaps `[start, end)` inside `scope` (secondary-TLB subscribers are called per flushed
    /// batch), ends the scope, and only then frees the unmapped frames: a mirror never sees a
    /// frame recycled while it may still translate to it. Returns the number of frames freed.
    /// Caller: the mmap lock plus whatever excludes other writers of the range.
    @discardableResult
    func zapAndEnd(
        _ scope: consuming InvalidationScope, _ start: UInt64, _ end: UInt64, keepGuards: Bool = false
    ) -> Int {
        var chain = FrameChain()
        let result = withSecondaryTLBHook { hook in
            pageTable.zap(from: start, to: end, memory: memory, chain: &chain, keepGuards: keepGuards, flush: hook)
        }
        scope.end()
        let frames = chain.frameCount
        memory.release(chain)
        recordZap(result)
        return frames
    }

    /// Calls `body` with the secondary-TLB hook to use under split locks while the mmap lock is
    /// held (a no-op when no subscriber implements it).
    func withSecondaryTLBHook<R>(_ body: ((UInt64, UInt64) -> Void) -> R) -> R {
        if let subscriptions = subscriptionsPointer?.takeUnretainedValue(), subscriptions.wantsSecondaryTLBs {
            return body { start, end in subscriptions.invalidateSecondaryTLBs(start: start, end: end) }
        }
        return body { _, _ in }
    }

    // MARK: - Validation helpers

    /// Throws ``MemoryError/addressSpaceDead`` after teardown.
    @inlinable
    func checkAlive() throws(MemoryError) {
        if dead.load(ordering: .relaxed) { throw .addressSpaceDead }
    }

    /// Page-aligns `length` up (Linux `PAGE_ALIGN`); `nil` on overflow.
    @inlinable
    static func pageAlign(_ length: UInt64) -> UInt64? {
        let (sum, overflow) = length.addingReportingOverflow(pageSize - 1)
        return overflow ? nil : sum & ~(pageSize - 1)
    }

    /// Whether `value` (an address or a length) is a multiple of ``pageSize``.
    @inlinable
    public static func isPageAligned(_ value: UInt64) -> Bool { value & (pageSize - 1) == 0 }

    /// The end of the user range starting at `address` with `length` rounded up to pages.
    ///
    /// - Throws: ``MemoryError/invalidArgument`` if `address` is unaligned, the rounding
    ///   overflows, or the range leaves the user address space (or is empty and `nonEmpty`).
    static func userRangeEnd(_ address: UInt64, _ length: UInt64, nonEmpty: Bool = false) throws(MemoryError) -> UInt64 {
        guard isPageAligned(address), let length = pageAlign(length), !(nonEmpty && length == 0),
            address <= userLimit, length <= userLimit - address
        else { throw .invalidArgument }
        return address + length
    }

    /// A snapshot of `vma` for an invalidation range (inlined: a few loads, less than the call).
    @inline(__always)
    func snapshot(_ vma: VMA) -> VMASnapshot {
        VMASnapshot(start: vma.start, end: vma.end, protection: vma.protection, flags: vma.flags.with(vma.protection))
    }

    /// Adds `delta` to counter `counter` (inlined always: a call costs more than the count).
    @inlinable @inline(__always)
    func count(_ counter: SpaceCounter, _ delta: Int = 1) {
        counters.add(counter.rawValue, Int64(delta))
    }
}
