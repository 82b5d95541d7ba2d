import Synchronization
/// Internal invariant checks: active in debug and test builds (`SHOOTDOWN_INTERNAL_CHECKS`),
/// compiled away in release builds. They guard broken internal state, never user input: user
/// input is validated and rejected with a ``MemoryError``.
@inlinable @inline(__always)
func checkInvariant(
    _ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String = "",
    file: StaticString = #fileID, line: UInt = #line
) {
    #if SHOOTDOWN_INTERNAL_CHECKS
    if !condition() {
        preconditionFailure("Shootdown invariant violated: \(message())", file: file, line: line)
    }
    #endif
}
