import Shootdown

/// One public operation of ``AddressSpace`` (or of a ``SoftwareMirror`` on it), as data: the
/// vocabulary that ``ReferenceModel`` understands. ``apply(to:mirror:)`` runs it on a space,
/// ``apply(to:mirrorWindow:)`` on a model, and their ``ReferenceOutcome``s must be equal.
public enum ReferenceOperation: CustomStringConvertible {
    case map(length: UInt64, protection: Protection, placement: AddressSpace.Placement, options: AddressSpace.MapOptions)
    case unmap(address: UInt64, length: UInt64)
    case protect(address: UInt64, length: UInt64, protection: Protection)
    case remap(address: UInt64, oldLength: UInt64, newLength: UInt64, move: AddressSpace.RemapMove)
    case advise(address: UInt64, length: UInt64, advice: AddressSpace.Advice)
    case fault(address: UInt64, access: AddressSpace.Access)
    case read(address: UInt64)
    case write(token: UInt64, address: UInt64)
    case migrate(address: UInt64, length: UInt64)
    case clearSoftDirty(address: UInt64, length: UInt64)
    case softDirtyPages(address: UInt64, length: UInt64)
    /// `SoftwareMirror.populate` (only generated when the run has a mirror).
    case mirrorPopulate(address: UInt64, length: UInt64, write: Bool)
    case remapFlags(address: UInt64, oldLength: UInt64, newLength: UInt64, flags: UInt32, newAddress: UInt64)
    case lock(address: UInt64, length: UInt64, onFault: Bool)
    case unlock(address: UInt64, length: UInt64)
    case lockAll(flags: UInt32)
    case unlockAll
    case seal(address: UInt64, length: UInt64)
    case residency(address: UInt64, length: UInt64)
    case sync(address: UInt64, length: UInt64, flags: UInt32)
    case setBreak(address: UInt64)
    case teardown

    public var description: String {
        switch self {
        case .map(let length, let protection, let placement, let options):
            let placed: String
            switch placement {
            case .anywhere: placed = "anywhere"
            case .hint(let address): placed = "hint(\(address.hex))"
            case .fixed(let address): placed = "fixed(\(address.hex))"
            case .fixedNoReplace(let address): placed = "fixedNoReplace(\(address.hex))"
            }
            var names: [String] = []
            if options.contains(.shared) { names.append("shared") }
            if options.contains(.locked) { names.append("locked") }
            if options.contains(.populate) { names.append("populate") }
            if options.contains(.hugePage) { names.append("hugePage") }
            return "map(length: \(length.hex), \(protection), \(placed), [\(names.joined(separator: ","))])"
        case .unmap(let address, let length):
            return "unmap(\(address.hex), \(length.hex))"
        case .protect(let address, let length, let protection):
            return "protect(\(address.hex), \(length.hex), \(protection))"
        case .remap(let address, let oldLength, let newLength, let move):
            let how: String
            switch move {
            case .inPlace: how = "inPlace"
            case .mayMove: how = "mayMove"
            case .fixed(let target): how = "fixed(\(target.hex))"
            }
            return "remap(\(address.hex), old: \(oldLength.hex), new: \(newLength.hex), \(how))"
        case .advise(let address, let length, let advice):
            return "advise(\(address.hex), \(length.hex), \(advice))"
        case .fault(let address, let access):
            return "fault(\(address.hex), \(access))"
        case .read(let address):
            return "read(\(address.hex))"
        case .write(let token, let address):
            return "write(\(token.hex), \(address.hex))"
        case .migrate(let address, let length):
            return "migrate(\(address.hex), \(length.hex))"
        case .clearSoftDirty(let address, let length):
            return "clearSoftDirty(\(address.hex), \(length.hex))"
        case .softDirtyPages(let address, let length):
            return "softDirtyPages(\(address.hex), \(length.hex))"
        case .mirrorPopulate(let address, let length, let write):
            return "mirrorPopulate(\(address.hex), \(length.hex), write: \(write))"
        case .teardown:
            return "teardown()"
        case .remapFlags(let address, let oldLength, let newLength, let flags, let newAddress):
            return "remap(\(address.hex), old: \(oldLength.hex), new: \(newLength.hex), flags: \(flags), to: \(newAddress.hex))"
        case .lock(let address, let length, let onFault):
            return "lock(\(address.hex), \(length.hex)\(onFault ? ", onFault" : ""))"
        case .unlock(let address, let length):
            return "unlock(\(address.hex), \(length.hex))"
        case .lockAll(let flags):
            return "lockAll(\(flags))"
        case .unlockAll:
            return "unlockAll()"
        case .seal(let address, let length):
            return "seal(\(address.hex), \(length.hex))"
        case .residency(let address, let length):
            return "residency(\(address.hex), \(length.hex))"
        case .sync(let address, let length, let flags):
            return "sync(\(address.hex), \(length.hex), \(flags))"
        case .setBreak(let address):
            return "setBreak(\(address.hex))"
        }
    }
}
