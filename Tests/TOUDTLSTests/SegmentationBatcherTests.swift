import NIOCore
import Testing
@testable import TOUDTLS

@Suite("UDP GSO batching")
struct SegmentationBatcherTests {
    static let peer = try! SocketAddress(ipAddress: "127.0.0.1", port: 4433)
    static let other = try! SocketAddress(ipAddress: "127.0.0.1", port: 4434)

    static func datagram(_ size: Int, fill: UInt8) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: size)
        buffer.writeRepeatingByte(fill, count: size)
        return buffer
    }

    /// Feeds datagrams in order; returns every write, the final flush included.
    static func writes(_ datagrams: [(ByteBuffer, SocketAddress)]) -> [AddressedEnvelope<ByteBuffer>] {
        var batcher = SegmentationBatcher()
        var writes: [AddressedEnvelope<ByteBuffer>] = []
        for (datagram, address) in datagrams {
            if let write = batcher.append(datagram, to: address) { writes.append(write) }
        }
        if let write = batcher.finish() { writes.append(write) }
        return writes
    }

    @Test("equal datagrams to one peer leave as one write whose segments are the datagrams, in order")
    func equalRun() {
        let datagrams = (0..<5).map { Self.datagram(1200, fill: UInt8($0)) }
        let writes = Self.writes(datagrams.map { ($0, Self.peer) })
        #expect(writes.count == 1)
        #expect(writes[0].metadata?.segmentSize == 1200)
        var joined = ByteBufferAllocator().buffer(capacity: 6000)
        for datagram in datagrams { joined.writeImmutableBuffer(datagram) }
        #expect(writes[0].data == joined)
    }

    @Test("a shorter datagram ends its run; a longer one starts a new run")
    func shortEndsRun() {
        let sizes = [1200, 1200, 300, 1200, 1400, 1400]
        let writes = Self.writes(sizes.enumerated().map { (Self.datagram($1, fill: UInt8($0)), Self.peer) })
        #expect(writes.map(\.data.readableBytes) == [2700, 1200, 2800])
        #expect(writes.map(\.metadata?.segmentSize) == [1200, nil, 1400])
    }

    @Test("a single datagram leaves as it is, without segmentation metadata")
    func single() {
        let writes = Self.writes([(Self.datagram(100, fill: 1), Self.peer)])
        #expect(writes.count == 1)
        #expect(writes[0].metadata == nil)
        #expect(writes[0].data.readableBytes == 100)
    }

    @Test("another destination ends the run, so order per destination and overall is kept")
    func addressChange() {
        let writes = Self.writes([
            (Self.datagram(1000, fill: 1), Self.peer), (Self.datagram(1000, fill: 2), Self.peer),
            (Self.datagram(1000, fill: 3), Self.other), (Self.datagram(1000, fill: 4), Self.peer),
        ])
        #expect(writes.map(\.remoteAddress) == [Self.peer, Self.other, Self.peer])
        #expect(writes.map(\.data.readableBytes) == [2000, 1000, 1000])
    }

    @Test("runs stay under 64 KiB and 64 segments")
    func limits() {
        let big = Self.writes((0..<100).map { (Self.datagram(1472, fill: UInt8($0)), Self.peer) })
        #expect(big.allSatisfy { $0.data.readableBytes <= SegmentationBatcher.maximumBytes })
        #expect(big.map(\.data.readableBytes).reduce(0, +) == 100 * 1472)
        let small = Self.writes((0..<130).map { (Self.datagram(100, fill: UInt8($0)), Self.peer) })
        #expect(small.map { $0.data.readableBytes / 100 } == [64, 64, 2])
    }
}
