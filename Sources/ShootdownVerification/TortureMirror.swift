import Shootdown

/// A secondary MMU the ``TortureHarness`` drives and checks: a device page table, an RDMA
/// registration cache, a code cache, anything that keeps translations of an interval of an
/// ``AddressSpace`` coherent through the engine's notifiers.
///
/// The harness calls the device-side operations (``populate(address:length:write:)``,
/// ``read(at:)``, ``write(_:at:)``, ``migrate(address:length:)``) from several threads at once, and
/// asks for ``translations(start:end:)`` right after operations that invalidate. The oracle: every
/// translation the mirror reports must name the frame the CPU page table maps at that address, and
/// be writable only if the CPU entry is.
///
/// Ownership: the embedder creates the mirror over the harness's arena
/// (``TortureHarness/Configuration/arena``) before the run; the harness calls ``detach()`` once,
/// after it has torn the space down.
///
/// Context: every method may be called from any harness thread, with no engine lock held; they
/// may sleep.
public protocol TortureMirror: AnyObject, Sendable {
    /// A name for reports.
    var name: String { get }

    /// Makes the pages of `[address, address + length)` accessible through the mirror (a device
    /// fault or a registration), for writing if `write`. The range lies in the arena.
    func populate(address: UInt64, length: UInt64, write: Bool) throws(MemoryError)

    /// A device load of the page at `address`.
    func read(at address: UInt64) throws(MemoryError) -> UInt64

    /// A device store of `token` to the page at `address`.
    func write(_ token: UInt64, at address: UInt64) throws(MemoryError)

    /// A migration the mirror asks for (device-private memory, or compaction it starts), followed
    /// by mirroring the range again. Returns the pages moved.
    func migrate(address: UInt64, length: UInt64) throws(MemoryError) -> Int

    /// The translations the mirror holds for pages in `[start, end)`, in any order. Called without
    /// any engine lock; the answer must be a snapshot taken under the mirror's own lock.
    func translations(start: UInt64, end: UInt64) -> [MirrorPage]

    /// Stops mirroring (after the space's teardown): drops everything and unsubscribes.
    func detach()
}

extension TortureMirror {
    /// Populates the page for reading; returns 0 (a mirror without data access).
    public func read(at address: UInt64) throws(MemoryError) -> UInt64 {
        try populate(address: AddressSpace.pageAlignDown(address), length: AddressSpace.pageSize, write: false)
        return 0
    }

    /// Populates the page for writing; stores nothing (a mirror without data access).
    public func write(_ token: UInt64, at address: UInt64) throws(MemoryError) {
        try populate(address: AddressSpace.pageAlignDown(address), length: AddressSpace.pageSize, write: true)
    }

    /// Mirrors the range again without migrating (a mirror that never asks for migrations).
    public func migrate(address: UInt64, length: UInt64) throws(MemoryError) -> Int {
        try populate(address: address, length: length, write: false)
        return 0
    }
}

/// The engine's reference mirror, checked as is.
extension SoftwareMirror: TortureMirror {
    /// `SoftwareMirror@<start>`.
    public var name: String { "SoftwareMirror@0x\(String(start, radix: 16))" }

    /// Page by page under the mirror's lock for short ranges, a filtered copy of the table for long
    /// ones.
    public func translations(start: UInt64, end: UInt64) -> [MirrorPage] {
        let low = max(start, self.start)
        let high = min(end, self.end)
        guard low < high else { return [] }
        var result: [MirrorPage] = []
        if (high - low) / AddressSpace.pageSize <= 64 {
            var page = low
            while page < high {
                if let translation = translation(for: page) {
                    result.append(MirrorPage(address: page, frame: translation.frame, writable: translation.writable))
                }
                page += AddressSpace.pageSize
            }
        } else {
            for (page, translation) in translations where page >= low && page < high {
                result.append(MirrorPage(address: page, frame: translation.frame, writable: translation.writable))
            }
        }
        return result
    }
}
