import CInterop

/// Parses the text of `/proc/PID/smaps` (also accepts `/proc/PID/maps`, whose entries then have
/// no flags).
///
/// A mapping starts with its `maps` line (`start-end perms offset dev inode [name]`, lower-case
/// hex); the field lines that follow (`Key: value [kB]`, keys capitalised) belong to it. The
/// harness parses smaps after every operation, in debug builds too, so the line splitting is
/// `cinterop_smaps_scan` (C speed); this turns its records into ``SmapsEntry`` values.
public enum SmapsParser {
    public static func parse(_ text: String) throws(OracleError) -> [SmapsEntry] {
        let bytes = Array(text.utf8)
        let result = bytes.withUnsafeBytes { raw in Result { () throws(OracleError) in try parse(raw) } }
        return try result.get()
    }

    /// Parses `bytes`; only mappings for which `include(start, end)` holds become entries (the
    /// harness skips the child's initial mappings without building their strings).
    public static func parse(
        _ bytes: UnsafeRawBufferPointer, include: (UInt64, UInt64) -> Bool = { _, _ in true }
    ) throws(OracleError) -> [SmapsEntry] {
        guard let base = bytes.baseAddress?.assumingMemoryBound(to: CChar.self), !bytes.isEmpty else { return [] }
        var records = [cinterop_smaps_record](repeating: cinterop_smaps_record(), count: 128)
        var count = 0
        while true {
            var errorOffset = 0
            let found = records.withUnsafeMutableBufferPointer { buffer in
                cinterop_smaps_scan(base, bytes.count, buffer.baseAddress, buffer.count, &errorOffset)
            }
            if found < 0 {
                let line = bytes[errorOffset...].prefix { $0 != 0x0A }
                throw .procfs(path: "smaps", reason: "malformed line: \(String(decoding: line, as: UTF8.self))")
            }
            count = Int(found)
            if count <= records.count { break }
            records = [cinterop_smaps_record](repeating: cinterop_smaps_record(), count: count)
        }
        let text = bytes.assumingMemoryBound(to: UInt8.self)
        func string(_ offset: UInt32, _ length: UInt32) -> String {
            String(decoding: UnsafeBufferPointer(rebasing: text[Int(offset)..<Int(offset + length)]), as: UTF8.self)
        }
        var entries: [SmapsEntry] = []
        entries.reserveCapacity(count)
        for record in records.prefix(count) where include(record.start, record.end) {
            // The kernel prints each flag as two letters and a space.
            var flags: [VmFlag] = []
            var cursor = Int(record.flags)
            let flagsEnd = cursor + Int(record.flags_length)
            while cursor + 1 < flagsEnd {
                flags.append(VmFlag(text[cursor], text[cursor + 1]))
                cursor += 3
            }
            let eligible = record.transparent_huge_page_eligible
            entries.append(
                SmapsEntry(
                    start: record.start, end: record.end, permissions: string(record.permissions, 4),
                    name: string(record.name, record.name_length), vmFlags: flags,
                    transparentHugePageEligible: eligible < 0 ? nil : eligible == 1, residentKiB: record.rss_kib,
                    anonymousHugeKiB: record.anonymous_huge_kib))
        }
        return entries
    }
}
