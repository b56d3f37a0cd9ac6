import NIOCore
import Testing
import TOUWire

@testable import TCPEngine

/// Receive-buffer auto-tuning measures what the application reads per round trip.
@Suite("Receive auto-tuning")
struct TCPAutotuningTests {
    /// A connection with auto-tuning from 64 KiB up to 4 MiB, fed 40 round trips (10 ms each) of
    /// in-order data, 32 KiB a round trip as far as its window takes it; it reads everything or
    /// nothing.
    static func receiveBufferAfterFlood(reading: Bool) -> (limit: Int, buffered: Int) {
        var configuration = TCPConfiguration(maximumSegmentSize: 1399)
        configuration.timestamps = false
        configuration.receiveBufferSize = 64 << 10
        configuration.maximumReceiveBufferSize = 4 << 20
        var connection = establishedConnection(configuration: configuration)
        var sequence = remoteISS &+ 1
        for round in 0..<40 {
            let now = at(20 + Int64(round) * 10)
            // The peer sends what the advertised window allows, in full segments.
            var room = min(32 << 10, connection.currentReceiveWindow)
            while room >= 1_000 {
                let size = min(1_000, room)
                connection.receive(fromPeer(seq: sequence, payload: bytes(count: size)), now: now)
                sequence = sequence &+ UInt32(size)
                room -= size
            }
            if reading { while connection.read(maximumBytes: .max) != nil {} }
            _ = connection.drain(at: now)
            _ = connection.drainEvents()
        }
        return (connection.receiveBufferLimit, connection.receiveBuffer.readableBytes)
    }

    @Test("a reader that stalls keeps its buffer while data keeps arriving; one that reads grows it")
    func followsTheReader() {
        let stalled = Self.receiveBufferAfterFlood(reading: false)
        #expect(stalled.limit == 64 << 10, "the stalled reader's buffer grew to \(stalled.limit)")
        #expect(stalled.buffered <= 64 << 10 + 1_000)
        // Four times what it read in a round trip (32,000 bytes).
        let reader = Self.receiveBufferAfterFlood(reading: true)
        #expect(reader.limit == 4 * 32_000, "the reader's buffer: \(reader.limit)")
    }
}
