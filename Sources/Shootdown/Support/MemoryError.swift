import Synchronization
/// Errors of address-space operations, with the Linux `errno` each one models.
///
/// Every public operation validates its input and throws one of these. Where Linux has partial
/// effects (mprotect, madvise, mlock and munlock change the VMAs before a hole and then fail;
/// mremap unmaps a fixed target before it checks the source), the engine has the same ones; each
/// operation's documentation says what a failing call may already have done.
public enum MemoryError: Error, Hashable, Sendable, CustomStringConvertible {
    /// `EINVAL`: unaligned address, zero or overflowing length, bad flag combination, unknown
    /// advice or flag bits.
    case invalidArgument
    /// `ENOMEM`: range outside the user address space, no room for a mapping, an operation over
    /// a hole, too many VMAs, a locked-memory limit exceeded.
    case noMemory
    /// `EEXIST`: `MAP_FIXED_NOREPLACE` over an existing mapping.
    case alreadyExists
    /// `EBADF`: an mmap without `MAP_ANONYMOUS` names a file descriptor, and the raw-flag API
    /// (``AddressSpace/map(address:length:protection:rawFlags:)``) passes none (`-1`).
    case badFileDescriptor
    /// `EFAULT`: an address the operation needs mapped, with a given access, is not: mremap of a
    /// range that is not inside one mapping; `faultRange`, `mirror`, `pin` or `MADV_POPULATE_*` over
    /// a page that is unmapped or lacks the access; a device access through a translation the CPU
    /// page table does not back (``AddressSpace/deviceWrite(_:at:frame:)``), or a device write
    /// through a read-only pin.
    case badAddress
    /// `SIGSEGV`: a fault on an unmapped address, against the mapping's protection, or on a guard
    /// region.
    case segmentationFault
    /// `SIGBUS`: an access to a page of a shared object past its end (shared anonymous memory
    /// keeps the size it was made with; mremap can grow a mapping past it). Calls that fault pages
    /// in for the caller report it as `EFAULT` (`MADV_POPULATE_*`, `faultRange`, `pin`) or
    /// `ENOMEM` (mlock), as Linux does.
    case busError
    /// The frame allocator (or swap) is exhausted (the kernel's OOM, here an error, not a crash),
    /// or a frame already carries ``PhysicalMemory/maxPins`` pins.
    case outOfMemory
    /// `EAGAIN`: a non-blocking operation could not proceed (trylock failed, a notifier refused),
    /// or mlock could not lock every page.
    case wouldBlock
    /// `EPERM`: a sealed VMA, an address below `mmap_min_addr` without `CAP_SYS_RAWIO`, mlock
    /// with a zero `RLIMIT_MEMLOCK` and no `CAP_IPC_LOCK`.
    case permissionDenied
    /// `EBUSY`: msync(`MS_INVALIDATE`) over locked memory.
    case busy
    /// `EACCES`: an access the mapping's object does not allow (not reachable with anonymous
    /// memory; kept for harnesses that compare errno values).
    case accessDenied
    /// The address space was torn down.
    case addressSpaceDead
    /// The mirror or subscription was shut down and takes no more work: a detached mirror
    /// (``SoftwareMirror/detach()``), a removed interval notifier passed to `faultRange` or
    /// `mirror`, an unpinned ``PinnedRange``. Modelled on `ESHUTDOWN`.
    case detached

    /// The Linux errno value this error models (the signal number for a segmentation fault or a
    /// bus error; `ENOMEM` for
    /// frame exhaustion; `ESRCH` for a dead space).
    public var errno: Int32 {
        switch self {
        case .invalidArgument: 22
        case .noMemory, .outOfMemory: 12
        case .alreadyExists: 17
        case .badFileDescriptor: 9
        case .badAddress: 14
        case .segmentationFault: 11
        case .busError: 7
        case .wouldBlock: 11
        case .permissionDenied: 1
        case .busy: 16
        case .accessDenied: 13
        case .addressSpaceDead: 3
        case .detached: 108
        }
    }

    /// The error for a Linux errno value (`EAGAIN` is ``wouldBlock``, `ENOMEM` ``noMemory``);
    /// `nil` for values the engine never reports.
    public init?(errno: Int32) {
        switch errno {
        case 22: self = .invalidArgument
        case 12: self = .noMemory
        case 17: self = .alreadyExists
        case 9: self = .badFileDescriptor
        case 14: self = .badAddress
        case 11: self = .wouldBlock
        case 1: self = .permissionDenied
        case 16: self = .busy
        case 13: self = .accessDenied
        case 3: self = .addressSpaceDead
        case 108: self = .detached
        default: return nil
        }
    }

    /// The errno's symbolic name (`"EINVAL"`, …; `"SIGSEGV"` for a segmentation fault).
    public var errnoName: String {
        switch self {
        case .invalidArgument: "EINVAL"
        case .noMemory, .outOfMemory: "ENOMEM"
        case .alreadyExists: "EEXIST"
        case .badFileDescriptor: "EBADF"
        case .badAddress: "EFAULT"
        case .segmentationFault: "SIGSEGV"
        case .busError: "SIGBUS"
        case .wouldBlock: "EAGAIN"
        case .permissionDenied: "EPERM"
        case .busy: "EBUSY"
        case .accessDenied: "EACCES"
        case .addressSpaceDead: "ESRCH"
        case .detached: "ESHUTDOWN"
        }
    }

    public var description: String {
        switch self {
        case .invalidArgument: "EINVAL (invalid argument)"
        case .noMemory: "ENOMEM (no memory / outside the address space)"
        case .alreadyExists: "EEXIST (mapping exists)"
        case .badFileDescriptor: "EBADF (bad file descriptor)"
        case .badAddress: "EFAULT (bad address)"
        case .segmentationFault: "SIGSEGV (segmentation fault)"
        case .busError: "SIGBUS (past the end of a shared object)"
        case .outOfMemory: "out of memory (frames exhausted)"
        case .wouldBlock: "EAGAIN (would block)"
        case .permissionDenied: "EPERM (operation not permitted)"
        case .busy: "EBUSY (device or resource busy)"
        case .accessDenied: "EACCES (permission denied)"
        case .addressSpaceDead: "address space torn down"
        case .detached: "detached (the mirror or subscription was shut down)"
        }
    }
}

extension MemoryError {
    /// The error a call that faults pages in for its caller (GUP: `MADV_POPULATE_*`, `faultRange`,
    /// `pin`) reports for a fault that failed with `self`: `VM_FAULT_SIGBUS` becomes `EFAULT`.
    var reportedByFaultIn: MemoryError { self == .busError ? .badAddress : self }
}
