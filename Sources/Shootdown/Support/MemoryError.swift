import Synchronization
/// Errors of address-space operations, with the Linux `errno` each one models.
///
/// Every public operation validates its input before changing anything and throws one of these;
/// a call that throws leaves the space exactly as it was.
public enum MemoryError: Error, Hashable, Sendable, CustomStringConvertible {
    /// `EINVAL`: unaligned address, zero or overflowing length, bad flag combination.
    case invalidArgument
    /// `ENOMEM`: range outside the user address space, no room for a mapping, or an operation over
    /// a hole (mprotect, madvise, mremap growth).
    case noMemory
    /// `EEXIST`: `MAP_FIXED_NOREPLACE` over an existing mapping.
    case alreadyExists
    /// `EFAULT`: an address the operation needs mapped, with a given access, is not: mremap of a
    /// range that is not inside one mapping; `faultRange`, `mirror`, `pin` or `MADV_POPULATE_*` over
    /// a page that is unmapped or lacks the access; a device access through a translation the CPU
    /// page table does not back (``AddressSpace/deviceWrite(_:at:frame:)``), or a device write
    /// through a read-only pin.
    case badAddress
    /// `SIGSEGV`: a fault on an unmapped address or against the mapping's protection.
    case segmentationFault
    /// The frame allocator (or swap) is exhausted (the kernel's OOM, here an error, not a crash),
    /// or a frame already carries ``PhysicalMemory/maxPins`` pins.
    case outOfMemory
    /// `EAGAIN`: a non-blocking operation could not proceed (trylock failed, a notifier refused).
    case wouldBlock
    /// The address space was torn down.
    case addressSpaceDead
    /// The mirror or subscription was shut down and takes no more work: a detached mirror
    /// (``SoftwareMirror/detach()``), a removed interval notifier passed to `faultRange` or
    /// `mirror`, an unpinned ``PinnedRange``. Modelled on `ESHUTDOWN`.
    case detached

    /// The Linux errno value this error models (`SIGSEGV` for a segmentation fault).
    public var errno: Int32 {
        switch self {
        case .invalidArgument: 22
        case .noMemory, .outOfMemory: 12
        case .alreadyExists: 17
        case .badAddress: 14
        case .segmentationFault: 11
        case .wouldBlock: 11
        case .addressSpaceDead: 3
        case .detached: 108
        }
    }

    public var description: String {
        switch self {
        case .invalidArgument: "EINVAL (invalid argument)"
        case .noMemory: "ENOMEM (no memory / outside the address space)"
        case .alreadyExists: "EEXIST (mapping exists)"
        case .badAddress: "EFAULT (bad address)"
        case .segmentationFault: "SIGSEGV (segmentation fault)"
        case .outOfMemory: "out of memory (frames exhausted)"
        case .wouldBlock: "EAGAIN (would block)"
        case .addressSpaceDead: "address space torn down"
        case .detached: "detached (the mirror or subscription was shut down)"
        }
    }
}
