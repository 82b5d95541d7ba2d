import Testing
@testable import ShootdownVerification

@Suite struct SmapsParserTests {
    static let sample = """
        7ffff5d9b000-7ffff5d9f000 rw-p 00000000 00:00 0 
        Size:                 16 kB
        KernelPageSize:        4 kB
        Rss:                   8 kB
        Anonymous:             8 kB
        AnonHugePages:         0 kB
        THPeligible:           0
        VmFlags: rd wr mr mw me ac 
        7ffff5d9f000-7ffff5da0000 ---s 00000000 00:01 95                         /dev/zero (deleted)
        Size:                  4 kB
        Rss:                   0 kB
        AnonHugePages:      2048 kB
        THPeligible:           1
        VmFlags: sh mr mw me ms 
        7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0                          [stack]
        VmFlags: rd wr mr mw me gd ac 

        """

    @Test func parsesRangesPermissionsNamesAndFields() throws {
        let entries = try SmapsParser.parse(Self.sample)
        #expect(entries.count == 3)
        #expect(entries[0].start == 0x7fff_f5d9_b000 && entries[0].end == 0x7fff_f5d9_f000)
        #expect(entries[0].permissions == "rw-p" && !entries[0].isShared && entries[0].name == "")
        #expect(entries[0].residentKiB == 8 && entries[0].transparentHugePageEligible == false)
        #expect(entries[0].vmFlags == ["rd", "wr", "mr", "mw", "me", "ac"])
        #expect(entries[1].isShared && entries[1].protectionLetters == "---")
        #expect(entries[1].name == "/dev/zero (deleted)")
        #expect(entries[1].anonymousHugeKiB == 2048 && entries[1].transparentHugePageEligible == true)
        #expect(entries[1].vmFlags == ["sh", "mr", "mw", "me", "ms"])
        #expect(entries[2].name == "[stack]" && entries[2].vmFlags.contains("gd"))
        #expect(entries[2].transparentHugePageEligible == nil)
    }

    @Test func acceptsMapsTextWithoutFields() throws {
        let entries = try SmapsParser.parse("555555554000-555555559000 r-xp 00000000 fe:00 123 /bin/true\n")
        #expect(entries.count == 1 && entries[0].vmFlags.isEmpty && entries[0].name == "/bin/true")
    }

    @Test func includeFilterSkipsEntries() throws {
        let bytes = Array(Self.sample.utf8)
        let entries = try bytes.withUnsafeBytes { raw in
            try SmapsParser.parse(raw, include: { start, _ in start != 0x7fff_f5d9_f000 })
        }
        #expect(entries.map(\.start) == [0x7fff_f5d9_b000, 0x7fff_fffd_e000])
    }

    @Test(arguments: [
        "7ffff5d9b000 rw-p 00000000 00:00 0\n",  // no dash
        "7ffff5d9b000-7ffff5d9f000 rw-p\n",  // missing fields
        "Size: 4 kB\n",  // field before any mapping
        "7ffff5d9b000-7ffff5d9f000 rw-p 00000000 00:00 0\n!bad line\n",
    ])
    func rejectsMalformedText(_ text: String) {
        #expect(throws: OracleError.self) { try SmapsParser.parse(text) }
    }

    @Test func vmFlagCodesRoundTrip() {
        let flag = VmFlag("hg")
        #expect(flag.description == "hg" && flag == "hg" && flag != "nh")
    }
}
