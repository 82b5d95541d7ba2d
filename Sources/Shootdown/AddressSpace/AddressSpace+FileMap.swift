extension AddressSpace {
    /// How the file descriptor behind a file mapping was opened (`FMODE_WRITE`).
    public enum FileAccess: Sendable, Hashable {
        /// Opened for reading only (`O_RDONLY`): a shared mapping of it cannot be made writable
        /// (`EACCES`), and has neither `sh` nor `mw`.
        case readOnly
        /// Opened for reading and writing (`O_RDWR`).
        case readWrite
    }

    /// The object and offset of a file mapping being made.
    struct FileBacking {
        var object: SharedMemoryObject
        /// `vm_pgoff`: the file offset of the mapping's start, in pages.
        var pageOffset: UInt64
        var access: FileAccess
    }

    /// Maps `length` bytes of `file` from byte `offset` (`mmap(fd, offset)`): a `MAP_PRIVATE`
    /// mapping without ``MapOptions/shared``, `MAP_SHARED` with it.
    ///
    /// The rules of ``map(length:protection:placement:options:)`` apply, with these differences
    /// (Linux 6.18, measured on this machine's ext4 with a C program):
    /// - an unaligned `offset` is `EINVAL` before anything else; an offset whose last page would
    ///   pass 2^64 is `EINVAL` (Linux: `EOVERFLOW`, which ``MemoryError`` does not model);
    /// - placement without a fixed address follows the file system's `thp_get_unmapped_area`: when
    ///   the part of the mapping from the first 2 MiB-aligned file offset on is at least 2 MiB,
    ///   the search asks for 2 MiB more and places the mapping so that its address and its file
    ///   offset agree modulo 2 MiB (a free hint for the padded length is taken as it is); else, or
    ///   when the padded length does not fit, as anonymous memory without THP alignment. Private
    ///   and shared mappings alike;
    /// - after placement and the lock checks: a shared writable mapping of a file opened
    ///   ``FileAccess/readOnly`` is `EACCES`; ``MapOptions/growsDown`` is `EINVAL`;
    /// - flags: private `mr mw me` (and `ac` when writable, kept when mprotect removes write,
    ///   unlike anonymous memory); shared `sh mr mw me ms`, or `mr me ms` for a read-only file;
    /// - VMAs of one file merge only with contiguous file offsets and equal flags (and
    ///   compatible `anon_vma`s for private ones), never with anonymous memory or another file;
    /// - faults: a shared mapping maps the file's page; a private one maps it read-only and
    ///   copies it on a write fault (`ac`, an `anon_vma`); ``MapOptions/hugePage`` only sets `hg`
    ///   (no huge pages for files). mprotect to a writable protection is `EACCES` where the VMA
    ///   lacks `mw`. `MADV_FREE` and `MADV_WIPEONFORK` are `EINVAL` on file mappings,
    ///   `MADV_REMOVE` is `EACCES` on private ones.
    ///
    /// - Returns: the start address of the mapping.
    @discardableResult
    public func map(
        file: FileObject, offset: UInt64, length: UInt64, protection: Protection = .read,
        placement: Placement = .anywhere, options: MapOptions = [], access: FileAccess = .readWrite
    ) throws(MemoryError) -> UInt64 {
        guard file.memory === memory else { throw .invalidArgument }
        guard Self.isPageAligned(offset) else { throw .invalidArgument }
        guard length != 0 else { throw .invalidArgument }
        let pageOffset = offset / Self.pageSize
        if let pages = Self.pageAlign(length), pageOffset.addingReportingOverflow(pages / Self.pageSize).overflow {
            throw .invalidArgument
        }
        return try mapArea(
            length: length, protection: protection, placement: placement, options: options,
            file: FileBacking(object: file.object, pageOffset: pageOffset, access: access))
    }

    /// The address of a file mapping placed like `thp_get_unmapped_area` places it, or `nil` when
    /// its rule does not apply (the caller then places it as anonymous memory without THP
    /// alignment). `hint` is the rounded hint, 0 for none. Caller: mmap write lock.
    func fileAlignedAddress(length: UInt64, pageOffset: UInt64, hint: UInt64) -> UInt64? {
        let size = Self.hugePageSize
        let offset = pageOffset &* Self.pageSize
        let (offsetEnd, endOverflow) = offset.addingReportingOverflow(length)
        let (roundedUp, alignOverflow) = offset.addingReportingOverflow(size - 1)
        guard !endOverflow, !alignOverflow else { return nil }
        let alignedOffset = roundedUp & ~(size - 1)
        guard offsetEnd > alignedOffset, offsetEnd - alignedOffset >= size, length <= Self.userLimit - size else {
            return nil
        }
        let padded = length + size
        if hint != 0, hint <= Self.userLimit - padded, isFreeForPlacement(hint, hint + padded) { return hint }
        guard let found = try? findFreeArea(length: padded, alignment: Self.pageSize) else { return nil }
        let shift = (offset &- found) & (size - 1)
        return shift == 0 ? found + size : found + shift
    }
}
