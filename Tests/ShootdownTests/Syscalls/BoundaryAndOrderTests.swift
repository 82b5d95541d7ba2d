import Testing

@testable import Shootdown

/// Errnos at the top of the user address space (`TASK_SIZE`, 0x7ffffffff000) and which errno wins
/// when several checks fail, against values measured on the live kernel (one process, the calls
/// in this order, as root; see `KernelView.swift`).
@Suite struct BoundaryAndOrderTests {
    let top = AddressSpace.userLimit
    let b = kernelBase

    func run(_ body: () throws(MemoryError) -> Void) -> String { outcome(body) }

    /// Kernel: `MAP_FIXED_NOREPLACE` of the last page below TASK_SIZE works, of two pages from
    /// there or one at TASK_SIZE is ENOMEM. With that page mapped: mprotect, madvise(DONTNEED),
    /// mlock, msync and mincore of it succeed, over it and the page above are ENOMEM, at TASK_SIZE
    /// ENOMEM (madvise NORMAL too, and above TASK_SIZE); munlock of two pages ENOMEM. After
    /// sealing it: mremap grows (in place or MAYMOVE) and a shrink over TASK_SIZE are EPERM, a
    /// fixed move to TASK_SIZE EINVAL (the target check comes first), below it EPERM; mremap at
    /// TASK_SIZE EFAULT; munmap of two pages or at TASK_SIZE EINVAL, of the sealed page EPERM.
    @Test func topOfTheAddressSpace() throws {
        let space = try kernelLikeSpace()
        let last = top - page
        #expect(run { () throws(MemoryError) in try space.map(length: page, placement: .fixedNoReplace(last)) } == "ok")
        #expect(run { () throws(MemoryError) in try space.map(length: 2 * page, placement: .fixedNoReplace(last)) } == "ENOMEM")
        #expect(run { () throws(MemoryError) in try space.map(length: page, placement: .fixedNoReplace(top)) } == "ENOMEM")
        #expect(run { () throws(MemoryError) in try space.map(length: page, placement: .hint(last)) } == "ok")
        for (address, length, expected) in [(last, page, "ok"), (last, 2 * page, "ENOMEM"), (top, page, "ENOMEM"), (top + page, page, "ENOMEM")] {
            #expect(run { () throws(MemoryError) in try space.protect(address: address, length: length, protection: .read) } == expected)
        }
        #expect(run { () throws(MemoryError) in try space.advise(address: last, length: page, advice: .dontNeed) } == "ok")
        #expect(run { () throws(MemoryError) in try space.advise(address: last, length: 2 * page, advice: .dontNeed) } == "ENOMEM")
        #expect(run { () throws(MemoryError) in try space.advise(address: top, length: page, advice: .dontNeed) } == "ENOMEM")
        #expect(run { () throws(MemoryError) in try space.advise(address: top, length: page, advice: .normal) } == "ENOMEM")
        #expect(run { () throws(MemoryError) in try space.advise(address: top + page, length: page, advice: .normal) } == "ENOMEM")
        #expect(run { () throws(MemoryError) in try space.lock(address: last, length: page) } == "ok")
        #expect(run { () throws(MemoryError) in try space.lock(address: last, length: 2 * page) } == "ENOMEM")
        #expect(run { () throws(MemoryError) in try space.lock(address: top, length: page) } == "ENOMEM")
        #expect(run { () throws(MemoryError) in try space.unlock(address: top, length: page) } == "ENOMEM")
        #expect(run { () throws(MemoryError) in try space.unlock(address: last, length: 2 * page) } == "ENOMEM")
        #expect(run { () throws(MemoryError) in try space.sync(address: last, length: page, flags: .sync) } == "ok")
        #expect(run { () throws(MemoryError) in try space.sync(address: last, length: 2 * page, flags: .sync) } == "ENOMEM")
        #expect(run { () throws(MemoryError) in try space.sync(address: top, length: page, flags: .sync) } == "ENOMEM")
        #expect(space.residencyString(last, pages: 1) != "ENOMEM")
        #expect(space.residencyString(last, pages: 2) == "ENOMEM")
        #expect(space.residencyString(top, pages: 1) == "ENOMEM")
        #expect(run { () throws(MemoryError) in try space.seal(address: last, length: page) } == "ok")
        func remap(_ address: UInt64, _ old: UInt64, _ new: UInt64, _ flags: AddressSpace.RemapFlags, _ target: UInt64 = 0) -> String {
            run { () throws(MemoryError) in _ = try space.remap(address: address, oldLength: old, newLength: new, flags: flags, newAddress: target) }
        }
        #expect(remap(last, page, 2 * page, []) == "EPERM")
        #expect(remap(last, page, 2 * page, .mayMove) == "EPERM")
        #expect(remap(last, page, page, [.mayMove, .fixed], top) == "EINVAL")
        #expect(remap(last, page, page, [.mayMove, .fixed], top - 2 * page) == "EPERM")
        #expect(remap(top, page, page, []) == "EFAULT")
        #expect(remap(last, 2 * page, page, []) == "EPERM")
        #expect(run { () throws(MemoryError) in try space.unmap(address: last, length: 2 * page) } == "EINVAL")
        #expect(run { () throws(MemoryError) in try space.unmap(address: top, length: page) } == "EINVAL")
        #expect(run { () throws(MemoryError) in try space.unmap(address: last, length: page) } == "EPERM")
    }

    /// Kernel, nothing mapped at 0x200000000: mmap fixed at an unaligned address with an
    /// overflowing length ENOMEM (length first), with length 0 EINVAL; fixed at TASK_SIZE-p+1 for
    /// two pages ENOMEM (range before alignment); fixed at 0x1001 EINVAL; fixed at 0 as root ok.
    /// mprotect: unaligned with length 0 and bad bits EINVAL, aligned with length 0 and bad bits
    /// ok, bad bits EINVAL, an overflowing length ENOMEM even with bad bits, GROWSDOWN|GROWSUP
    /// EINVAL. madvise: unaligned or an overflowing length or an unknown advice EINVAL, length 0
    /// with an unknown advice EINVAL. mremap: unknown flag, zero new length, FIXED without MAYMOVE,
    /// DONTUNMAP with different lengths, an unaligned target: all EINVAL. msync: unaligned or
    /// unknown flags EINVAL; an overflowing length rounds to 0: ok. mincore: unaligned with length
    /// 0 EINVAL, an overflowing length ENOMEM. mlock of an unaligned address with an overflowing
    /// length and munlock of an overflowing length ok; mlock2 with flag 4 EINVAL. mseal: flags
    /// first (EINVAL even with length 0), an overflowing length EINVAL. munmap: unaligned, zero or
    /// overflowing length, at TASK_SIZE: EINVAL.
    @Test func errnoOrderWhenSeveralChecksFail() throws {
        let space = try kernelLikeSpace()
        let odd = b + 1
        #expect(run { () throws(MemoryError) in try space.map(length: .max, placement: .fixed(odd)) } == "ENOMEM")
        #expect(run { () throws(MemoryError) in try space.map(length: 0, placement: .fixed(odd)) } == "EINVAL")
        #expect(run { () throws(MemoryError) in try space.map(length: 2 * page, placement: .fixed(top - page + 1)) } == "ENOMEM")
        #expect(run { () throws(MemoryError) in try space.map(length: page, placement: .fixed(0x1001)) } == "EINVAL")
        #expect(run { () throws(MemoryError) in try space.map(length: page, placement: .fixed(0)) } == "ok")
        let bad = Protection(rawValue: 0x100)
        #expect(run { () throws(MemoryError) in try space.protect(address: odd, length: 0, protection: bad) } == "EINVAL")
        #expect(run { () throws(MemoryError) in try space.protect(address: b, length: 0, protection: bad) } == "ok")
        #expect(run { () throws(MemoryError) in try space.protect(address: odd, length: page, protection: bad) } == "EINVAL")
        #expect(run { () throws(MemoryError) in try space.protect(address: b, length: page, protection: bad) } == "EINVAL")
        #expect(run { () throws(MemoryError) in try space.protect(address: b, length: .max, protection: bad) } == "ENOMEM")
        #expect(run { () throws(MemoryError) in try space.protect(address: b, length: .max, protection: .read) } == "ENOMEM")
        #expect(run { () throws(MemoryError) in try space.protect(address: b, length: page, protection: [.growsDown, .growsUp]) } == "EINVAL")
        #expect(run { () throws(MemoryError) in try space.advise(address: odd, length: page, rawAdvice: 999) } == "EINVAL")
        #expect(run { () throws(MemoryError) in try space.advise(address: odd, length: 0, rawAdvice: 4) } == "EINVAL")
        #expect(run { () throws(MemoryError) in try space.advise(address: b, length: .max, rawAdvice: 999) } == "EINVAL")
        #expect(run { () throws(MemoryError) in try space.advise(address: b, length: .max, rawAdvice: 4) } == "EINVAL")
        #expect(run { () throws(MemoryError) in try space.advise(address: b, length: 0, rawAdvice: 999) } == "EINVAL")
        func remap(_ address: UInt64, _ old: UInt64, _ new: UInt64, _ raw: UInt32, _ target: UInt64 = 0) -> String {
            run { () throws(MemoryError) in
                _ = try space.remap(address: address, oldLength: old, newLength: new, flags: .init(rawValue: raw), newAddress: target)
            }
        }
        #expect(remap(odd, page, page, 8) == "EINVAL")
        #expect(remap(b, page, 0, 8) == "EINVAL")
        #expect(remap(odd, page, 0, 0) == "EINVAL")
        #expect(remap(b, page, 0, 0) == "EINVAL")
        #expect(remap(b, page, 2 * page, 2, 0x3_0000_0000) == "EINVAL")
        #expect(remap(b, page, 2 * page, 1 | 4) == "EINVAL")
        #expect(remap(b, page, page, 1 | 2, 0x3_0000_0001) == "EINVAL")
        func sync(_ address: UInt64, _ length: UInt64, _ raw: UInt32) -> String {
            run { () throws(MemoryError) in try space.sync(address: address, length: length, flags: .init(rawValue: raw)) }
        }
        #expect(sync(odd, page, 8) == "EINVAL")
        #expect(sync(odd, page, 7) == "EINVAL")
        #expect(sync(b, .max, 8) == "EINVAL")
        #expect(sync(b, .max, 4) == "ok")
        #expect(run { () throws(MemoryError) in _ = try space.residency(address: odd, length: 0) } == "EINVAL")
        #expect(run { () throws(MemoryError) in _ = try space.residency(address: b, length: .max) } == "ENOMEM")
        #expect(run { () throws(MemoryError) in try space.lock(address: odd, length: .max) } == "ok")
        #expect(run { () throws(MemoryError) in try space.unlock(address: b, length: .max) } == "ok")
        #expect(run { () throws(MemoryError) in try space.lock(address: b, length: .max, rawFlags: 4) } == "EINVAL")
        #expect(run { () throws(MemoryError) in try space.seal(address: odd, length: page, flags: 1) } == "EINVAL")
        #expect(run { () throws(MemoryError) in try space.seal(address: b, length: .max) } == "EINVAL")
        #expect(run { () throws(MemoryError) in try space.seal(address: b, length: .max, flags: 1) } == "EINVAL")
        #expect(run { () throws(MemoryError) in try space.seal(address: b, length: 0, flags: 1) } == "EINVAL")
        #expect(run { () throws(MemoryError) in try space.unmap(address: odd, length: 0) } == "EINVAL")
        #expect(run { () throws(MemoryError) in try space.unmap(address: b, length: 0) } == "EINVAL")
        #expect(run { () throws(MemoryError) in try space.unmap(address: b, length: .max) } == "EINVAL")
        #expect(run { () throws(MemoryError) in try space.unmap(address: top, length: page) } == "EINVAL")
    }
}
