import Shootdown

/// What an operation returned.
public enum ReferenceOutcome: Equatable, CustomStringConvertible {
    case failed(MemoryError)
    case done
    case address(UInt64)
    case count(Int)
    case token(UInt64)
    case pages([UInt64])
    case residency([Bool])

    public var description: String {
        switch self {
        case .failed(let error): "failed(\(error))"
        case .done: "done"
        case .address(let address): "address(\(address.hex))"
        case .count(let count): "count(\(count))"
        case .token(let token): "token(\(token.hex))"
        case .pages(let pages): "pages(\(pages.map(\.hex)))"
        case .residency(let vector): "residency(\(vector.map { $0 ? "1" : "0" }.joined()))"
        }
    }
}
