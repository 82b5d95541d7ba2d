@_spi(Benchmarking) import Shootdown
import ArgumentParser
import Foundation

/// `shootdown replay TRACE`: replays the memory system calls of an `strace` log (`strace -f -e
/// trace=memory -o TRACE program`) against Shootdown address spaces, one per traced process, and
/// checks every outcome against what Linux returned.
///
/// The layout is reproduced exactly: a mapping Linux placed at A is replayed at A (as
/// `MAP_FIXED_NOREPLACE`, so a divergence shows as a mismatch instead of silently clobbering),
/// calls that failed on Linux are replayed as issued and must fail with the same errno, `brk` runs
/// against a space whose break starts where the process's first `brk(NULL)` said, and file mappings
/// are modelled as anonymous memory of the same size.
struct Replay: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replay the memory system calls (mmap, munmap, mprotect, mremap, madvise, brk, the mlock family, mincore, msync, mseal) of an strace log.",
        discussion: """
            Record a trace with: strace -f -e trace=memory -o app.strace <program>
            Samples: traces/python-startup.strace, traces/anonymous-syscalls.strace.
            """)

    @Argument(help: "The strace log.") var trace: String
    @Flag(help: "Write-fault every page of each new private writable mapping (exercises faults and zaps).")
    var touch = false
    @Option(help: "No-op classic subscribers attached to every space.") var subscribers = 0
    @Option(help: "Print the first N mismatches.") var show = 10
    @Flag(help: "One JSON object.") var json = false
    @Flag(help: "Print each process's mappings at the end (/proc/pid/maps style).") var maps = false

    func run() throws {
        installInterruptHandler()
        let text = try String(contentsOfFile: trace, encoding: .utf8)
        let calls = text.split(separator: "\n").compactMap(TracedCall.init)
        guard !calls.isEmpty else { throw ValidationError("no memory system calls found in \(trace)") }
        var replayer = Replayer(touch: touch, subscribers: subscribers)
        for call in calls where !interrupted { try replayer.replay(call) }
        var result = RunResult(workload: "replay")
        result.config = [("trace", trace), ("touch", String(touch)), ("subscribers", String(subscribers))]
        let replayed = replayer.matched + replayer.mismatches.count
        result.metrics = [
            ("calls", Double(calls.count)), ("replayed", Double(replayed)), ("matched", Double(replayer.matched)),
            ("mismatched", Double(replayer.mismatches.count)), ("skipped", Double(replayer.skipped)),
            ("address_spaces", Double(replayer.spaces.count + replayer.execs)),
            ("exec_mappings_implied", Double(replayer.implied)),
            ("ns_per_op", replayed > 0 ? Double(replayer.elapsed) / Double(replayed) : 0),
            ("ops_per_sec", replayer.elapsed > 0 ? Double(replayed) * 1e9 / Double(replayer.elapsed) : 0),
        ]
        var totals: [String: Int64] = [:]
        for space in replayer.spaces.values {
            for (name, value) in space.statistics.nonZero { totals[name, default: 0] += value }
        }
        result.counters = totals.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        result.counters += replayer.perCall.sorted { $0.key < $1.key }.map { ("calls_\($0.key)", Int64($0.value)) }
        result.notes = replayer.mismatches.prefix(show).map { $0 }
        print(json ? Render.json(result) : Render.table(result))
        if maps {
            for (pid, space) in replayer.spaces.sorted(by: { $0.key < $1.key }) {
                print("\npid \(pid):")
                for line in space.mapsText() { print("  " + line) }
            }
        }
        for space in replayer.spaces.values { space.teardown() }
        if !replayer.mismatches.isEmpty { throw ExitCode(1) }
    }
}

/// One line of an strace log: `[pid] name(arguments) = result`.
struct TracedCall {
    var pid: String
    var name: String
    var arguments: [String]
    var result: String

    static let names: Set<String> = [
        "mmap", "munmap", "mprotect", "mremap", "madvise", "brk", "mlock", "mlock2", "munlock", "mlockall", "munlockall",
        "mincore", "msync", "mseal", "syscall_0x1ce",
    ]

    init?(_ line: Substring) {
        var rest = line.drop { $0 == " " }
        // Optional pid prefix ("1234 " or "[pid 1234] ").
        var pid = "0"
        if rest.hasPrefix("[pid") {
            guard let close = rest.firstIndex(of: "]") else { return nil }
            pid = rest[rest.index(rest.startIndex, offsetBy: 4)..<close].trimmingCharacters(in: .whitespaces)
            rest = rest[rest.index(after: close)...].drop { $0 == " " }
        } else if let space = rest.firstIndex(of: " "), rest[..<space].allSatisfy(\.isNumber) {
            pid = String(rest[..<space])
            rest = rest[rest.index(after: space)...].drop { $0 == " " }
        }
        // strace pads the result column with spaces: split at the last "=", then the call must end
        // with ")". Unfinished/resumed halves of interrupted calls do not match and are skipped.
        guard let open = rest.firstIndex(of: "("), Self.names.contains(String(rest[..<open])),
            let equals = rest.lastIndex(of: "=")
        else { return nil }
        let call = rest[..<equals].trimmingCharacters(in: .whitespaces)
        guard call.hasSuffix(")"), let callOpen = call.firstIndex(of: "(") else { return nil }
        self.pid = pid
        name = String(rest[..<open])
        if name == "syscall_0x1ce" { name = "mseal" }  // strace releases that predate mseal (462)
        arguments = call[call.index(after: callOpen)..<call.index(before: call.endIndex)].split(separator: ",").map {
            $0.trimmingCharacters(in: .whitespaces)
        }
        result = rest[rest.index(after: equals)...].trimmingCharacters(in: .whitespaces)
    }

    /// The returned value, or the errno name of a failure.
    var outcome: (value: UInt64?, errno: String?) {
        if result.hasPrefix("-1") {
            return (nil, result.split(separator: " ").dropFirst().first.map(String.init))
        }
        return (parseNumber(result.split(separator: " ").first.map(String.init) ?? ""), nil)
    }
}

/// Parses `0x1f`, `42` or `NULL`.
func parseNumber(_ text: String) -> UInt64? {
    if text == "NULL" { return 0 }
    if text.hasPrefix("0x") { return UInt64(text.dropFirst(2), radix: 16) }
    return UInt64(text)
}

/// Replays traced calls, one space per process.
struct Replayer {
    let touch: Bool
    let subscribers: Int
    let memory = PhysicalMemory(capacity: 1 << 20, swapSlots: 4096)
    var spaces: [String: AddressSpace] = [:]
    var breaks: [String: UInt64] = [:]
    var matched = 0
    var skipped = 0
    /// Calls over ranges the kernel mapped at exec (created, then replayed).
    var implied = 0
    /// Execs detected (a new program break).
    var execs = 0
    var mismatches: [String] = []
    var perCall: [String: Int] = [:]
    var elapsed: UInt64 = 0
    private var keepAlive: [NoOpSubscribers] = []

    init(touch: Bool, subscribers: Int) {
        self.touch = touch
        self.subscribers = subscribers
    }

    mutating func space(for pid: String, breakStart: UInt64? = nil) throws -> AddressSpace {
        if let space = spaces[pid] { return space }
        let space = try AddressSpace(configuration: .init(programBreakStart: breakStart), memory: memory)
        keepAlive.append(try NoOpSubscribers(subscribers, on: space))
        spaces[pid] = space
        return space
    }

    mutating func replay(_ call: TracedCall) throws {
        let space = try self.space(for: call.pid)
        let expected = call.outcome
        let arguments = call.arguments.map { parseNumber($0) }
        func flags(_ index: Int) -> Set<String> {
            guard index < call.arguments.count else { return [] }
            return Set(call.arguments[index].split(separator: "|").map(String.init))
        }
        func protection(_ index: Int) -> Protection {
            let names = flags(index)
            var protection: Protection = []
            if names.contains("PROT_READ") { protection.insert(.read) }
            if names.contains("PROT_WRITE") { protection.insert(.write) }
            if names.contains("PROT_EXEC") { protection.insert(.exec) }
            return protection
        }

        /// The bits of argument `index` from strace's symbolic names (and any number among them).
        func bits(_ index: Int, _ table: [String: UInt64]) -> UInt64 {
            // strace prints unknown bits as `0x8 /* MLOCK_??? */`: the number before the comment.
            flags(index).reduce(UInt64(0)) {
                let name = $1.split(separator: " ").first.map(String.init) ?? $1
                return $0 | (table[name] ?? parseNumber(name) ?? 0)
            }
        }

        var action: (() throws(MemoryError) -> UInt64)?
        switch call.name {
        case "mmap":
            guard arguments.count >= 6, let hint = arguments[0], let length = arguments[1] else { break }
            let mapFlags = flags(3)
            var options: AddressSpace.MapOptions = []
            if mapFlags.contains("MAP_SHARED") { options.insert(.shared) }
            let placement: AddressSpace.Placement
            if mapFlags.contains("MAP_FIXED_NOREPLACE") {
                placement = .fixedNoReplace(hint)
            } else if mapFlags.contains("MAP_FIXED") {
                placement = .fixed(hint)
            } else if let address = expected.value {
                placement = .fixedNoReplace(address)  // where Linux put it
            } else {
                placement = hint == 0 ? .anywhere : .hint(hint)
            }
            let writable = protection(2).contains(.write) && !options.contains(.shared)
            action = { [touch] () throws(MemoryError) -> UInt64 in
                let address = try space.map(length: length, protection: protection(2), placement: placement, options: options)
                if touch && writable {
                    var page = address
                    while page < address + length {
                        try space.fault(at: page, access: .write)
                        page += 4096
                    }
                }
                return address
            }
        case "munmap":
            guard arguments.count >= 2, let address = arguments[0], let length = arguments[1] else { break }
            action = { () throws(MemoryError) -> UInt64 in
                try space.unmap(address: address, length: length)
                return 0
            }
        case "mprotect":
            guard arguments.count >= 3, let address = arguments[0], let length = arguments[1] else { break }
            action = { () throws(MemoryError) -> UInt64 in
                try space.protect(address: address, length: length, protection: protection(2))
                return 0
            }
        case "mremap":
            guard arguments.count >= 4, let address = arguments[0], let oldLength = arguments[1],
                let newLength = arguments[2]
            else { break }
            var remapFlags = AddressSpace.RemapFlags(
                rawValue: UInt32(truncatingIfNeeded: bits(3, ["MREMAP_MAYMOVE": 1, "MREMAP_FIXED": 2, "MREMAP_DONTUNMAP": 4])))
            var target = arguments.count >= 5 ? arguments[4] ?? 0 : 0
            if !remapFlags.contains(.fixed), remapFlags.contains(.mayMove), let result = expected.value, result != address {
                // Moved: replay the move to where Linux put it.
                remapFlags.insert(.fixed)
                target = result
            }
            action = { () throws(MemoryError) -> UInt64 in
                try space.remap(address: address, oldLength: oldLength, newLength: newLength, flags: remapFlags, newAddress: target)
            }
        case "madvise":
            guard arguments.count >= 3, let address = arguments[0], let length = arguments[1] else { break }
            let name = call.arguments[2]
            guard let raw = Self.adviceNumbers[name] ?? parseNumber(name).map(Int32.init(truncatingIfNeeded:)) else {
                break
            }
            action = { () throws(MemoryError) -> UInt64 in
                try space.advise(address: address, length: length, rawAdvice: raw)
                return 0
            }
        case "mlock", "mlock2":
            guard arguments.count >= 2, let address = arguments[0], let length = arguments[1] else { break }
            let raw = call.name == "mlock2" ? UInt32(bits(2, ["MLOCK_ONFAULT": 1])) : 0
            action = { () throws(MemoryError) -> UInt64 in
                try space.lock(address: address, length: length, rawFlags: raw)
                return 0
            }
        case "munlock":
            guard arguments.count >= 2, let address = arguments[0], let length = arguments[1] else { break }
            action = { () throws(MemoryError) -> UInt64 in
                try space.unlock(address: address, length: length)
                return 0
            }
        case "mlockall":
            let raw = UInt32(bits(0, ["MCL_CURRENT": 1, "MCL_FUTURE": 2, "MCL_ONFAULT": 4]))
            action = { () throws(MemoryError) -> UInt64 in
                try space.lockAll(.init(rawValue: raw))
                return 0
            }
        case "munlockall":
            action = { () throws(MemoryError) -> UInt64 in
                try space.unlockAll()
                return 0
            }
        case "mincore":
            guard arguments.count >= 2, let address = arguments[0], let length = arguments[1] else { break }
            action = { () throws(MemoryError) -> UInt64 in
                _ = try space.residency(address: address, length: length)
                return 0
            }
        case "msync":
            guard arguments.count >= 3, let address = arguments[0], let length = arguments[1] else { break }
            let raw = UInt32(bits(2, ["MS_ASYNC": 1, "MS_INVALIDATE": 2, "MS_SYNC": 4]))
            action = { () throws(MemoryError) -> UInt64 in
                try space.sync(address: address, length: length, flags: .init(rawValue: raw))
                return 0
            }
        case "mseal":
            guard arguments.count >= 3, let address = arguments[0], let length = arguments[1], let raw = arguments[2] else { break }
            action = { () throws(MemoryError) -> UInt64 in
                try space.seal(address: address, length: length, flags: raw)
                return 0
            }
        case "brk":
            guard let requested = arguments.first ?? nil, let result = expected.value else { break }
            let current = breaks[call.pid]
            if requested == 0, current != result {
                // The first brk(NULL), or a new break from one: the process exec'd (the trace filter
                // hides execve), so it gets a fresh address space whose break starts there. A space
                // that already has mappings from before the first brk(NULL) keeps them.
                if current != nil || spaces[call.pid]?.mappingCount == 0 {
                    spaces[call.pid]?.teardown()
                    spaces[call.pid] = nil
                    if current != nil { execs += 1 }
                }
                _ = try self.space(for: call.pid, breakStart: result)
            }
            breaks[call.pid] = result
            guard current != nil || requested != 0 else { skipped += 1; return }  // brk(NULL): just learn it
            let heap = spaces[call.pid]!
            if heap.configuration.programBreakStart != nil {
                action = { () throws(MemoryError) -> UInt64 in try heap.setBreak(requested) }
            } else if let current {
                // No break start known (calls came before the first brk(NULL)): move a heap mapping.
                let oldEnd = (current + 4095) & ~4095
                let newEnd = (result + 4095) & ~4095
                action = { () throws(MemoryError) -> UInt64 in
                    if newEnd > oldEnd {
                        try heap.map(length: newEnd - oldEnd, placement: .fixed(oldEnd))
                    } else if newEnd < oldEnd {
                        try heap.unmap(address: newEnd, length: oldEnd - newEnd)
                    }
                    return result
                }
            }
        default:
            break
        }
        guard let action else {
            skipped += 1
            return
        }
        perCall[call.name, default: 0] += 1
        let start = nowNanoseconds()
        var outcome: Result<UInt64, MemoryError>
        do throws(MemoryError) {
            outcome = .success(try action())
        } catch {
            outcome = .failure(error)
        }
        elapsed += nowNanoseconds() - start
        if case .failure(.noMemory) = outcome, expected.errno == nil,
            call.name == "mprotect" || call.name == "madvise", let address = arguments[0], let length = arguments[1]
        {
            // Linux changed a range the trace never mapped: a mapping made at exec (the binary, the
            // loader). Create it over the holes, then replay the call.
            let end = address + ((length + 4095) & ~4095)
            var cursor = address
            for mapping in space.mappings() where mapping.end > address && mapping.start < end {
                if mapping.start > cursor { _ = try? space.map(length: mapping.start - cursor, placement: .fixed(cursor)) }
                cursor = max(cursor, mapping.end)
            }
            if cursor < end { _ = try? space.map(length: end - cursor, placement: .fixed(cursor)) }
            implied += 1
            let start = nowNanoseconds()
            do throws(MemoryError) {
                outcome = .success(try action())
            } catch {
                outcome = .failure(error)
            }
            elapsed += nowNanoseconds() - start
        }
        switch (outcome, expected.errno) {
        case (.success(let value), nil):
            if call.name == "mmap" || call.name == "mremap" || call.name == "brk", let linux = expected.value, value != linux {
                mismatches.append("pid \(call.pid): \(call.name)(\(call.arguments.joined(separator: ", "))) = 0x\(String(value, radix: 16)), Linux 0x\(String(linux, radix: 16))")
            } else {
                matched += 1
            }
        case (.failure(let error), let errno?) where errnoName(error) == errno:
            matched += 1
        case (.failure(let error), _):
            mismatches.append("pid \(call.pid): \(call.name)(\(call.arguments.joined(separator: ", "))) failed with \(errnoName(error)), Linux: \(call.result)")
        case (.success, let errno?):
            mismatches.append("pid \(call.pid): \(call.name)(\(call.arguments.joined(separator: ", "))) succeeded, Linux failed with \(errno)")
        }
    }

    func errnoName(_ error: MemoryError) -> String { error.errnoName }

    /// The advice numbers by the names strace prints.
    static let adviceNumbers: [String: Int32] = [
        "MADV_NORMAL": 0, "MADV_RANDOM": 1, "MADV_SEQUENTIAL": 2, "MADV_WILLNEED": 3, "MADV_DONTNEED": 4,
        "MADV_FREE": 8, "MADV_REMOVE": 9, "MADV_DONTFORK": 10, "MADV_DOFORK": 11, "MADV_MERGEABLE": 12,
        "MADV_UNMERGEABLE": 13, "MADV_HUGEPAGE": 14, "MADV_NOHUGEPAGE": 15, "MADV_DONTDUMP": 16, "MADV_DODUMP": 17,
        "MADV_WIPEONFORK": 18, "MADV_KEEPONFORK": 19, "MADV_COLD": 20, "MADV_PAGEOUT": 21,
        "MADV_POPULATE_READ": 22, "MADV_POPULATE_WRITE": 23, "MADV_DONTNEED_LOCKED": 24, "MADV_COLLAPSE": 25,
        "MADV_HWPOISON": 100, "MADV_SOFT_OFFLINE": 101, "MADV_GUARD_INSTALL": 102, "MADV_GUARD_REMOVE": 103,
    ]
}
