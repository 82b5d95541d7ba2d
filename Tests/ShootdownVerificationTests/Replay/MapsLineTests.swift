import Testing
@testable import ShootdownVerification

/// `/proc/PID/maps` text as the kernel prints it, and text that is not: a typed error naming the
/// line, never a trap.
@Suite struct MapsLineTests {
    @Test func readsTheKernelsLines() throws {
        let lines = try MapsLine.parse("""
            556d3bb6f000-556d3bb70000 r--p 00000000 fe:00 16384417                   /tmp/a b/prog
            556d7723d000-556d7725d000 rw-p 00000000 00:00 0                          [heap]
            7f2f1e94e000-7f2f1e952000 rw-p 00000000 00:00 0 

            ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
            """)
        #expect(lines == [
            MapsLine(start: 0x556d_3bb6_f000, end: 0x556d_3bb7_0000, permissions: "r--p", path: "/tmp/a b/prog"),
            MapsLine(start: 0x556d_7723_d000, end: 0x556d_7725_d000, permissions: "rw-p", path: "[heap]"),
            MapsLine(start: 0x7f2f_1e94_e000, end: 0x7f2f_1e95_2000, permissions: "rw-p"),
            MapsLine(start: 0xffff_ffff_ff60_0000, end: 0xffff_ffff_ff60_1000, permissions: "--xp", path: "[vsyscall]"),
        ])
    }

    @Test(arguments: [
        ("1000-2000 rw-p 0 00:00\n", 1),
        ("1000-2000 rw-p 0 00:00 0\n2000 rw-p 0 00:00 0\n", 2),
        ("2000-1000 rw-p 0 00:00 0\n", 1),
        ("1000-2000 rw-p 0 00:00 0\n\n1000-zz00 rw-p 0 00:00 0\n", 3),
        ("1000-2000 rw 0 00:00 0\n", 1),
        ("1000-2000 rw-p xyz 00:00 0\n", 1),
        ("1000-2000-3000 rw-p 0 00:00 0\n", 1),
    ])
    func malformedLinesNameTheirLine(text: String, line: Int) {
        do {
            _ = try MapsLine.parse(text)
            Issue.record("\(text.debugDescription) was read")
        } catch {
            guard case .malformedLine(let reported, _) = error else { return }
            #expect(reported == line)
            #expect(error.description.hasPrefix("line \(line) is not a /proc/PID/maps line: "))
        }
    }

    /// Mutated maps text never traps the parser.
    @Test func arbitraryTextNeverTraps() {
        let seed = Array("7f2f1e94e000-7f2f1e952000 rw-p 00002000 fe:00 465 /etc/ld.so.cache\n".utf8)
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        for _ in 0..<2000 {
            var bytes = seed
            for _ in 0..<4 {
                state = state &* 6364136223846793005 &+ 1442695040888963407
                let position = Int(state >> 33) % bytes.count
                switch state & 3 {
                case 0: bytes[position] = UInt8(truncatingIfNeeded: state >> 17)
                case 1: bytes.insert(UInt8(truncatingIfNeeded: state >> 17), at: position)
                default: if bytes.count > 1 { bytes.remove(at: position) }
                }
            }
            _ = try? MapsLine.parse(String(decoding: bytes, as: UTF8.self))
        }
    }
}
