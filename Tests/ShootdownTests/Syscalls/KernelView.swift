import Testing

@testable import Shootdown

// Helpers that render the engine's state the way the kernel experiments behind the `Syscalls`
// suites print it, so an expected value is the kernel's output copied verbatim.
//
// The experiments are small C programs run on the reference machine (Linux 6.18 x86-64,
// THP=madvise, no swap, `vm.mmap_min_addr` 4096, `RLIMIT_MEMLOCK` 8 MiB). They map fixed ranges at
// 0x200000000 (`kernelBase`), far from everything else in the process, and print:
// - the `/proc/self/smaps` VMAs intersecting the window as `start-end perms VmFlags`, the flags
//   exactly as smaps prints them (each followed by a space);
// - mincore's vector as a string of `0`/`1` (or the errno name when mincore fails);
// - a syscall's result as `ok` or its errno name.

/// Where every kernel experiment maps its ranges.
let kernelBase: UInt64 = 0x2_0000_0000
/// A page.
let page: UInt64 = AddressSpace.pageSize

extension AddressSpace {
    /// The VMAs intersecting `[low, high)` as the experiments print them:
    /// `"200000000-200004000 rw-p rd wr mr mw me ac "`.
    func kernelView(_ low: UInt64 = kernelBase, _ high: UInt64 = kernelBase + (1 << 30)) -> [String] {
        mappings().filter { $0.end > low && $0.start < high }.map {
            String($0.start, radix: 16) + "-" + String($0.end, radix: 16) + " " + $0.protection.description
                + ($0.vmFlags.contains(.shared) ? "s" : "p") + " " + $0.smapsFlags
        }
    }

    /// mincore over `pages` pages from `address` as the experiments print it (`"1100"`, or the
    /// errno name).
    func residencyString(_ address: UInt64, pages: Int) -> String {
        do {
            return try residency(address: address, length: UInt64(pages) * page).map { $0 ? "1" : "0" }.joined()
        } catch {
            return error.errnoName
        }
    }

    /// `/proc/self/pagemap`'s present bit over `pages` pages from `address` as the experiments
    /// print it (`"1100"`: an entry maps the page, `PROT_NONE` ones included).
    func mappedString(_ address: UInt64, pages: Int) -> String {
        (0..<UInt64(pages)).map { translate(address + $0 * page)?.frame != nil ? "1" : "0" }.joined()
    }

    /// Writes a token to `count` pages from `address` (the experiments' `touch`).
    func touch(_ address: UInt64, pages count: Int, token: UInt64 = 1) throws {
        for index in 0..<UInt64(count) { try write(token, at: address + index * page) }
    }
}

/// `"ok"` or the errno name of what `body` throws (the experiments' result column).
func outcome(_ body: () throws(MemoryError) -> Void) -> String {
    do {
        try body()
        return "ok"
    } catch {
        return error.errnoName
    }
}

/// A space like the experiments' process: root (`CAP_IPC_LOCK`, `CAP_SYS_RAWIO`) unless
/// `privileged` is false, the default limits otherwise.
func kernelLikeSpace(
    privileged: Bool = true, frames: Int = 8192, lockedMemoryLimit: UInt64? = 8 << 20, maxMapCount: Int = 65530
) throws -> AddressSpace {
    let memory = PhysicalMemory(capacity: frames, swapSlots: 0)
    let configuration = AddressSpace.Configuration(
        maxMapCount: maxMapCount, lockedMemoryLimit: lockedMemoryLimit,
        capabilities: privileged ? [.ipcLock, .sysRawIO] : [])
    return try AddressSpace(configuration: configuration, memory: memory)
}
