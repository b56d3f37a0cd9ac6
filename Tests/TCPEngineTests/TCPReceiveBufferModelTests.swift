import NIOCore
import Testing
import TOUWire

@testable import TCPEngine

/// The receive buffer against a byte map of what it holds: random segments (mostly small, so
/// pieces collapse and the chunked lists split and merge), overlapping and repeating one another,
/// near the wrap of the sequence space. SACK blocks, D-SACK ranges, delivered bytes and pruning
/// must match the map.
@Suite struct ReceiveBufferModelTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var seed: UInt64
        /// Small enough that the charge reaches the budget and pruning runs.
        var bufferSize: Int
        var testDescription: String { "seed=\(seed) buffer=\(bufferSize)" }
    }

    @Test(arguments: [
        Case(seed: 1, bufferSize: 1 << 20), Case(seed: 2, bufferSize: 1 << 20),
        Case(seed: 3, bufferSize: 20_000), Case(seed: 4, bufferSize: 20_000),
    ])
    func agreesWithAByteMap(_ test: Case) {
        var rng = SplitMix64(seed: test.seed)
        func random(_ range: ClosedRange<Int>) -> Int { Int.random(in: range, using: &rng) }
        let base: UInt32 = 0xFFFF_F000
        let window = 100_000
        let budget = TCPReceiveBuffer.budget(bufferSize: test.bufferSize)
        var buffer = TCPReceiveBuffer()
        var held: [Bool] = []  // by stream offset
        var next = 0
        var delivered = ByteBuffer()
        var mostPieces = 0
        func sequence(_ offset: Int) -> UInt32 { base &+ UInt32(truncatingIfNeeded: offset) }
        func isHeld(_ offset: Int) -> Bool { offset < held.count && held[offset] }
        func firstHeldRange(in range: Range<Int>) -> TCPSACKBlock? {
            guard let first = range.first(where: isHeld) else { return nil }
            var end = first
            while end < range.upperBound, isHeld(end) { end += 1 }
            return block(sequence(first), sequence(end))
        }
        for step in 0..<4000 {
            if random(0...39) == 0 {
                // In order, sometimes running into held data.
                let length = random(1...30_000)
                buffer.appendInOrder(streamBytes(next..<next + length))
                let expected = firstHeldRange(in: next..<next + length)
                let drained = buffer.drainOutOfOrder(next: sequence(next + length))
                next += length
                while isHeld(next) { next += 1 }
                #expect(drained.next == sequence(next), "step \(step)")
                #expect(drained.duplicate == expected, "step \(step)")
                if var bytes = buffer.read(maximumBytes: .max) { delivered.writeBuffer(&bytes) }
                continue
            }
            let offset = next + random(1...window)
            let length = random(0...3) == 0 ? random(1...1400) : random(1...40)
            let expected = firstHeldRange(in: offset..<offset + length)
            let insertion = buffer.insertOutOfOrder(
                sequence: sequence(offset), bytes: streamBytes(offset..<offset + length), next: sequence(next),
                bufferSize: test.bufferSize)
            #expect(insertion.duplicate == expected, "step \(step)")
            if held.count < offset + length { held += Array(repeating: false, count: offset + length - held.count) }
            for index in offset..<offset + length { held[index] = true }
            // Pruning drops the top: forget what lies above what the buffer still holds.
            let end = buffer.outOfOrderEnd.map { next + $0.seqDistance(from: sequence(next)) } ?? next
            let above = min(end, held.count)..<held.count
            #expect(insertion.pruned == held[above].contains(true), "step \(step)")
            for index in above { held[index] = false }
            #expect(buffer.charge <= budget, "step \(step)")
            mostPieces = max(mostPieces, buffer.outOfOrderPieces)
            var left = offset
            while left > next + 1, isHeld(left - 1) { left -= 1 }
            var right = offset
            while isHeld(right) { right += 1 }
            let expectedBlock = isHeld(offset) ? block(sequence(left), sequence(right)) : nil
            #expect(buffer.sackBlock(containing: sequence(offset), next: sequence(next)) == expectedBlock, "step \(step)")
            if step % 500 == 0 {
                #expect(buffer.pendingBytes == held[min(next, held.count)...].filter { $0 }.count, "step \(step)")
            }
        }
        // Fill everything: the stream arrives whole.
        let total = held.count
        if total > next {
            buffer.appendInOrder(streamBytes(next..<total))
            _ = buffer.drainOutOfOrder(next: sequence(total))
        }
        if var bytes = buffer.read(maximumBytes: .max) { delivered.writeBuffer(&bytes) }
        #expect(delivered == streamBytes(0..<max(total, next)))
        #expect(!buffer.hasOutOfOrderData && buffer.pendingBytes == 0)
        // The run went where it was meant to: chunk splits, collapsing, and pruning when small.
        #expect(mostPieces > 2 * 64)
        #expect(buffer.collapsedBytes > 0)
        #expect((buffer.prunedBytes > 0) == (test.bufferSize < window))
    }
}
