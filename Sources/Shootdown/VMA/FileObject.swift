/// A file that address spaces map (`mmap` of a file descriptor), identified by its path: the
/// engine's model of an inode's page cache.
///
/// Its pages are shared by every mapping of the file, in any space using the same
/// ``PhysicalMemory``: a `MAP_SHARED` mapping maps them directly (a store is seen by every other
/// mapping of that page), a `MAP_PRIVATE` mapping maps them read-only and copies a page on its
/// first write to it (copy-on-write from the object's page; the copy is anonymous memory of that
/// VMA, as in Linux). A page never written reads as zero.
///
/// What is not modelled: the file's size (Linux raises `SIGBUS` past the end of the file; here
/// every page exists), its contents on disk, writeback, and `read`/`write` on the file. Create one
/// object per file and pass it to every mapping of that file: mappings of one object merge when
/// their offsets are contiguous (see ``AddressSpace/map(file:offset:length:protection:placement:options:access:)``);
/// two objects with the same path are two different files.
///
/// Lifetime: the object keeps its cached pages while it or any mapping of it lives.
public final class FileObject: Sendable, CustomStringConvertible {
    /// The path that identifies the file (printed in ``Mapping/path`` and `mapsText()`).
    public let path: String
    /// The memory holding the file's pages.
    public let memory: PhysicalMemory
    let object: SharedMemoryObject

    /// A file with no cached pages yet.
    public init(path: String, memory: PhysicalMemory) {
        self.path = path
        self.memory = memory
        object = SharedMemoryObject(memory: memory, path: path)
    }

    /// The content token of the file's page `index` (page offset, in pages): 0 when it was never
    /// written through a shared mapping.
    public func token(atPage index: UInt64) -> UInt64 { object.token(at: index) }

    public var description: String { "FileObject(\(path))" }
}
