import Foundation
import NIOCore
import Testing
import TOUWire
@testable import TOUDTLS

/// Many client connections over one UDP socket (`TOUClientEndpoint`): real sockets on loopback,
/// real OpenSSL, the library's own listener as the peer.
@Suite("Client endpoint shared by connections")
struct ClientEndpointTests {
    typealias E2E = EndToEndTests

    /// A listener that echoes every connection until its FIN (`listener.serve`); reports the
    /// source port of each.
    final class EchoServer: Sendable {
        let listener: TOUListener
        let port: Int
        let peerPorts = LockedBox<[Int]>([])
        private let serving: Task<Void, Never>

        init(workers: Int = 1) async throws {
            let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: E2E.serverConfiguration(),
                                                      workers: workers)
            self.listener = listener
            self.port = try #require(listener.localAddress.port)
            let peerPorts = self.peerPorts
            serving = Task {
                await listener.serve { connection in
                    peerPorts.withLock { $0.append(connection.remoteAddress.port ?? 0) }
                    do {
                        for try await chunk in connection.inbound { try await connection.write(chunk) }
                        try await connection.close()
                    } catch {}
                }
            }
        }

        func close() async throws {
            try await listener.close()
            await serving.value
        }
    }

    /// Sends `bytes` of pattern `seed` and checks the echo, byte for byte.
    static func echo(_ connection: TOUConnection, bytes: Int, seed: UInt64) async throws -> Bool {
        async let received = E2E.receive(connection, seed: seed)
        try await E2E.send(connection, bytes: bytes, seed: seed)
        let result = try await received
        try await connection.close()
        return result.count == bytes && result.intact
    }

    @Test("16 connections share the socket, and each gets its own stream back intact")
    func connectionsShareTheSocket() async throws {
        let server = try await EchoServer()
        let endpoint = try await TOUClientEndpoint.bind(host: "127.0.0.1", configuration: E2E.clientConfiguration())
        let intact = try await withThrowingTaskGroup(of: Bool.self) { group in
            for index in 0..<16 {
                group.addTask {
                    let connection = try await endpoint.connect(host: "127.0.0.1", port: server.port)
                    return try await Self.echo(connection, bytes: 256 << 10, seed: UInt64(index) + 100)
                }
            }
            return try await group.reduce(into: [Bool]()) { $0.append($1) }
        }
        #expect(intact == Array(repeating: true, count: 16))
        // One source port for all of them: the endpoint's.
        #expect(server.peerPorts.current == Array(repeating: endpoint.localAddress.port, count: 16))
        let counters = await endpoint.counters
        // The endpoint's own count: at least the 256 KiB echoes' full-size datagrams (~190 each).
        #expect(counters.datagramsReceived > 16 * 150)
        try await endpoint.close()
        try await server.close()
    }

    @Test("the attempts of one shared socket spread over a listener's two workers, and nothing is handed between them")
    func attemptsSpreadOverWorkers() async throws {
        let server = try await EchoServer(workers: 2)
        let endpoint = try await TOUClientEndpoint.bind(host: "127.0.0.1", configuration: E2E.clientConfiguration())
        let intact = try await withThrowingTaskGroup(of: Bool.self) { group in
            for index in 0..<16 {
                group.addTask {
                    let connection = try await endpoint.connect(host: "127.0.0.1", port: server.port)
                    return try await Self.echo(connection, bytes: 16 << 10, seed: UInt64(index))
                }
            }
            return try await group.reduce(into: [Bool]()) { $0.append($1) }
        }
        #expect(intact == Array(repeating: true, count: 16))
        let listener = server.listener
        let workers = await listener.workerCounters
        // From one address and port the kernel's hash would pick one worker for every attempt; the
        // steering program picks by S instead (16 random SIDs all on one worker: 1 in 32,768).
        if listener.steersBySessionID {
            #expect(workers.map(\.sessionsAccepted).allSatisfy { $0 > 0 }, "\(workers.map(\.sessionsAccepted))")
            #expect(workers.map(\.misroutedDatagrams) == [0, 0])
        }
        #expect(workers.map(\.sessionsAccepted).reduce(0, +) == 16)
        try await endpoint.close()
        try await server.close()
    }

    @Test("a closed connection leaves the others running; close waits for the last, then connect throws closed")
    func closingOneLeavesTheOthers() async throws {
        let server = try await EchoServer()
        let endpoint = try await TOUClientEndpoint.bind(host: "127.0.0.1", configuration: E2E.clientConfiguration())
        let first = try await endpoint.connect(host: "127.0.0.1", port: server.port)
        let second = try await endpoint.connect(host: "127.0.0.1", port: server.port)
        #expect(try await Self.echo(first, bytes: 64 << 10, seed: 1))
        // A connect cancelled in its handshake leaves the socket to the others too.
        let cancelled = Task { try await endpoint.connect(host: "127.0.0.1", port: server.port) }
        try await Task.sleep(for: .microseconds(300))
        cancelled.cancel()
        _ = try? await cancelled.value
        #expect(try await Self.echo(second, bytes: 1 << 20, seed: 2))
        let third = try await endpoint.connect(host: "127.0.0.1", port: server.port)
        #expect(try await Self.echo(third, bytes: 64 << 10, seed: 3))
        try await endpoint.close()
        await #expect {
            _ = try await endpoint.connect(host: "127.0.0.1", port: server.port)
        } throws: { error in
            (error as? TOUError) == .closed
        }
        try await server.close()
    }

    @Test("a dropped endpoint keeps its connection running, and its socket closes after the connection ends")
    func droppedEndpointClosesAfterItsConnections() async throws {
        let server = try await EchoServer()
        var endpoint: TOUClientEndpoint? = try await TOUClientEndpoint.bind(host: "127.0.0.1",
                                                                            configuration: E2E.clientConfiguration())
        let connection = try await endpoint!.connect(host: "127.0.0.1", port: server.port)
        let shared = connection.endpoint
        endpoint = nil
        #expect(try await Self.echo(connection, bytes: 256 << 10, seed: 9))
        try await connection.waitUntilEnded()
        // The last session is gone: the socket goes with it (on the loop, just after).
        var open = true
        for _ in 0..<200 where open {
            open = try await shared.loop.submit { shared.socket != nil }.get()
            if open { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(!open, "the shared socket is still open")
        try await server.close()
    }

    @Test("an attempt at a port where nothing listens times out; the endpoint still connects elsewhere")
    func nothingListening() async throws {
        let server = try await EchoServer()
        let silent = try RawUDPSocket()
        defer { silent.close() }
        var configuration = E2E.clientConfiguration()
        configuration.handshakeTimeout = .milliseconds(800)
        let endpoint = try await TOUClientEndpoint.bind(host: "127.0.0.1", configuration: configuration)
        await #expect {
            _ = try await endpoint.connect(host: "127.0.0.1", port: Int(silent.port))
        } throws: { error in
            guard case .timedOut = error as? TOUError else { return false }
            return true
        }
        let connection = try await endpoint.connect(host: "127.0.0.1", port: server.port)
        #expect(try await Self.echo(connection, bytes: 64 << 10, seed: 4))
        try await endpoint.close()
        try await server.close()
    }

    @Test("a peer of the other address family is refused with a message naming the socket's")
    func otherFamily() async throws {
        let endpoint = try await TOUClientEndpoint.bind(host: "127.0.0.1", configuration: E2E.clientConfiguration())
        await #expect {
            _ = try await endpoint.connect(host: "::1", port: 4433)
        } throws: { error in
            guard case .unreachable(let message) = error as? TOUError else { return false }
            return message.contains("IPv4")
        }
        try await endpoint.close()
    }

    @Test("junk and datagrams for unknown sessions at the shared socket are dropped and counted")
    func junkIsDropped() async throws {
        let server = try await EchoServer()
        let endpoint = try await TOUClientEndpoint.bind(host: "127.0.0.1", configuration: E2E.clientConfiguration())
        let port = try #require(endpoint.localAddress.port.map(UInt16.init))
        let connections = [
            try await endpoint.connect(host: "127.0.0.1", port: server.port),
            try await endpoint.connect(host: "127.0.0.1", port: server.port),
        ]
        let flooder = try RawUDPSocket()
        defer { flooder.close() }
        let flood = Task.detached {
            var random = SeededRandom(seed: 7)
            for index in 0..<3_000 {
                if index % 2 == 0 {
                    flooder.send(random.bytes(1 + random.below(1_400)), toPort: port)
                } else {
                    // A well-formed GUE header naming a session that does not exist, then noise.
                    var datagram = ByteBufferAllocator().buffer(capacity: 128)
                    GUEHeader.secure(source: nil, destination: random.next()).write(into: &datagram)
                    datagram.writeBytes(random.bytes(64))
                    flooder.send(Array(datagram.readableBytesView), toPort: port)
                }
                if index % 100 == 0 { try? await Task.sleep(for: .milliseconds(1)) }
            }
        }
        let intact = try await withThrowingTaskGroup(of: Bool.self) { group in
            for (index, connection) in connections.enumerated() {
                group.addTask { try await Self.echo(connection, bytes: 2 << 20, seed: UInt64(index) + 50) }
            }
            return try await group.reduce(into: [Bool]()) { $0.append($1) }
        }
        await flood.value
        #expect(intact == [true, true])
        // Let the last of the flood arrive.
        try await Task.sleep(for: .milliseconds(200))
        let counters = await endpoint.counters
        #expect(counters.droppedMalformed > 0)
        #expect(counters.droppedUnknownSession > 0)
        try await endpoint.close()
        try await server.close()
    }
}
