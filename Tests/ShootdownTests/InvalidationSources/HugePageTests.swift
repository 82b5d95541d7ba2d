import Testing

@testable import Shootdown

private let p = NotifierTestConstants.page
private let huge = NotifierTestConstants.huge
private let base = NotifierTestConstants.base

/// Huge mappings: installed by faults in huge-page VMAs, split by partial operations (each under a
/// `clear` of the 2 MiB block), merged back by collapse, zapped as one entry.
@Suite struct HugePageTests {
    private func makeSpace() throws -> (AddressSpace, PhysicalMemory) {
        let memory = PhysicalMemory(capacity: 8192, swapSlots: 64)
        return (try AddressSpace(memory: memory), memory)
    }

    /// Writes a distinct token to every 16th page of the block at `block` (and its last page).
    private func fill(_ space: AddressSpace, _ block: UInt64) throws -> [UInt64: UInt64] {
        var tokens: [UInt64: UInt64] = [:]
        for index in stride(from: 0, to: 512, by: 16) + [511] {
            let address = block + UInt64(index) * p
            try space.write(address ^ 0xABCD, at: address)
            tokens[address] = address ^ 0xABCD
        }
        return tokens
    }

    private func expectTokens(_ space: AddressSpace, _ tokens: [UInt64: UInt64], except: Set<UInt64> = [],
                              sourceLocation: SourceLocation = #_sourceLocation) throws {
        for (address, token) in tokens where !except.contains(address) {
            #expect(try space.read(at: address) == token, sourceLocation: sourceLocation)
        }
        for address in except { #expect(try space.read(at: address) == 0, sourceLocation: sourceLocation) }
    }

    @Test func aFaultOnAnAlignedBlockInstallsOneHugeMapping() throws {
        let (space, memory) = try makeSpace()
        try space.map(length: 2 * huge, placement: .fixed(base), options: [.hugePage])
        try space.write(7, at: base + 5 * p)
        var audit = space.audit()
        #expect(audit.hugeMappings == 1 && audit.presentPages == 512)
        #expect(space.statistics[.hugeFaults] == 1)
        #expect(memory.framesInUse == 512)
        let head = space.translate(base)!.number
        #expect(head % 512 == 0)
        #expect(space.translate(base + 5 * p)?.number == head + 5)
        #expect(try space.read(at: base + 5 * p) == 7)
        #expect(try space.read(at: base + 6 * p) == 0)
        // Reads fault huge too.
        _ = try space.read(at: base + huge + 3 * p)
        audit = space.audit()
        #expect(audit.hugeMappings == 2 && audit.presentPages == 1024)
        #expect(audit.entriesOutsideVMAs == 0 && audit.entriesExceedingProtection == 0)
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test func onlyWholeAlignedBlocksInsideTheVMAGoHuge() throws {
        let (space, _) = try makeSpace()
        // Not covering an aligned 2 MiB block: 4 KiB pages.
        try space.map(length: huge, placement: .fixed(base + 4 * p), options: [.hugePage])
        try space.write(1, at: base + 4 * p)
        try space.write(1, at: base + huge)
        #expect(space.audit().hugeMappings == 0)
        // Without the advice: 4 KiB pages.
        try space.map(length: huge, placement: .fixed(base + 4 * huge))
        try space.write(1, at: base + 4 * huge)
        #expect(space.audit().hugeMappings == 0)
    }

    @Test func adviseHugePageEnablesAndNoHugePageDisables() throws {
        let (space, _) = try makeSpace()
        try space.map(length: 2 * huge, placement: .fixed(base))
        try space.advise(address: base, length: huge, advice: .hugePage)
        try space.write(1, at: base + 9 * p)
        #expect(space.audit().hugeMappings == 1)
        try space.write(1, at: base + huge + 9 * p)  // the second half was not advised
        #expect(space.audit().hugeMappings == 1)
        try space.map(length: huge, placement: .fixed(base + 4 * huge), options: [.hugePage])
        try space.advise(address: base + 4 * huge, length: huge, advice: .noHugePage)
        try space.write(1, at: base + 4 * huge)
        #expect(space.audit().hugeMappings == 1)
    }

    @Test func partialUnmapSplits() throws {
        let (space, memory) = try makeSpace()
        try space.map(length: huge, placement: .fixed(base), options: [.hugePage])
        let tokens = try fill(space, base)
        #expect(space.audit().hugeMappings == 1)
        try space.unmap(address: base + 16 * p, length: p)
        let audit = space.audit()
        #expect(audit.hugeMappings == 0 && audit.presentPages == 511)
        #expect(space.statistics[.hugePagesSplit] == 1)
        #expect(memory.framesInUse == 511)
        #expect(space.mappingCount == 2)
        #expect(space.translate(base + 16 * p) == nil)
        try expectTokens(space, tokens.filter { $0.key != base + 16 * p })
        space.teardown()
        #expect(memory.framesInUse == 0)
    }

    @Test func partialProtectSplits() throws {
        let (space, memory) = try makeSpace()
        try space.map(length: huge, placement: .fixed(base), options: [.hugePage])
        let tokens = try fill(space, base)
        try space.protect(address: base + 32 * p, length: 4 * p, protection: .read)
        #expect(space.audit().hugeMappings == 0)
        #expect(space.audit().entriesExceedingProtection == 0)
        #expect(space.translate(base + 32 * p)?.isWritable == false)
        #expect(space.translate(base)?.isWritable == true)
        #expect(space.mappingCount == 3)
        #expect(memory.framesInUse == 512)
        try expectTokens(space, tokens)
        // Protecting a whole block keeps it huge.
        try space.map(length: huge, placement: .fixed(base + 2 * huge), options: [.hugePage])
        try space.write(1, at: base + 2 * huge)
        try space.protect(address: base + 2 * huge, length: huge, protection: .read)
        #expect(space.audit().hugeMappings == 1)
        #expect(space.translate(base + 2 * huge + p)?.isWritable == false)
        #expect(space.statistics[.hugePagesSplit] == 1)
    }

    @Test func partialAdviseSplitsAndCollapseMergesBack() throws {
        let log = NotifierCallLog()
        let (space, memory) = try makeSpace()
        try space.map(length: huge, placement: .fixed(base), options: [.hugePage])
        let tokens = try fill(space, base)
        let gone = base + 48 * p
        try space.advise(address: gone, length: p, advice: .dontNeed)
        #expect(space.audit().hugeMappings == 0)
        #expect(space.audit().presentPages == 511)
        #expect(memory.framesInUse == 511)
        let recorder = RecordingNotifier("rec", log: log, probing: space)
        try space.registerNotifier(recorder)

        #expect(try space.collapse(address: base, length: huge) == 1)
        let audit = space.audit()
        #expect(audit.hugeMappings == 1 && audit.presentPages == 512)
        #expect(space.statistics[.hugePagesCollapsed] == 1)
        #expect(memory.framesInUse == 512)
        try expectTokens(space, tokens, except: [gone])
        #expect(log.startRanges(of: "rec").map(\.event) == [.clear])
        #expect(recorder.observations.allSatisfy { !$0.splitLockHeld })
        // Nothing left to collapse.
        #expect(try space.collapse(address: base, length: huge) == 0)
    }

    @Test func collapseLeavesSharedOrSwappedBlocksAlone() throws {
        let (space, memory) = try makeSpace()
        try space.map(length: huge, placement: .fixed(base))
        for index in 0..<512 { try space.write(UInt64(index), at: base + UInt64(index) * p) }
        try space.advise(address: base, length: huge, advice: .hugePage)
        let child = try space.fork()  // every frame now shared
        #expect(try space.collapse(address: base, length: huge) == 0)
        child.teardown()
        try space.advise(address: base + p, length: p, advice: .pageOut)  // a swap entry
        #expect(try space.collapse(address: base, length: huge) == 0)
        _ = try space.read(at: base + p)
        #expect(try space.collapse(address: base, length: huge) == 1)
        #expect(memory.framesInUse == 512)
        for index in [0, 1, 200, 511] { #expect(try space.read(at: base + UInt64(index) * p) == UInt64(index)) }
    }

    @Test func zappingAHugeMappingCountsOneHugePage() throws {
        let (space, memory) = try makeSpace()
        try space.map(length: huge, placement: .fixed(base), options: [.hugePage])
        try space.write(1, at: base)
        try space.unmap(address: base, length: huge)
        #expect(space.statistics[.hugePagesZapped] == 1)
        #expect(space.statistics[.hugePagesSplit] == 0)
        #expect(memory.framesInUse == 0)
        #expect(space.audit().presentPages == 0)
    }

    @Test func forkSplitsAndSharesTheSmallPages() throws {
        let (space, memory) = try makeSpace()
        try space.map(length: huge, placement: .fixed(base), options: [.hugePage])
        let tokens = try fill(space, base)
        let child = try space.fork()
        #expect(space.audit().hugeMappings == 0 && child.audit().hugeMappings == 0)
        #expect(memory.framesInUse == 512)
        let frame = space.translate(base + 16 * p)!.number
        #expect(memory.refcount(frame) == 2 && memory.mapcount(frame) == 2)
        try child.write(1, at: base + 16 * p)
        try expectTokens(space, tokens)
        #expect(try child.read(at: base + 16 * p) == 1)
        child.teardown()
        space.teardown()
        #expect(memory.framesInUse == 0)
    }
}
