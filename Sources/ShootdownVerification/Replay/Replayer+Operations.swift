import Shootdown

extension Replayer {
    /// `value` rounded up to a page, saturating below 2^64.
    static func pageEnd(_ value: UInt64) -> UInt64 {
        value > UInt64.max - (AddressSpace.pageSize - 1) ? UInt64.max & ~(AddressSpace.pageSize - 1)
            : (value + AddressSpace.pageSize - 1) & ~(AddressSpace.pageSize - 1)
    }

    /// `[address, address + length)` rounded to pages, or `nil` when it leaves 64 bits.
    static func pageRange(_ address: UInt64, _ length: UInt64) -> Range<UInt64>? {
        let start = AddressSpace.pageAlignDown(address)
        let (end, overflow) = address.addingReportingOverflow(length)
        guard !overflow, end >= start else { return nil }
        return start..<pageEnd(end)
    }

    /// The names of a flags argument (`MAP_PRIVATE|MAP_FIXED`), each without a trailing comment.
    static func flagNames(_ argument: String) -> [Substring] {
        argument.split(separator: "|").map { $0.split(separator: " ").first ?? $0 }
    }

    /// The bits of a flags argument from strace's names (and any number among them); `nil` for an
    /// unknown name.
    static func bits(_ argument: String, _ table: [String: UInt64]) -> UInt64? {
        var value: UInt64 = 0
        for name in flagNames(argument) {
            if let bit = table[String(name)] {
                value |= bit
            } else if let number = Syntax.number(name.utf8) {
                value |= number
            } else {
                return nil
            }
        }
        return value
    }

    static let protectionBits: [String: UInt64] = [
        "PROT_NONE": 0, "PROT_READ": 1, "PROT_WRITE": 2, "PROT_EXEC": 4, "PROT_SEM": 8, "PROT_GROWSDOWN": 0x0100_0000,
        "PROT_GROWSUP": 0x0200_0000,
    ]

    /// The advice numbers by the names strace prints.
    static let adviceNumbers: [String: Int32] = [
        "MADV_NORMAL": 0, "MADV_RANDOM": 1, "MADV_SEQUENTIAL": 2, "MADV_WILLNEED": 3, "MADV_DONTNEED": 4,
        "MADV_FREE": 8, "MADV_REMOVE": 9, "MADV_DONTFORK": 10, "MADV_DOFORK": 11, "MADV_MERGEABLE": 12,
        "MADV_UNMERGEABLE": 13, "MADV_HUGEPAGE": 14, "MADV_NOHUGEPAGE": 15, "MADV_DONTDUMP": 16, "MADV_DODUMP": 17,
        "MADV_WIPEONFORK": 18, "MADV_KEEPONFORK": 19, "MADV_COLD": 20, "MADV_PAGEOUT": 21,
        "MADV_POPULATE_READ": 22, "MADV_POPULATE_WRITE": 23, "MADV_DONTNEED_LOCKED": 24, "MADV_COLLAPSE": 25,
        "MADV_HWPOISON": 100, "MADV_SOFT_OFFLINE": 101, "MADV_GUARD_INSTALL": 102, "MADV_GUARD_REMOVE": 103,
    ]

    /// mmap flags that change the engine's mapping; the rest (`MAP_PRIVATE`, `MAP_DENYWRITE`,
    /// `MAP_STACK`, `MAP_EXECUTABLE`, `MAP_FILE`, `MAP_UNINITIALIZED`, `MAP_NONBLOCK`) change
    /// nothing it models.
    static let ignoredMapFlags: Set<String> = [
        "MAP_PRIVATE", "MAP_DENYWRITE", "MAP_STACK", "MAP_EXECUTABLE", "MAP_FILE", "MAP_UNINITIALIZED", "MAP_NONBLOCK",
        "MAP_SHARED", "MAP_SHARED_VALIDATE", "MAP_FIXED", "MAP_FIXED_NOREPLACE", "MAP_ANONYMOUS", "MAP_LOCKED",
        "MAP_POPULATE", "MAP_NORESERVE", "MAP_GROWSDOWN",
    ]

    /// The file object of an fd argument (`3</usr/lib/libc.so.6>`: by path; `3`: by number).
    func fileObject(_ argument: String) -> FileObject? {
        let key: String
        if let open = argument.firstIndex(of: "<"), argument.hasSuffix(">") {
            key = String(argument[argument.index(after: open)..<argument.index(before: argument.endIndex)])
        } else if let number = Syntax.argumentNumber(argument) {
            key = "fd \(number)"
        } else {
            return nil
        }
        if let object = files[key] { return object }
        let object = FileObject(path: key, memory: memory)
        files[key] = object
        return object
    }

    /// The engine operation for a memory call (not brk); `nil` when its arguments are unreadable.
    func prepare(_ call: SystemCall, name: String, state: SpaceState) -> Prepared? {
        let space = state.space
        let arguments = call.arguments
        func number(_ index: Int) -> UInt64? { index < arguments.count ? Syntax.argumentNumber(arguments[index]) : nil }
        let linux = call.result.value
        let succeeded = linux != nil
        let populateLimit = options.maximumPopulateBytes
        switch name {
        case "mmap":
            guard arguments.count >= 6, let hint = number(0), let length = number(1),
                let rawProtection = Self.bits(arguments[2], Self.protectionBits)
            else { return nil }
            let names = Set(Self.flagNames(arguments[3]).map(String.init))
            if let other = names.first(where: { !Self.ignoredMapFlags.contains($0) && !$0.hasPrefix("0x") }) {
                return .unmodelled(other)
            }
            var options: AddressSpace.MapOptions = []
            if names.contains("MAP_SHARED") || names.contains("MAP_SHARED_VALIDATE") { options.insert(.shared) }
            if names.contains("MAP_LOCKED") { options.insert(.locked) }
            if names.contains("MAP_POPULATE") { options.insert(.populate) }
            if names.contains("MAP_NORESERVE") { options.insert(.noReserve) }
            if names.contains("MAP_GROWSDOWN") { options.insert(.growsDown) }
            if (options.contains(.locked) || options.contains(.populate)) && length > populateLimit {
                return .unmodelled("populating more than the limit")
            }
            let protection = Protection(rawValue: UInt32(truncatingIfNeeded: rawProtection))
            let placement: AddressSpace.Placement
            if names.contains("MAP_FIXED_NOREPLACE") {
                placement = .fixedNoReplace(hint)
            } else if names.contains("MAP_FIXED") {
                placement = .fixed(hint)
            } else if let linux {
                placement = .fixedNoReplace(linux)  // where Linux put it
            } else {
                placement = hint == 0 ? .anywhere : .hint(hint)
            }
            let anonymous = names.contains("MAP_ANONYMOUS") || number(4) == UInt64.max
            var file: FileObject?
            if !anonymous {
                guard let object = fileObject(arguments[4]), let offset = number(5) else { return nil }
                _ = offset
                file = object
            }
            let offset = number(5) ?? 0
            let touch = self.options.touch && !options.contains(.shared) && protection.contains(.write)
            let access: AddressSpace.FileAccess = protection.contains(.write) ? .readWrite : .readOnly
            return .run(Operation(returnsValue: true, linuxSucceeded: succeeded) { () throws(MemoryError) -> UInt64 in
                let address: UInt64
                if let file {
                    address = try space.map(
                        file: file, offset: offset, length: length, protection: protection, placement: placement,
                        options: options, access: access)
                } else {
                    address = try space.map(length: length, protection: protection, placement: placement, options: options)
                }
                if touch {
                    var page = address
                    let end = address + min(length, populateLimit)
                    while page < end, (try? space.fault(at: page, access: .write)) != nil { page += AddressSpace.pageSize }
                }
                return address
            } onSuccess: { [state] address in
                if let range = Self.pageRange(address, length) { state.known.insert(range) }
            })
        case "munmap":
            guard let address = number(0), let length = number(1) else { return nil }
            return .run(Operation(linuxSucceeded: succeeded) { () throws(MemoryError) -> UInt64 in
                try space.unmap(address: address, length: length)
                return 0
            } onSuccess: { [state] _ in
                if let range = Self.pageRange(address, length) { state.known.insert(range) }
            })
        case "mprotect", "pkey_mprotect":
            guard let address = number(0), let length = number(1), arguments.count >= 3,
                let raw = Self.bits(arguments[2], Self.protectionBits)
            else { return nil }
            if name == "pkey_mprotect" && number(3) != UInt64.max { return .unmodelled("a protection key") }
            let protection = Protection(rawValue: UInt32(truncatingIfNeeded: raw))
            let range = Self.pageRange(address, length)
            return .run(Operation(linuxSucceeded: succeeded, impliedRange: range) { () throws(MemoryError) -> UInt64 in
                try space.protect(address: address, length: length, protection: protection)
                return 0
            } onSuccess: { [state] _ in
                if let range { state.known.insert(range) }
            })
        case "mremap":
            guard arguments.count >= 4, let address = number(0), let oldLength = number(1), let newLength = number(2),
                let raw = Self.bits(arguments[3], ["MREMAP_MAYMOVE": 1, "MREMAP_FIXED": 2, "MREMAP_DONTUNMAP": 4])
            else { return nil }
            var flags = AddressSpace.RemapFlags(rawValue: UInt32(truncatingIfNeeded: raw))
            var target = number(4) ?? 0
            if !flags.contains(.fixed), flags.contains(.mayMove), let linux, linux != address {
                // Moved: replay the move to where Linux put it.
                flags.insert(.fixed)
                target = linux
            }
            let source = Self.pageRange(address, oldLength)
            let sourceKnown = source.map { state.known.contains($0) } ?? false
            return .run(Operation(returnsValue: true, linuxSucceeded: succeeded, impliedRange: source) {
                () throws(MemoryError) -> UInt64 in
                try space.remap(address: address, oldLength: oldLength, newLength: newLength, flags: flags, newAddress: target)
            } onSuccess: { [state] result in
                if let source { state.known.insert(source) }
                guard let moved = Self.pageRange(result, newLength) else { return }
                // The new range has the source's protection: known only if the source was.
                if sourceKnown { state.known.insert(moved) } else { state.known.remove(moved) }
            })
        case "madvise":
            guard arguments.count >= 3, let address = number(0), let length = number(1) else { return nil }
            guard let advice = Self.adviceNumbers[arguments[2]] ?? number(2).map({ Int32(truncatingIfNeeded: $0) })
            else { return nil }
            if advice == 22 || advice == 23 || advice == 25, length > populateLimit {
                return .unmodelled("populating more than the limit")
            }
            return .run(Operation(linuxSucceeded: succeeded, impliedRange: Self.pageRange(address, length)) {
                () throws(MemoryError) -> UInt64 in
                try space.advise(address: address, length: length, rawAdvice: advice)
                return 0
            })
        case "mlock", "mlock2":
            guard let address = number(0), let length = number(1) else { return nil }
            var flags: UInt64 = 0
            if name == "mlock2" {
                guard arguments.count >= 3, let raw = Self.bits(arguments[2], ["MLOCK_ONFAULT": 1]) else { return nil }
                flags = raw
            }
            if flags & 1 == 0 && length > populateLimit { return .unmodelled("populating more than the limit") }
            let raw = UInt32(truncatingIfNeeded: flags)
            return .run(Operation(linuxSucceeded: succeeded, impliedRange: Self.pageRange(address, length)) {
                () throws(MemoryError) -> UInt64 in
                try space.lock(address: address, length: length, rawFlags: raw)
                return 0
            })
        case "munlock":
            guard let address = number(0), let length = number(1) else { return nil }
            return .run(Operation(linuxSucceeded: succeeded, impliedRange: Self.pageRange(address, length)) {
                () throws(MemoryError) -> UInt64 in
                try space.unlock(address: address, length: length)
                return 0
            })
        case "mlockall":
            guard let first = arguments.first,
                let raw = Self.bits(first, ["MCL_CURRENT": 1, "MCL_FUTURE": 2, "MCL_ONFAULT": 4])
            else { return nil }
            if raw & 1 != 0 && raw & 4 == 0 {
                let accessible = space.mappings().reduce(UInt64(0)) { $0 &+ ($1.protection.isEmpty ? 0 : $1.end - $1.start) }
                if accessible > populateLimit { return .unmodelled("populating more than the limit") }
            }
            let flags = AddressSpace.LockAllFlags(rawValue: UInt32(truncatingIfNeeded: raw))
            return .run(Operation(linuxSucceeded: succeeded) { () throws(MemoryError) -> UInt64 in
                try space.lockAll(flags)
                return 0
            })
        case "munlockall":
            return .run(Operation(linuxSucceeded: succeeded) { () throws(MemoryError) -> UInt64 in
                try space.unlockAll()
                return 0
            })
        case "mincore":
            guard let address = number(0), let length = number(1) else { return nil }
            return .run(Operation(linuxSucceeded: succeeded, impliedRange: Self.pageRange(address, length)) {
                () throws(MemoryError) -> UInt64 in
                _ = try space.residency(address: address, length: length)
                return 0
            })
        case "msync":
            guard arguments.count >= 3, let address = number(0), let length = number(1),
                let raw = Self.bits(arguments[2], ["MS_ASYNC": 1, "MS_INVALIDATE": 2, "MS_SYNC": 4])
            else { return nil }
            let flags = AddressSpace.SyncFlags(rawValue: UInt32(truncatingIfNeeded: raw))
            return .run(Operation(linuxSucceeded: succeeded, impliedRange: Self.pageRange(address, length)) {
                () throws(MemoryError) -> UInt64 in
                try space.sync(address: address, length: length, flags: flags)
                return 0
            })
        case "mseal":
            guard let address = number(0), let length = number(1), let flags = number(2) else { return nil }
            return .run(Operation(linuxSucceeded: succeeded, impliedRange: Self.pageRange(address, length)) {
                () throws(MemoryError) -> UInt64 in
                try space.seal(address: address, length: length, flags: flags)
                return 0
            })
        default:
            return .unmodelled("not a modelled call")
        }
    }
}
