import NIOCore
import Testing
import TOUWire

@testable import TCPEngine

// The receiver's out-of-order queue: D-SACKs for data it already holds (RFC 2883), and work and
// memory that stay proportional to what each segment changes, whatever the peer sends.

struct NamedConfiguration: CustomTestStringConvertible, Sendable {
    var name: String
    var configuration: TCPConfiguration
    var testDescription: String { name }
}

/// The configurations the SACK receiver tests run: SACK and timestamps on a NewReno connection,
/// and the shipped defaults (CUBIC, pacing, Nagle, auto-tuning).
let sackReceiverConfigurations = [
    NamedConfiguration(name: "modern", configuration: modernConfiguration()),
    NamedConfiguration(name: "defaults", configuration: TCPConfiguration()),
]

/// Our window field while nothing has been read: the whole initial buffer, scaled.
func initialWindowField(_ configuration: TCPConfiguration) -> UInt16 {
    UInt16(configuration.effectiveReceiveBufferSize >> Int(configuration.receiveWindowShift))
}

/// A segment of the peer at `offset` bytes past its ISN+1, with its timestamp.
func peerData(_ offset: Int, _ payload: ByteBuffer, ts: UInt32 = 1) -> TCPSegment {
    fromPeer(
        seq: remoteISS &+ 1 &+ UInt32(truncatingIfNeeded: offset),
        options: TCPOptions(timestamps: peerTS(ts, echo: 0)), payload: payload)
}

/// The byte at `offset` of the peer's stream in the tests that check delivery.
func streamByte(_ offset: Int) -> UInt8 { UInt8(truncatingIfNeeded: offset &* 7 &+ offset >> 8) }

func streamBytes(_ range: Range<Int>) -> ByteBuffer {
    var buffer = ByteBuffer()
    buffer.writeBytes(range.map(streamByte))
    return buffer
}

@Suite struct OutOfOrderDSACKTests {
    /// RFC 2883 4.2: a segment that repeats data held out of order earns a D-SACK for the repeated
    /// range, followed by the (possibly larger) block holding it.
    @Test(arguments: sackReceiverConfigurations)
    func repeatOfHeldDataIsDSACKedBeforeItsBlock(_ variant: NamedConfiguration) {
        let configuration = variant.configuration
        var c = modernConnection(configuration: configuration)
        let base = remoteISS &+ 1
        let window = initialWindowField(configuration)
        func ack(_ now: NIODeadline, _ sack: [TCPSACKBlock]) -> [TCPSegment] {
            [toPeer(window: window, options: c.ourOptions(at: now, sack: sack))]
        }
        c.receive(peerData(10, bytes("klmn")), now: at(100))
        #expect(c.drain(at: at(100)) == ack(at(100), [block(base &+ 10, base &+ 14)]))
        // The same segment again.
        c.receive(peerData(10, bytes("klmn"), ts: 2), now: at(101))
        #expect(c.drain(at: at(101)) == ack(at(101), [block(base &+ 10, base &+ 14), block(base &+ 10, base &+ 14)]))
        // Half repeated, half new: the repeated half, then the grown block.
        c.receive(peerData(12, bytes("mnop"), ts: 3), now: at(102))
        #expect(c.drain(at: at(102)) == ack(at(102), [block(base &+ 12, base &+ 14), block(base &+ 10, base &+ 16)]))
        // Spanning two held runs: the first repeated range, then the run the segment joined them into.
        c.receive(peerData(20, bytes("uv"), ts: 4), now: at(103))
        _ = c.drain(at: at(103))
        c.receive(peerData(15, bytes("pqrstuvw"), ts: 5), now: at(104))
        #expect(c.drain(at: at(104)) == ack(at(104), [block(base &+ 15, base &+ 16), block(base &+ 10, base &+ 23)]))
        c.receive(peerData(0, bytes("abcdefghij"), ts: 6), now: at(105))
        #expect(c.readAll() == "abcdefghijklmnopqrstuvw")
        #expect(c.stats.sackBlocksSent == 1 + 2 + 2 + 2 + 2)
    }

    /// An in-order segment that runs into data held out of order repeats that data: the ACK that
    /// takes both carries a D-SACK for the overlap (below the new cumulative ACK).
    @Test(arguments: sackReceiverConfigurations)
    func inOrderSegmentOverlappingHeldDataIsDSACKed(_ variant: NamedConfiguration) {
        let configuration = variant.configuration
        var c = modernConnection(configuration: configuration)
        let base = remoteISS &+ 1
        c.receive(peerData(10, bytes("klmn")), now: at(100))
        _ = c.drain(at: at(100))
        c.receive(peerData(0, bytes("abcdefghijkl"), ts: 2), now: at(101))
        #expect(c.drain(at: at(101)) == [
            toPeer(ack: base &+ 14, window: initialWindowField(configuration),
                   options: c.ourOptions(at: at(101), echo: peerTSBase &+ 2, sack: [block(base &+ 10, base &+ 12)])),
        ])
        #expect(c.readAll() == "abcdefghijklmn")
    }
}

@Suite struct ReceiveQueueCostTests {
    /// One loss episode at thousands of segments in flight: the first segment lost, the rest out
    /// of order, then the retransmission. Each arrival extends the one run and its SACK block;
    /// the receiver's work per segment must not grow with the run (it walked the run per ACK).
    @Test(arguments: sackReceiverConfigurations)
    func lossEpisodeCostsConstantWorkPerSegment(_ variant: NamedConfiguration) {
        var configuration = variant.configuration
        let segments = 4000
        configuration.receiveBufferSize = 8 << 20
        configuration.maximumReceiveBufferSize = 8 << 20
        var c = modernConnection(configuration: configuration)
        let base = remoteISS &+ 1
        var wrongSACKs = 0
        for index in 1..<segments {
            let start = index * modernMSS
            c.receive(peerData(start, streamBytes(start..<start + modernMSS)), now: at(100))
            let blocks = c.drain(at: at(100)).map(\.options.sackBlocks)
            let expected = block(base &+ UInt32(modernMSS), base &+ UInt32(start + modernMSS))
            if blocks != [[expected]] { wrongSACKs += 1 }
        }
        #expect(wrongSACKs == 0)
        #expect(c.receiveBuffer.steps <= 4 * segments)
        c.receive(peerData(0, streamBytes(0..<modernMSS)), now: at(101))
        let end = base &+ UInt32(segments * modernMSS)
        #expect(c.drain(at: at(101)).map(\.acknowledgmentNumber) == [end])
        #expect(c.receiveBuffer.steps <= 8 * segments)
        #expect(c.read(maximumBytes: .max) == streamBytes(0..<segments * modernMSS))
    }

    /// 1-byte segments at every other offset of a 16 MiB window: millions of pieces if only the
    /// payload counted. Arriving highest first, each lands at the front of the queue. The charge
    /// (payload plus per-piece overhead) stays within the budget by pruning the highest pieces,
    /// the work per segment stays bounded, and ordinary data then arrives intact.
    @Test(arguments: [
        NamedConfiguration(name: "classic", configuration: classicConfiguration()),
        NamedConfiguration(name: "defaults", configuration: TCPConfiguration()),
    ])
    func tinySegmentsAtEveryOtherOffsetStayWithinTheBudget(_ variant: NamedConfiguration) {
        var configuration = variant.configuration
        let window = 16 << 20
        configuration.receiveBufferSize = window
        configuration.maximumReceiveBufferSize = window
        var c = modernConnection(configuration: configuration)
        let budget = TCPReceiveBuffer.budget(bufferSize: window)
        let pieceLimit = budget / (1 + TCPReceiveBuffer.pieceOverhead)
        let segments = pieceLimit + pieceLimit / 4
        var highestCharge = 0
        var lastACK: [TCPSegment] = []
        for index in (0..<segments).reversed() {
            let offset = 2 * index + 1
            c.receive(peerData(offset, streamBytes(offset..<offset + 1)), now: at(100))
            lastACK = c.drain(at: at(100))
            highestCharge = max(highestCharge, c.receiveBuffer.charge)
        }
        #expect(highestCharge <= budget)
        #expect(c.receiveBuffer.outOfOrderPieces <= pieceLimit)
        #expect(c.stats.outOfOrderBytesPruned == segments - c.receiveBuffer.outOfOrderPieces)
        // Each segment shifts at most one chunk of the piece list and one of the run list (64
        // elements each), plus its share of chunk splits; a sorted array shifts half the queue.
        #expect(c.receiveBuffer.steps <= 300 * segments)
        // The latest ACK reports the lowest piece first, and nothing above what is still held.
        let base = remoteISS &+ 1
        let held = c.receiveBuffer.outOfOrderEnd ?? 0
        #expect(lastACK.count == 1)
        #expect(lastACK.first?.options.sackBlocks.first == (configuration.selectiveAcknowledgments ? block(base &+ 1, base &+ 2) : nil))
        #expect(lastACK.flatMap(\.options.sackBlocks).allSatisfy { $0.right.seqLE(held) })

        // Ordinary data: the whole range again in full segments, in order.
        let total = 2 * segments
        var offset = 0
        while offset < total {
            let length = min(modernMSS, total - offset)
            c.receive(peerData(offset, streamBytes(offset..<offset + length)), now: at(200))
            _ = c.drain(at: at(200))
            offset += length
        }
        #expect(c.readableBytes == total)
        #expect(c.receiveBuffer.outOfOrderPieces == 0)
        #expect(c.read(maximumBytes: .max) == streamBytes(0..<total))
    }

    /// Pruning reneges on SACKed data (RFC 2018 8): blocks already reported for it leave the
    /// SACK option. 1-byte pieces 3 bytes apart fill the 64 KiB budget of a 32 KiB buffer; two
    /// more bytes joined to low pieces push the charge over it, and the highest piece goes.
    @Test(arguments: sackReceiverConfigurations)
    func prunedDataLeavesTheSACKBlocks(_ variant: NamedConfiguration) {
        var configuration = variant.configuration
        configuration.receiveBufferSize = 32 << 10
        configuration.maximumReceiveBufferSize = max(configuration.maximumReceiveBufferSize, 32 << 10)
        #expect(TCPReceiveBuffer.budget(bufferSize: 32 << 10) == 255 * (1 + TCPReceiveBuffer.pieceOverhead) + 1)
        var c = modernConnection(configuration: configuration)
        let base = remoteISS &+ 1
        for piece in 0...255 {
            c.receive(peerData(3 * piece + 1, streamBytes(3 * piece + 1..<3 * piece + 2)), now: at(100))
            _ = c.drain(at: at(100))
        }
        // The 256th piece did not fit: it went at once.
        #expect(c.stats.outOfOrderBytesPruned == 1)
        // Joined to the lowest piece: one byte more, still within the budget.
        c.receive(peerData(2, streamBytes(2..<3)), now: at(101))
        _ = c.drain(at: at(101))
        #expect(c.stats.outOfOrderBytesPruned == 1)
        // One more byte: the highest piece, at 763, reported until now, is dropped and unreported.
        c.receive(peerData(5, streamBytes(5..<6)), now: at(102))
        #expect(c.drain(at: at(102)) == [
            toPeer(window: initialWindowField(configuration), options: c.ourOptions(
                at: at(102), sack: [block(base &+ 4, base &+ 6), block(base &+ 1, base &+ 3), block(base &+ 760, base &+ 761)])),
        ])
        #expect(c.stats.outOfOrderBytesPruned == 2)
        c.receive(peerData(0, streamBytes(0..<800)), now: at(103))
        #expect(c.read(maximumBytes: .max) == streamBytes(0..<800))
    }
}
