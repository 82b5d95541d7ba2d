extension Array where Element == KernelOp {
    /// The operations as a Swift array literal, one per line (a reproducer to paste into a test).
    public var swiftLiteral: String {
        "[\n" + map { "    " + literalLine($0) }.joined(separator: "\n") + "\n]"
    }

    private func literalLine(_ op: KernelOp) -> String {
        // Put the comma before the trailing comment.
        let parts = op.description.split(separator: "  // ", maxSplits: 1)
        return parts.count == 2 ? parts[0] + ",  // " + parts[1] : op.description + ","
    }
}
