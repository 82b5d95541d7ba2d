import Shootdown
import ShootdownVerification

/// libFuzzer entry point of the `ops` target: the bytes decode into a sequence of public
/// operations (``OpsRun``), applied to an ``AddressSpace`` and to the ``ReferenceModel``. Any
/// trap, any disagreement, any broken invariant is a finding: the run stops with `fatalError`
/// naming the step, the operation and what differed.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOps(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data else { return 0 }
    var run = OpsRun(input: FuzzInput(UnsafeBufferPointer(start: data, count: size)))
    run.run()
    return 0
}
