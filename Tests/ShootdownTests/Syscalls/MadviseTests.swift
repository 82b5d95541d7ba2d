import Testing

@testable import Shootdown

/// madvise, checked against values measured on the live kernel (see `KernelView.swift` for how the
/// experiments print).
@Suite struct MadviseTests {
    enum Kind: CustomStringConvertible, Sendable {
        case `private`, shared, locked, none, sealedReadOnly, sealedWritable
        var description: String {
            switch self {
            case .private: "private"
            case .shared: "shared"
            case .locked: "locked"
            case .none: "none"
            case .sealedReadOnly: "sealedReadOnly"
            case .sealedWritable: "sealedWritable"
            }
        }
    }

    struct Row: CustomTestStringConvertible, Sendable {
        var kind: Kind
        var advice: Int32
        var result: String
        var view: [String]
        var residency: String
        init(_ kind: Kind, _ advice: Int32, _ result: String, _ view: [String], _ residency: String) {
            self.kind = kind
            self.advice = advice
            self.result = result
            self.view = view
            self.residency = residency
        }
        var testDescription: String { "\(kind) advice \(advice)" }
    }

    /// Every advice number this kernel knows (and 999) on four-page VMAs of six kinds, with the
    /// result, the VMA's smaps line and mincore afterwards. The experiment, one child process per
    /// row: map `[0x200000000, +4 pages)` as
    /// - `private`: private read-write, pages 0 and 1 written;
    /// - `shared`: `MAP_SHARED` read-write, pages 0 and 1 written;
    /// - `locked`: private read-write `MAP_LOCKED` (populated);
    /// - `none`: private `PROT_NONE`;
    /// - `sealedReadOnly`: as `private`, then `mprotect(PROT_READ)` and `mseal`;
    /// - `sealedWritable`: as `private`, then `mseal`;
    /// then `madvise(0x200000000, 4 pages, advice)` and print the result, the VMAs and mincore.
    /// (PAGEOUT and COLD change nothing visible without swap; FREE keeps lazily freed pages
    /// resident until reclaim; HWPOISON and SOFT_OFFLINE are not configured: EINVAL; COLLAPSE finds
    /// no aligned 2 MiB block: EINVAL; REMOVE needs shared memory.)
    @Test(arguments: Self.rows)
    func everyAdviceOnEveryKind(_ row: Row) throws {
        let space = try kernelLikeSpace()
        let b = kernelBase
        switch row.kind {
        case .private:
            try space.map(length: 4 * page, placement: .fixed(b))
            try space.touch(b, pages: 2)
        case .shared:
            try space.map(length: 4 * page, placement: .fixed(b), options: .shared)
            try space.touch(b, pages: 2)
        case .locked:
            try space.map(length: 4 * page, placement: .fixed(b), options: .locked)
        case .none:
            try space.map(length: 4 * page, protection: .none, placement: .fixed(b))
        case .sealedReadOnly:
            try space.map(length: 4 * page, placement: .fixed(b))
            try space.touch(b, pages: 2)
            try space.protect(address: b, length: 4 * page, protection: .read)
            try space.seal(address: b, length: 4 * page)
        case .sealedWritable:
            try space.map(length: 4 * page, placement: .fixed(b))
            try space.touch(b, pages: 2)
            try space.seal(address: b, length: 4 * page)
        }
        let result = outcome { () throws(MemoryError) in
            try space.advise(address: b, length: 4 * page, rawAdvice: row.advice)
        }
        #expect(result == row.result)
        #expect(space.kernelView() == row.view)
        #expect(space.residencyString(b, pages: 4) == row.residency)
    }

    static let rows: [Row] = [
        Row(.private, 0, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac "], "1100"),
        Row(.private, 1, "ok", ["200000000-200004000 rw-p rd wr mr mw me rr ac "], "1100"),
        Row(.private, 2, "ok", ["200000000-200004000 rw-p rd wr mr mw me sr ac "], "1100"),
        Row(.private, 3, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac "], "1100"),
        Row(.private, 4, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac "], "0000"),
        Row(.private, 8, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac "], "1100"),
        Row(.private, 9, "EINVAL", ["200000000-200004000 rw-p rd wr mr mw me ac "], "1100"),
        Row(.private, 10, "ok", ["200000000-200004000 rw-p rd wr mr mw me dc ac "], "1100"),
        Row(.private, 11, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac "], "1100"),
        Row(.private, 12, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac mg "], "1100"),
        Row(.private, 13, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac "], "1100"),
        Row(.private, 14, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac hg "], "1100"),
        Row(.private, 15, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac nh "], "1100"),
        Row(.private, 16, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac dd "], "1100"),
        Row(.private, 17, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac "], "1100"),
        Row(.private, 18, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac wf "], "1100"),
        Row(.private, 19, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac "], "1100"),
        Row(.private, 20, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac "], "1100"),
        Row(.private, 21, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac "], "1100"),
        Row(.private, 22, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac "], "1111"),
        Row(.private, 23, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac "], "1111"),
        Row(.private, 24, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac "], "0000"),
        Row(.private, 25, "EINVAL", ["200000000-200004000 rw-p rd wr mr mw me ac "], "1100"),
        Row(.private, 100, "EINVAL", ["200000000-200004000 rw-p rd wr mr mw me ac "], "1100"),
        Row(.private, 101, "EINVAL", ["200000000-200004000 rw-p rd wr mr mw me ac "], "1100"),
        Row(.private, 102, "ok", ["200000000-200004000 rw-p rd wr mr mw me gu ac "], "0000"),
        Row(.private, 103, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac "], "1100"),
        Row(.private, 999, "EINVAL", ["200000000-200004000 rw-p rd wr mr mw me ac "], "1100"),
        Row(.shared, 0, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms "], "1100"),
        Row(.shared, 1, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms rr "], "1100"),
        Row(.shared, 2, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms sr "], "1100"),
        Row(.shared, 3, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms "], "1100"),
        Row(.shared, 4, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms "], "1100"),
        Row(.shared, 8, "EINVAL", ["200000000-200004000 rw-s rd wr sh mr mw me ms "], "1100"),
        Row(.shared, 9, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms "], "0000"),
        Row(.shared, 10, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms dc "], "1100"),
        Row(.shared, 11, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms "], "1100"),
        Row(.shared, 12, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms "], "1100"),
        Row(.shared, 13, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms "], "1100"),
        Row(.shared, 14, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms hg "], "1100"),
        Row(.shared, 15, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms nh "], "1100"),
        Row(.shared, 16, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms dd "], "1100"),
        Row(.shared, 17, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms "], "1100"),
        Row(.shared, 18, "EINVAL", ["200000000-200004000 rw-s rd wr sh mr mw me ms "], "1100"),
        Row(.shared, 19, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms "], "1100"),
        Row(.shared, 20, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms "], "1100"),
        Row(.shared, 21, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms "], "1100"),
        Row(.shared, 22, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms "], "1111"),
        Row(.shared, 23, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms "], "1111"),
        Row(.shared, 24, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms "], "1100"),
        Row(.shared, 25, "EINVAL", ["200000000-200004000 rw-s rd wr sh mr mw me ms "], "1100"),
        Row(.shared, 100, "EINVAL", ["200000000-200004000 rw-s rd wr sh mr mw me ms "], "1100"),
        Row(.shared, 101, "EINVAL", ["200000000-200004000 rw-s rd wr sh mr mw me ms "], "1100"),
        Row(.shared, 102, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms gu "], "1100"),
        Row(.shared, 103, "ok", ["200000000-200004000 rw-s rd wr sh mr mw me ms "], "1100"),
        Row(.shared, 999, "EINVAL", ["200000000-200004000 rw-s rd wr sh mr mw me ms "], "1100"),
        Row(.locked, 0, "ok", ["200000000-200004000 rw-p rd wr mr mw me lo ac "], "1111"),
        Row(.locked, 1, "ok", ["200000000-200004000 rw-p rd wr mr mw me lo rr ac "], "1111"),
        Row(.locked, 2, "ok", ["200000000-200004000 rw-p rd wr mr mw me lo sr ac "], "1111"),
        Row(.locked, 3, "ok", ["200000000-200004000 rw-p rd wr mr mw me lo ac "], "1111"),
        Row(.locked, 4, "EINVAL", ["200000000-200004000 rw-p rd wr mr mw me lo ac "], "1111"),
        Row(.locked, 8, "EINVAL", ["200000000-200004000 rw-p rd wr mr mw me lo ac "], "1111"),
        Row(.locked, 9, "EINVAL", ["200000000-200004000 rw-p rd wr mr mw me lo ac "], "1111"),
        Row(.locked, 10, "ok", ["200000000-200004000 rw-p rd wr mr mw me lo dc ac "], "1111"),
        Row(.locked, 11, "ok", ["200000000-200004000 rw-p rd wr mr mw me lo ac "], "1111"),
        Row(.locked, 12, "ok", ["200000000-200004000 rw-p rd wr mr mw me lo ac mg "], "1111"),
        Row(.locked, 13, "ok", ["200000000-200004000 rw-p rd wr mr mw me lo ac "], "1111"),
        Row(.locked, 14, "ok", ["200000000-200004000 rw-p rd wr mr mw me lo ac hg "], "1111"),
        Row(.locked, 15, "ok", ["200000000-200004000 rw-p rd wr mr mw me lo ac nh "], "1111"),
        Row(.locked, 16, "ok", ["200000000-200004000 rw-p rd wr mr mw me lo ac dd "], "1111"),
        Row(.locked, 17, "ok", ["200000000-200004000 rw-p rd wr mr mw me lo ac "], "1111"),
        Row(.locked, 18, "ok", ["200000000-200004000 rw-p rd wr mr mw me lo ac wf "], "1111"),
        Row(.locked, 19, "ok", ["200000000-200004000 rw-p rd wr mr mw me lo ac "], "1111"),
        Row(.locked, 20, "EINVAL", ["200000000-200004000 rw-p rd wr mr mw me lo ac "], "1111"),
        Row(.locked, 21, "EINVAL", ["200000000-200004000 rw-p rd wr mr mw me lo ac "], "1111"),
        Row(.locked, 22, "ok", ["200000000-200004000 rw-p rd wr mr mw me lo ac "], "1111"),
        Row(.locked, 23, "ok", ["200000000-200004000 rw-p rd wr mr mw me lo ac "], "1111"),
        Row(.locked, 24, "ok", ["200000000-200004000 rw-p rd wr mr mw me lo ac "], "0000"),
        Row(.locked, 25, "EINVAL", ["200000000-200004000 rw-p rd wr mr mw me lo ac "], "1111"),
        Row(.locked, 100, "EINVAL", ["200000000-200004000 rw-p rd wr mr mw me lo ac "], "1111"),
        Row(.locked, 101, "EINVAL", ["200000000-200004000 rw-p rd wr mr mw me lo ac "], "1111"),
        Row(.locked, 102, "EINVAL", ["200000000-200004000 rw-p rd wr mr mw me lo ac "], "1111"),
        Row(.locked, 103, "ok", ["200000000-200004000 rw-p rd wr mr mw me lo ac "], "1111"),
        Row(.locked, 999, "EINVAL", ["200000000-200004000 rw-p rd wr mr mw me lo ac "], "1111"),
        Row(.none, 0, "ok", ["200000000-200004000 ---p mr mw me "], "0000"),
        Row(.none, 1, "ok", ["200000000-200004000 ---p mr mw me rr "], "0000"),
        Row(.none, 2, "ok", ["200000000-200004000 ---p mr mw me sr "], "0000"),
        Row(.none, 3, "ok", ["200000000-200004000 ---p mr mw me "], "0000"),
        Row(.none, 4, "ok", ["200000000-200004000 ---p mr mw me "], "0000"),
        Row(.none, 8, "ok", ["200000000-200004000 ---p mr mw me "], "0000"),
        Row(.none, 9, "EINVAL", ["200000000-200004000 ---p mr mw me "], "0000"),
        Row(.none, 10, "ok", ["200000000-200004000 ---p mr mw me dc "], "0000"),
        Row(.none, 11, "ok", ["200000000-200004000 ---p mr mw me "], "0000"),
        Row(.none, 12, "ok", ["200000000-200004000 ---p mr mw me mg "], "0000"),
        Row(.none, 13, "ok", ["200000000-200004000 ---p mr mw me "], "0000"),
        Row(.none, 14, "ok", ["200000000-200004000 ---p mr mw me hg "], "0000"),
        Row(.none, 15, "ok", ["200000000-200004000 ---p mr mw me nh "], "0000"),
        Row(.none, 16, "ok", ["200000000-200004000 ---p mr mw me dd "], "0000"),
        Row(.none, 17, "ok", ["200000000-200004000 ---p mr mw me "], "0000"),
        Row(.none, 18, "ok", ["200000000-200004000 ---p mr mw me wf "], "0000"),
        Row(.none, 19, "ok", ["200000000-200004000 ---p mr mw me "], "0000"),
        Row(.none, 20, "ok", ["200000000-200004000 ---p mr mw me "], "0000"),
        Row(.none, 21, "ok", ["200000000-200004000 ---p mr mw me "], "0000"),
        Row(.none, 22, "EINVAL", ["200000000-200004000 ---p mr mw me "], "0000"),
        Row(.none, 23, "EINVAL", ["200000000-200004000 ---p mr mw me "], "0000"),
        Row(.none, 24, "ok", ["200000000-200004000 ---p mr mw me "], "0000"),
        Row(.none, 25, "EINVAL", ["200000000-200004000 ---p mr mw me "], "0000"),
        Row(.none, 100, "EINVAL", ["200000000-200004000 ---p mr mw me "], "0000"),
        Row(.none, 101, "EINVAL", ["200000000-200004000 ---p mr mw me "], "0000"),
        Row(.none, 102, "ok", ["200000000-200004000 ---p mr mw me gu "], "0000"),
        Row(.none, 103, "ok", ["200000000-200004000 ---p mr mw me "], "0000"),
        Row(.none, 999, "EINVAL", ["200000000-200004000 ---p mr mw me "], "0000"),
        Row(.sealedReadOnly, 0, "ok", ["200000000-200004000 r--p rd mr mw me ac sl "], "1100"),
        Row(.sealedReadOnly, 1, "ok", ["200000000-200004000 r--p rd mr mw me rr ac sl "], "1100"),
        Row(.sealedReadOnly, 2, "ok", ["200000000-200004000 r--p rd mr mw me sr ac sl "], "1100"),
        Row(.sealedReadOnly, 3, "ok", ["200000000-200004000 r--p rd mr mw me ac sl "], "1100"),
        Row(.sealedReadOnly, 4, "EPERM", ["200000000-200004000 r--p rd mr mw me ac sl "], "1100"),
        Row(.sealedReadOnly, 8, "EPERM", ["200000000-200004000 r--p rd mr mw me ac sl "], "1100"),
        Row(.sealedReadOnly, 9, "EPERM", ["200000000-200004000 r--p rd mr mw me ac sl "], "1100"),
        Row(.sealedReadOnly, 10, "EPERM", ["200000000-200004000 r--p rd mr mw me ac sl "], "1100"),
        Row(.sealedReadOnly, 11, "ok", ["200000000-200004000 r--p rd mr mw me ac sl "], "1100"),
        Row(.sealedReadOnly, 12, "ok", ["200000000-200004000 r--p rd mr mw me ac mg sl "], "1100"),
        Row(.sealedReadOnly, 13, "ok", ["200000000-200004000 r--p rd mr mw me ac sl "], "1100"),
        Row(.sealedReadOnly, 14, "ok", ["200000000-200004000 r--p rd mr mw me ac hg sl "], "1100"),
        Row(.sealedReadOnly, 15, "ok", ["200000000-200004000 r--p rd mr mw me ac nh sl "], "1100"),
        Row(.sealedReadOnly, 16, "ok", ["200000000-200004000 r--p rd mr mw me ac dd sl "], "1100"),
        Row(.sealedReadOnly, 17, "ok", ["200000000-200004000 r--p rd mr mw me ac sl "], "1100"),
        Row(.sealedReadOnly, 18, "EPERM", ["200000000-200004000 r--p rd mr mw me ac sl "], "1100"),
        Row(.sealedReadOnly, 19, "ok", ["200000000-200004000 r--p rd mr mw me ac sl "], "1100"),
        Row(.sealedReadOnly, 20, "ok", ["200000000-200004000 r--p rd mr mw me ac sl "], "1100"),
        Row(.sealedReadOnly, 21, "ok", ["200000000-200004000 r--p rd mr mw me ac sl "], "1100"),
        Row(.sealedReadOnly, 22, "ok", ["200000000-200004000 r--p rd mr mw me ac sl "], "1111"),
        Row(.sealedReadOnly, 23, "EINVAL", ["200000000-200004000 r--p rd mr mw me ac sl "], "1100"),
        Row(.sealedReadOnly, 24, "EPERM", ["200000000-200004000 r--p rd mr mw me ac sl "], "1100"),
        Row(.sealedReadOnly, 25, "EINVAL", ["200000000-200004000 r--p rd mr mw me ac sl "], "1100"),
        Row(.sealedReadOnly, 100, "EINVAL", ["200000000-200004000 r--p rd mr mw me ac sl "], "1100"),
        Row(.sealedReadOnly, 101, "EINVAL", ["200000000-200004000 r--p rd mr mw me ac sl "], "1100"),
        Row(.sealedReadOnly, 102, "EPERM", ["200000000-200004000 r--p rd mr mw me ac sl "], "1100"),
        Row(.sealedReadOnly, 103, "ok", ["200000000-200004000 r--p rd mr mw me ac sl "], "1100"),
        Row(.sealedReadOnly, 999, "EINVAL", ["200000000-200004000 r--p rd mr mw me ac sl "], "1100"),
        Row(.sealedWritable, 0, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac sl "], "1100"),
        Row(.sealedWritable, 1, "ok", ["200000000-200004000 rw-p rd wr mr mw me rr ac sl "], "1100"),
        Row(.sealedWritable, 2, "ok", ["200000000-200004000 rw-p rd wr mr mw me sr ac sl "], "1100"),
        Row(.sealedWritable, 3, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac sl "], "1100"),
        Row(.sealedWritable, 4, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac sl "], "0000"),
        Row(.sealedWritable, 8, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac sl "], "1100"),
        Row(.sealedWritable, 9, "EINVAL", ["200000000-200004000 rw-p rd wr mr mw me ac sl "], "1100"),
        Row(.sealedWritable, 10, "ok", ["200000000-200004000 rw-p rd wr mr mw me dc ac sl "], "1100"),
        Row(.sealedWritable, 11, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac sl "], "1100"),
        Row(.sealedWritable, 12, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac mg sl "], "1100"),
        Row(.sealedWritable, 13, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac sl "], "1100"),
        Row(.sealedWritable, 14, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac hg sl "], "1100"),
        Row(.sealedWritable, 15, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac nh sl "], "1100"),
        Row(.sealedWritable, 16, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac dd sl "], "1100"),
        Row(.sealedWritable, 17, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac sl "], "1100"),
        Row(.sealedWritable, 18, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac wf sl "], "1100"),
        Row(.sealedWritable, 19, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac sl "], "1100"),
        Row(.sealedWritable, 20, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac sl "], "1100"),
        Row(.sealedWritable, 21, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac sl "], "1100"),
        Row(.sealedWritable, 22, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac sl "], "1111"),
        Row(.sealedWritable, 23, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac sl "], "1111"),
        Row(.sealedWritable, 24, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac sl "], "0000"),
        Row(.sealedWritable, 25, "EINVAL", ["200000000-200004000 rw-p rd wr mr mw me ac sl "], "1100"),
        Row(.sealedWritable, 100, "EINVAL", ["200000000-200004000 rw-p rd wr mr mw me ac sl "], "1100"),
        Row(.sealedWritable, 101, "EINVAL", ["200000000-200004000 rw-p rd wr mr mw me ac sl "], "1100"),
        Row(.sealedWritable, 102, "ok", ["200000000-200004000 rw-p rd wr mr mw me gu ac sl "], "0000"),
        Row(.sealedWritable, 103, "ok", ["200000000-200004000 rw-p rd wr mr mw me ac sl "], "1100"),
        Row(.sealedWritable, 999, "EINVAL", ["200000000-200004000 rw-p rd wr mr mw me ac sl "], "1100"),
    ]
}
