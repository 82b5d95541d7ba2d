/// Reads strace logs (`strace -f -y -e trace=memory,process -o LOG program`) into
/// ``TraceEvent``s.
///
/// Line shapes it reads, each with an optional pid prefix (`1234 ` as `-f -o` writes it, or
/// `[pid 1234] ` as `-f` prints it on a terminal) and an optional timestamp (`-t`, `-tt`,
/// `-ttt`, `-r`):
/// - `name(arguments) = result`, the result being `0x7f...`, a number, `-1 ENAME (message)` or
///   `?`, optionally followed by anything (`-T` times, `-y` paths, flags);
/// - `name(arguments <unfinished ...>` and later, for the same pid, `<... name resumed>rest`:
///   rejoined into one call at the resumed line (a ``TraceEvent/Kind/started(name:text:)`` event
///   marks where it began);
/// - `--- SIGNAL {...} ---`, `+++ exited with N +++`, `+++ killed by SIGNAL +++`,
///   `+++ superseded by execve in pid N +++`, `strace: message`, and blank lines (skipped).
///
/// Anything else is malformed: reading stops with ``TraceError/malformedLine(line:reason:)``
/// naming the line. Reading is linear in the input and never traps, whatever the bytes.
public enum StraceReader {
    /// The events of a log given as text. `pid` is the process of a per-process file
    /// (`strace -ff -o LOG` writes `LOG.PID` files without pid prefixes); lines with a pid prefix
    /// keep theirs.
    public static func events(in text: String, pid: Int? = nil) throws(TraceError) -> [TraceEvent] {
        var reader = LineReader(defaultPID: pid)
        var lineNumber = 0
        var utf8 = Array(text.utf8)
        if utf8.last != UInt8(ascii: "\n") { utf8.append(UInt8(ascii: "\n")) }
        var lineStart = 0
        for index in utf8.indices where utf8[index] == UInt8(ascii: "\n") {
            lineNumber += 1
            var end = index
            if end > lineStart && utf8[end - 1] == UInt8(ascii: "\r") { end -= 1 }
            try reader.read(utf8[lineStart..<end], line: lineNumber)
            lineStart = index + 1
        }
        reader.finish()
        return reader.events
    }

    /// The events of a log given as bytes: ``TraceError/notText(reason:)`` when they are not
    /// UTF-8 text (a binary file, a compressed log).
    public static func events(inBytes bytes: [UInt8], pid: Int? = nil) throws(TraceError) -> [TraceEvent] {
        if let zero = bytes.firstIndex(of: 0) {
            throw .notText(reason: "it contains a zero byte at offset \(zero)")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw .notText(reason: "it is not valid UTF-8")
        }
        return try events(in: text, pid: pid)
    }

    /// The events of per-process files (`strace -ff -o LOG` makes `LOG.PID` for each process),
    /// each read with its pid, merged into one sequence: each file's events stay in order, and the
    /// events of a process created by a `clone`, `clone3`, `fork` or `vfork` of another file are
    /// placed right after that call (what a vfork does; a fork's child owns its own space, so
    /// the order between it and its parent does not matter). Threads (`CLONE_VM`) cannot be
    /// interleaved exactly this way: their events come after their creator's call, in one
    /// block. Files nobody created come one after the other, lowest pid first. Line numbers stay
    /// those of each file.
    public static func merge(perProcess files: [(pid: Int, events: [TraceEvent])]) -> [TraceEvent] {
        var byPID: [Int: [TraceEvent]] = [:]
        for file in files { byPID[file.pid, default: []].append(contentsOf: file.events) }
        var created: Set<Int> = []
        for events in byPID.values {
            for event in events {
                if case .call(let call) = event.kind, Self.createsProcess(call.name), let child = call.result.value,
                    child != 0, let pid = Int(exactly: child), byPID[pid] != nil
                {
                    created.insert(pid)
                }
            }
        }
        var merged: [TraceEvent] = []
        var emitted: Set<Int> = []
        // Iterative depth-first splice (no recursion: a long chain of forks cannot overflow).
        var stack: [(pid: Int, next: Int)] = []
        for root in byPID.keys.sorted() where !created.contains(root) {
            stack.append((root, 0))
            emitted.insert(root)
            while let top = stack.last {
                let events = byPID[top.pid] ?? []
                guard top.next < events.count else {
                    stack.removeLast()
                    continue
                }
                let event = events[top.next]
                stack[stack.count - 1].next += 1
                merged.append(event)
                if case .call(let call) = event.kind, Self.createsProcess(call.name), let child = call.result.value,
                    let pid = Int(exactly: child), byPID[pid] != nil, emitted.insert(pid).inserted
                {
                    stack.append((pid, 0))
                }
            }
        }
        // Files only reachable from a cycle of creations (not a real log): appended as they are.
        for pid in byPID.keys.sorted() where !emitted.contains(pid) { merged.append(contentsOf: byPID[pid] ?? []) }
        return merged
    }

    /// Whether `name` creates a process or thread.
    static func createsProcess(_ name: String) -> Bool {
        name == "clone" || name == "clone3" || name == "fork" || name == "vfork"
    }
}

/// Why a log could not be read.
public enum TraceError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A line matches no shape strace writes.
    case malformedLine(line: Int, reason: String)
    /// The input is not text.
    case notText(reason: String)

    public var description: String {
        switch self {
        case .malformedLine(let line, let reason): return "line \(line) is not an strace line: \(reason)"
        case .notText(let reason): return "this is not an strace log (a text file): \(reason)"
        }
    }
}

/// The line-by-line state: pending halves of interrupted calls.
struct LineReader {
    let defaultPID: Int?
    var events: [TraceEvent] = []
    /// Interrupted calls by pid (`-1` for no pid): first line and text so far.
    var pending: [Int: (line: Int, name: String, text: [UInt8])] = [:]

    init(defaultPID: Int?) { self.defaultPID = defaultPID }

    mutating func read(_ raw: ArraySlice<UInt8>, line: Int) throws(TraceError) {
        var rest = raw.drop { $0 == 0x20 || $0 == 0x09 }
        if rest.isEmpty { return }
        var pid = defaultPID
        // `[pid 1234] ` or `1234 `.
        if rest.starts(with: Array("[pid".utf8)) {
            guard let close = rest.firstIndex(of: UInt8(ascii: "]")),
                let number = Syntax.integer(rest[(rest.startIndex + 4)..<close].drop { $0 == 0x20 })
            else { throw .malformedLine(line: line, reason: "a [pid N] prefix without its number") }
            pid = number
            rest = rest[(close + 1)...].drop { $0 == 0x20 }
        } else if let space = rest.firstIndex(of: 0x20), let number = Syntax.integer(rest[..<space]) {
            pid = number
            rest = rest[space...].drop { $0 == 0x20 }
        }
        // A timestamp (`12:34:56`, `12:34:56.123456`, `1700000000.123456`, `0.000123`).
        if let space = rest.firstIndex(of: 0x20), space > rest.startIndex,
            rest[..<space].allSatisfy({ Syntax.isDigit($0) || $0 == UInt8(ascii: ":") || $0 == UInt8(ascii: ".") }),
            rest[..<space].contains(where: { $0 == UInt8(ascii: ":") || $0 == UInt8(ascii: ".") })
        {
            rest = rest[space...].drop { $0 == 0x20 }
        }
        if rest.isEmpty { throw .malformedLine(line: line, reason: "a prefix with nothing after it") }
        let text = String(decoding: rest, as: UTF8.self)
        if text.hasPrefix("---") {
            guard text.hasSuffix("---"), text.utf8.count >= 6 else {
                throw .malformedLine(line: line, reason: "a signal line must end with ---")
            }
            events.append(TraceEvent(line: line, pid: pid, kind: .signal(String(text.dropFirst(3).dropLast(3)).trimmingWhitespace)))
            return
        }
        if text.hasPrefix("+++") {
            try readEnd(text, pid: pid, line: line)
            return
        }
        if text.hasPrefix("strace: ") {
            events.append(TraceEvent(line: line, pid: pid, kind: .note(String(text.dropFirst(8)))))
            return
        }
        let key = pid ?? -1
        if rest.starts(with: Array("<... ".utf8)) {
            let afterMarker = rest.dropFirst(5)
            guard let nameEnd = afterMarker.firstIndex(of: 0x20), afterMarker[nameEnd...].starts(with: Array(" resumed>".utf8))
            else { throw .malformedLine(line: line, reason: "expected <... name resumed>") }
            let name = String(decoding: afterMarker[..<nameEnd], as: UTF8.self)
            guard let started = pending[key], started.name == name else {
                throw .malformedLine(
                    line: line, reason: "it resumes a \(name) call that no earlier line\(pid.map { " of pid \($0)" } ?? "") started")
            }
            pending[key] = nil
            let joined = started.text + Array(afterMarker[(nameEnd + 9)...])
            try readCall(joined[...], pid: pid, line: line, startLine: started.line)
            return
        }
        try readCall(rest, pid: pid, line: line, startLine: nil)
    }

    /// `+++ exited with N +++` and its kin; calls the process left unfinished end here.
    mutating func readEnd(_ text: String, pid: Int?, line: Int) throws(TraceError) {
        guard text.hasSuffix("+++"), text.utf8.count >= 6 else {
            throw .malformedLine(line: line, reason: "an exit line must end with +++")
        }
        let body = String(text.dropFirst(3).dropLast(3)).trimmingWhitespace
        let kind: TraceEvent.Kind
        if body.hasPrefix("exited with "), let status = Int(body.dropFirst(12)) {
            kind = .exited(status: status)
        } else if body.hasPrefix("killed by ") {
            kind = .killed(signal: String(body.dropFirst(10).prefix { $0 != " " }))
        } else if body.hasPrefix("superseded by execve in pid "), let other = Int(body.dropFirst(28)) {
            kind = .superseded(by: other)
        } else {
            throw .malformedLine(line: line, reason: "unknown process end \"\(body.prefix(60))\"")
        }
        flushPending(pid ?? -1)
        events.append(TraceEvent(line: line, pid: pid, kind: kind))
    }

    /// Emits the interrupted call of `key`, if any, with no result.
    mutating func flushPending(_ key: Int) {
        guard let started = pending.removeValue(forKey: key) else { return }
        var text = started.text
        // The arguments printed so far, closed so they split.
        text.append(UInt8(ascii: ")"))
        let arguments = (try? Syntax.callParts(text[...]))?.arguments ?? []
        events.append(TraceEvent(
            line: started.line, pid: key == -1 ? nil : key,
            kind: .call(SystemCall(name: started.name, arguments: arguments, result: .none, startLine: started.line))))
    }

    /// Calls still unfinished at the end of the log.
    mutating func finish() {
        for key in pending.keys.sorted(by: { pending[$0]!.line < pending[$1]!.line }) { flushPending(key) }
    }

    /// `name(args) = result` or `name(args <unfinished ...>`.
    mutating func readCall(_ text: ArraySlice<UInt8>, pid: Int?, line: Int, startLine: Int?) throws(TraceError) {
        guard let open = text.firstIndex(of: UInt8(ascii: "(")), open > text.startIndex,
            text[..<open].allSatisfy(Syntax.isNameByte)
        else {
            throw .malformedLine(line: line, reason: "expected a system call, name(arguments) = result")
        }
        let name = String(decoding: text[..<open], as: UTF8.self)
        let marker = Array(" <unfinished ...>".utf8)
        var trimmed = text
        while let last = trimmed.last, last == 0x20 { trimmed.removeLast() }
        if trimmed.count >= marker.count, trimmed.suffix(marker.count).elementsEqual(marker) {
            let key = pid ?? -1
            if pending[key] != nil {
                throw .malformedLine(line: line, reason: "a second unfinished call of one process")
            }
            let started = Array(trimmed.dropLast(marker.count))
            pending[key] = (line, name, started)
            events.append(TraceEvent(line: line, pid: pid, kind: .started(name: name, text: String(decoding: started, as: UTF8.self))))
            return
        }
        let parts: (arguments: [String], close: Int)
        do throws(SyntaxError) {
            parts = try Syntax.callParts(text)
        } catch {
            throw .malformedLine(line: line, reason: error.reason)
        }
        var after = text[(parts.close + 1)...].drop { $0 == 0x20 }
        guard after.first == UInt8(ascii: "=") else {
            throw .malformedLine(line: line, reason: "no \"= result\" after the arguments")
        }
        after = after.dropFirst().drop { $0 == 0x20 }
        guard let result = Syntax.result(after) else {
            throw .malformedLine(line: line, reason: "unreadable result \"\(String(decoding: after.prefix(40), as: UTF8.self))\"")
        }
        events.append(TraceEvent(
            line: line, pid: pid,
            kind: .call(SystemCall(name: name, arguments: parts.arguments, result: result, startLine: startLine))))
    }
}
