import Foundation
import NIOCore
import Testing
@testable import TOUDTLS

/// A listener with two workers: a flood steered at one worker (datagrams whose D names it) while a
/// session of the other moves data both ways.
@Suite("Listener workers under a flood", .serialized)
struct ListenerWorkerFloodTests {
    typealias E2E = EndToEndTests

    @Test("a flood at one worker does not disturb the other's session: its data arrives intact and its worker drops nothing")
    func floodAtAnotherWorker() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: E2E.serverConfiguration(),
                                                  workers: 2)
        let port = try #require(listener.localAddress.port)
        let bytes = 4 << 20
        let accepted = LockedBox<TOUConnection?>(nil)
        let serverSide = Task {
            var iterator = listener.connections.makeAsyncIterator()
            let connection = try #require(await iterator.next())
            accepted.withLock { $0 = connection }
            async let received = E2E.receive(connection, seed: 2)
            try await E2E.send(connection, bytes: bytes, seed: 1)
            let result = try await received
            try await connection.close()
            return result
        }
        let connection = try await TOUConnection.connect(host: "127.0.0.1", port: port,
                                                         configuration: E2E.clientConfiguration())
        // The session's worker is the first byte of the SID the client sends to (its remote SID).
        let sessionWorker = try await connection.endpoint.loop.submit {
            SessionID.worker(of: connection.core.session.remoteSID ?? 0)
        }.get()
        #expect(listener.steersBySessionID, "the steering program was not attached")
        let other = 1 - sessionWorker
        let flood = HelperThread(name: "flood") {
            guard let socket = try? RawUDPSocket() else { return }
            defer { socket.close() }
            var random = SeededRandom(seed: 0xF100D)
            for _ in 0..<20_000 {
                // Secure GUE with D alone, naming the other worker, and a record-sized payload.
                let sid = UInt64(other) << 56 | (random.next() & 0x00FF_FFFF_FFFF_FFFF)
                var datagram: [UInt8] = [0x03, 59, 0x02, 0x80, 1, 6, 0, 0]  // Hlen 3: T and D
                withUnsafeBytes(of: sid.bigEndian) { datagram.append(contentsOf: $0) }
                datagram += random.bytes(100)
                _ = socket.send(datagram, toPort: UInt16(port))
            }
        }
        async let received = E2E.receive(connection, seed: 1)
        try await E2E.send(connection, bytes: bytes, seed: 2)
        let clientResult = try await received
        flood.join()
        try await connection.close()
        let serverResult = try await serverSide.value
        #expect(clientResult.count == bytes && clientResult.intact)
        #expect(serverResult.count == bytes && serverResult.intact)
        try await Task.sleep(for: .milliseconds(300))
        let counters = await listener.workerCounters
        // Each flood datagram reached the other worker (less what its socket buffer could not
        // hold), never the session's.
        #expect(counters[other].droppedUnknownSession > 1_000, "\(counters)")
        #expect(counters[sessionWorker].droppedUnknownSession == 0, "\(counters)")
        #expect(counters[sessionWorker].droppedMalformed == 0 && counters[other].droppedMalformed == 0, "\(counters)")
        try await listener.close()
    }

    @Test("a closed listener's workers are freed (they refer to each other weakly)")
    func workersAreFreed() async throws {
        weak var first: TOUEndpoint?
        weak var second: TOUEndpoint?
        do {
            let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0,
                                                      configuration: E2E.serverConfiguration(), workers: 2)
            first = listener.endpoints[0]
            second = listener.endpoints[1]
            try await listener.close()
            for socket in listener.sockets { try await socket.closeFuture.get() }
        }
        for _ in 0..<100 where first != nil || second != nil {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(first == nil && second == nil)
    }
}
