import Shootdown

extension ReferenceOperation {
    /// Applies the operation to `space` (``mirrorPopulate(address:length:write:)`` to `mirror`,
    /// which must then exist) and returns what it returned or threw.

    public func apply(to space: AddressSpace, mirror: SoftwareMirror?) -> ReferenceOutcome {
        do throws(MemoryError) {
            switch self {
            case .map(let length, let protection, let placement, let options):
                return .address(try space.map(length: length, protection: protection, placement: placement, options: options))
            case .unmap(let address, let length):
                try space.unmap(address: address, length: length)
            case .protect(let address, let length, let protection):
                try space.protect(address: address, length: length, protection: protection)
            case .remap(let address, let oldLength, let newLength, let move):
                return .address(try space.remap(address: address, oldLength: oldLength, newLength: newLength, move: move))
            case .advise(let address, let length, let advice):
                try space.advise(address: address, length: length, advice: advice)
            case .fault(let address, let access):
                try space.fault(at: address, access: access)
            case .read(let address):
                return .token(try space.read(at: address))
            case .write(let token, let address):
                try space.write(token, at: address)
            case .migrate(let address, let length):
                return .count(try space.migrate(address: address, length: length))
            case .clearSoftDirty(let address, let length):
                try space.clearSoftDirty(address: address, length: length)
            case .softDirtyPages(let address, let length):
                return .pages(try space.softDirtyPages(address: address, length: length))
            case .mirrorPopulate(let address, let length, let write):
                try mirror!.populate(address: address, length: length, write: write)
            case .teardown:
                space.teardown()
            case .remapFlags(let address, let oldLength, let newLength, let flags, let newAddress):
                return .address(try space.remap(
                    address: address, oldLength: oldLength, newLength: newLength, flags: .init(rawValue: flags), newAddress: newAddress))
            case .lock(let address, let length, let onFault):
                try space.lock(address: address, length: length, onFault: onFault)
            case .unlock(let address, let length):
                try space.unlock(address: address, length: length)
            case .lockAll(let flags):
                try space.lockAll(.init(rawValue: flags))
            case .unlockAll:
                try space.unlockAll()
            case .seal(let address, let length):
                try space.seal(address: address, length: length)
            case .residency(let address, let length):
                return .residency(try space.residency(address: address, length: length))
            case .sync(let address, let length, let flags):
                try space.sync(address: address, length: length, flags: .init(rawValue: flags))
            case .setBreak(let address):
                return .address(try space.setBreak(address))
            }
            return .done
        } catch {
            return .failed(error)
        }
    }

    /// Applies the operation to `model`; `mirrorWindow` is the range of the mirror that
    /// ``mirrorPopulate(address:length:write:)`` populates (its bounds checks are the mirror's).
    public func apply(to model: ReferenceModel, mirrorWindow: Range<UInt64>?) -> ReferenceOutcome {
        do throws(MemoryError) {
            switch self {
            case .map(let length, let protection, let placement, let options):
                return .address(try model.map(length: length, protection: protection, placement: placement, options: options))
            case .unmap(let address, let length):
                try model.unmap(address: address, length: length)
            case .protect(let address, let length, let protection):
                try model.protect(address: address, length: length, protection: protection)
            case .remap(let address, let oldLength, let newLength, let move):
                return .address(try model.remap(address: address, oldLength: oldLength, newLength: newLength, move: move))
            case .advise(let address, let length, let advice):
                try model.advise(address: address, length: length, advice: advice)
            case .fault(let address, let access):
                try model.fault(at: address, access: access)
            case .read(let address):
                return .token(try model.read(at: address))
            case .write(let token, let address):
                try model.write(token, at: address)
            case .migrate(let address, let length):
                return .count(try model.migrate(address: address, length: length))
            case .clearSoftDirty(let address, let length):
                try model.clearSoftDirty(address: address, length: length)
            case .softDirtyPages(let address, let length):
                return .pages(try model.softDirtyPages(address: address, length: length))
            case .mirrorPopulate(let address, let length, let write):
                // SoftwareMirror.populate checks the bounds of its interval (the length rounded up
                // to pages), then faults the range.
                guard let mirrorWindow else { throw .invalidArgument }
                let page = AddressSpace.pageSize
                let rounded = (length &+ page &- 1) & ~(page - 1)
                guard address % page == 0, length != 0, rounded >= length, mirrorWindow.contains(address),
                    rounded <= mirrorWindow.upperBound - address
                else { throw .invalidArgument }
                try model.faultRange(address, address + rounded, write: write)
            case .teardown:
                model.teardown()
            case .remapFlags(let address, let oldLength, let newLength, let flags, let newAddress):
                return .address(try model.remap(
                    address: address, oldLength: oldLength, newLength: newLength, flags: .init(rawValue: flags), newAddress: newAddress))
            case .lock(let address, let length, let onFault):
                try model.lock(address: address, length: length, onFault: onFault)
            case .unlock(let address, let length):
                try model.unlock(address: address, length: length)
            case .lockAll(let flags):
                try model.lockAll(.init(rawValue: flags))
            case .unlockAll:
                try model.unlockAll()
            case .seal(let address, let length):
                try model.seal(address: address, length: length)
            case .residency(let address, let length):
                return .residency(try model.residency(address: address, length: length))
            case .sync(let address, let length, let flags):
                try model.sync(address: address, length: length, flags: .init(rawValue: flags))
            case .setBreak(let address):
                return .address(try model.setBreak(address))
            }
            return .done
        } catch {
            return .failed(error)
        }
    }
}
