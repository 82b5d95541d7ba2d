import Shootdown

/// The observable state of one page.
public struct PageView: Equatable, CustomStringConvertible {
    public enum Kind: String {
        case none, present, protNone, swapped, unknown
    }

    public var kind: Kind
    public var writable = false
    public var softDirty = false
    public var zeroPage = false
    public var token: UInt64 = 0

    public var description: String {
        kind == .none
            ? "none"
            : "\(kind.rawValue)(token: \(token.hex)\(writable ? ", writable" : "")\(softDirty ? ", soft-dirty" : "")"
                + "\(zeroPage ? ", zero page" : ""))"
    }

    /// What the library's page table says (no fault, no side effect).
    public init(space: AddressSpace, page: UInt64) {
        guard let entry = space.translate(page) else {
            self.init(kind: .none)
            return
        }
        if let slot = entry.swapSlot {
            self.init(kind: .swapped, softDirty: entry.isSoftDirty, token: space.memory.swap.token(of: slot))
        } else if let frame = entry.frame {
            self.init(
                kind: entry.isPresent ? .present : .protNone, writable: entry.isWritable,
                softDirty: entry.isSoftDirty, zeroPage: frame == PhysicalMemory.zeroFrame,
                token: space.memory.token(of: frame))
        } else {
            self.init(kind: .unknown, token: entry.rawValue)
        }
    }

    /// What the model says.
    public init(model: ReferenceModel, page: UInt64) {
        guard let entry = model.pages[page] else {
            self.init(kind: .none)
            return
        }
        switch entry.residence {
        case .mapped:
            self.init(
                kind: .present, writable: entry.writable, softDirty: entry.softDirty,
                zeroPage: entry.content == .zeroPage, token: model.token(of: entry))
        case .protNone:
            self.init(
                kind: .protNone, softDirty: entry.softDirty, zeroPage: entry.content == .zeroPage,
                token: model.token(of: entry))
        case .swapped:
            self.init(kind: .swapped, softDirty: entry.softDirty, token: model.token(of: entry))
        }
    }

    public init(kind: Kind, writable: Bool = false, softDirty: Bool = false, zeroPage: Bool = false, token: UInt64 = 0) {
        self.kind = kind
        self.writable = writable
        self.softDirty = softDirty
        self.zeroPage = zeroPage
        self.token = token
    }
}
