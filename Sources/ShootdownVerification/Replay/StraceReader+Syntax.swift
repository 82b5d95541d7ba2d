/// A syntax error inside one line.
struct SyntaxError: Error {
    var reason: String
}

/// The lexical pieces of strace's output.
enum Syntax {
    static func isDigit(_ byte: UInt8) -> Bool { byte >= 0x30 && byte <= 0x39 }

    static func isNameByte(_ byte: UInt8) -> Bool {
        isDigit(byte) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A) || byte == UInt8(ascii: "_")
    }

    /// A non-negative decimal integer of at most 9 digits (a pid, a status).
    static func integer(_ bytes: ArraySlice<UInt8>) -> Int? {
        guard !bytes.isEmpty, bytes.count <= 9, bytes.allSatisfy(isDigit) else { return nil }
        return bytes.reduce(0) { $0 * 10 + Int($1 - 0x30) }
    }

    /// The arguments of `name(...)` split at top-level commas, and the index of the closing
    /// parenthesis. Quotes (with backslash escapes), brackets of every kind and `-y` annotations
    /// (`3</path, with commas>`, nested with `-yy`) are skipped over.
    static func callParts(_ text: ArraySlice<UInt8>) throws(SyntaxError) -> (arguments: [String], close: Int) {
        guard let open = text.firstIndex(of: UInt8(ascii: "(")) else { throw SyntaxError(reason: "no (") }
        var depth = 0  // (), [], {} inside the arguments
        var angle = 0  // <...> after a file descriptor
        var inQuote = false
        var escaped = false
        var arguments: [String] = []
        var argumentStart = open + 1
        var index = open + 1
        func add(_ end: Int) {
            let piece = String(decoding: text[argumentStart..<end], as: UTF8.self).trimmingWhitespace
            if !(piece.isEmpty && arguments.isEmpty && end == argumentStart) || !piece.isEmpty { arguments.append(piece) }
        }
        while index < text.endIndex {
            let byte = text[index]
            if inQuote {
                if escaped {
                    escaped = false
                } else if byte == UInt8(ascii: "\\") {
                    escaped = true
                } else if byte == UInt8(ascii: "\"") {
                    inQuote = false
                }
            } else if angle > 0 {
                if byte == UInt8(ascii: "<") {
                    angle += 1
                } else if byte == UInt8(ascii: ">") {
                    angle -= 1
                }
            } else {
                switch byte {
                case UInt8(ascii: "\""): inQuote = true
                case UInt8(ascii: "<"):
                    // `3</path>`: only right after a digit (a file descriptor).
                    if index > text.startIndex && isDigit(text[index - 1]) { angle = 1 }
                case UInt8(ascii: "("), UInt8(ascii: "["), UInt8(ascii: "{"): depth += 1
                case UInt8(ascii: "]"), UInt8(ascii: "}"):
                    depth -= 1
                    if depth < 0 { throw SyntaxError(reason: "unbalanced brackets in the arguments") }
                case UInt8(ascii: ")"):
                    if depth == 0 {
                        add(index)
                        if arguments == [""] { arguments = [] }
                        return (arguments, index)
                    }
                    depth -= 1
                case UInt8(ascii: ","):
                    if depth == 0 {
                        add(index)
                        argumentStart = index + 1
                    }
                default: break
                }
            }
            index += 1
        }
        throw SyntaxError(reason: inQuote ? "an unterminated string" : "the arguments never close")
    }

    /// A result: `?`, `-1 ENAME (message)`, or a number, with anything after it.
    static func result(_ bytes: ArraySlice<UInt8>) -> SystemCallResult? {
        let token = bytes.prefix { $0 != 0x20 && $0 != UInt8(ascii: "<") }
        if token.elementsEqual("?".utf8) { return .unknown }
        if token.elementsEqual("-1".utf8) {
            let rest = bytes.dropFirst(token.count).drop { $0 == 0x20 }
            let name = rest.prefix(while: isNameByte)
            // `-1 ENOMEM (...)`; a bare -1 is the value -1.
            if let first = name.first, first == UInt8(ascii: "E") { return .failure(errno: String(decoding: name, as: UTF8.self)) }
            return .value(UInt64.max)
        }
        guard let value = number(token) else { return nil }
        return .value(value)
    }

    /// `0x1f`, `42`, `-5` (as its two's complement) or `NULL`; `nil` otherwise (or on overflow).
    static func number(_ token: some Collection<UInt8>) -> UInt64? {
        if token.elementsEqual("NULL".utf8) { return 0 }
        var digits = Substring(String(decoding: token, as: UTF8.self))
        var negative = false
        if digits.hasPrefix("-") {
            negative = true
            digits = digits.dropFirst()
        }
        let value: UInt64?
        if digits.hasPrefix("0x") {
            value = digits.count > 2 ? UInt64(digits.dropFirst(2), radix: 16) : nil
        } else {
            value = UInt64(digits)
        }
        guard let value else { return nil }
        if negative {
            guard value <= UInt64(Int64.max) else { return nil }
            return UInt64(bitPattern: -Int64(value))
        }
        return value
    }

    /// An argument as a number: `0x1f`, `42`, `NULL`, a descriptor with its path (`3</lib>`: 3),
    /// or a number followed by a comment (`0x8 /* MLOCK_??? */`).
    static func argumentNumber(_ argument: String) -> UInt64? {
        let head = argument.utf8.prefix { $0 != 0x20 && $0 != UInt8(ascii: "<") }
        return number(head)
    }
}
