import CInterop

/// Reads whole `/proc` files into a reusable buffer that grows as needed (smaps of a process with a
/// few hundred mappings is a few hundred KiB). The one wrapper of `cinterop_read_file`.
final class ProcFile {
    private var buffer: UnsafeMutableRawBufferPointer

    init(initialCapacity: Int = 1 << 20) {
        buffer = .allocate(byteCount: initialCapacity, alignment: 16)
    }

    deinit { buffer.deallocate() }

    /// Calls `body` with the file's bytes (valid only during the call).
    func withContents<R>(of path: String, _ body: (UnsafeRawBufferPointer) throws(OracleError) -> R)
        throws(OracleError) -> R
    {
        while true {
            let length = path.withCString { cinterop_read_file($0, buffer.baseAddress!, buffer.count) }
            if length == -27 {  // EFBIG: grow and read again
                let larger = UnsafeMutableRawBufferPointer.allocate(byteCount: buffer.count * 2, alignment: 16)
                buffer.deallocate()
                buffer = larger
                continue
            }
            if length < 0 { throw .procfs(path: path, reason: LinuxABI.errnoName(Int32(-length))) }
            return try body(UnsafeRawBufferPointer(rebasing: buffer[0..<Int(length)]))
        }
    }

    /// The file as text.
    func text(of path: String) throws(OracleError) -> String {
        try withContents(of: path) { bytes in String(decoding: bytes, as: UTF8.self) }
    }

    /// A one-shot read of a small file as text.
    static func text(of path: String) throws(OracleError) -> String {
        try ProcFile(initialCapacity: 1 << 16).text(of: path)
    }
}
