import Foundation
import NIOCore
import Testing
@testable import TOUDTLS

#if canImport(Glibc)
import Glibc
#endif

/// Cancelling the task that awaits `connect`, `write`, a read of `inbound` or `close` ends that
/// operation with `CancellationError`; connect leaves nothing behind, the others reset the
/// connection. Real UDP sockets on loopback, real OpenSSL.
@Suite("Cancellation", .serialized)
struct CancellationTests {
    /// UDP sockets in this network namespace connected to 127.0.0.1:`port` (from /proc/net/udp).
    static func socketsConnected(toPort port: UInt16) -> Int {
        localPortsConnected(toPort: port)?.count ?? -1
    }

    /// The local ports of the UDP sockets connected to 127.0.0.1:`port`, or with `ipv6` to
    /// [::1]:`port` (nil if /proc/net/udp or udp6 is unreadable). Tests running beside this one
    /// have sockets of their own, and one of them may send to a port this test holds once a closed
    /// listener's port comes round again: a test follows its own socket by its local port.
    static func localPortsConnected(toPort port: UInt16, ipv6: Bool = false) -> [UInt16]? {
        guard let table = ProcCounters.read(ipv6 ? "/proc/net/udp6" : "/proc/net/udp") else { return nil }
        let remote = (ipv6 ? "00000000000000000000000001000000:" : "0100007F:") + String(format: "%04X", port)
        return table.split(separator: "\n").dropFirst().compactMap { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count > 2, fields[2] == remote, let colon = fields[1].lastIndex(of: ":") else { return nil }
            return UInt16(fields[1][fields[1].index(after: colon)...], radix: 16)
        }
    }

    static func isCancellation(_ error: any Error) -> Bool { error is CancellationError }

    /// A listener and a connected client; the server's side is handed to `server`.
    static func connectedPair(_ client: TOUConfiguration = EndToEndTests.clientConfiguration(),
                              server: TOUConfiguration = EndToEndTests.serverConfiguration())
        async throws -> (TOUListener, TOUConnection, TOUConnection)
    {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: server)
        let port = try #require(listener.localAddress.port)
        async let accepted: TOUConnection? = {
            var iterator = listener.connections.makeAsyncIterator()
            return await iterator.next()
        }()
        let connection = try await TOUConnection.connect(host: "127.0.0.1", port: port, configuration: client)
        let serverSide = try #require(await accepted)
        return (listener, connection, serverSide)
    }

    /// Sockets connected to `port`, once they have closed or 5 s have passed.
    static func socketsConnectedOnceSettled(toPort port: UInt16) async throws -> Int {
        var open = socketsConnected(toPort: port)
        for _ in 0..<250 where open != 0 {
            try await Task.sleep(for: .milliseconds(20))
            open = socketsConnected(toPort: port)
        }
        return open
    }

    /// Reads until the end or a failure; returns the failure.
    static func drainUntilFailure(_ connection: TOUConnection) async -> (any Error)? {
        do {
            for try await _ in connection.inbound {}
            return nil
        } catch {
            return error
        }
    }

    /// After a cancelled read or write: the peer hears a reset, and our later operations fail.
    static func expectReset(_ connection: TOUConnection, peer: TOUConnection,
                            sourceLocation: SourceLocation = #_sourceLocation) async {
        let peerFailure = await drainUntilFailure(peer)
        #expect(peerFailure as? TOUError == .connectionReset, "\(String(describing: peerFailure))",
                sourceLocation: sourceLocation)
        await #expect(throws: TOUError.self, sourceLocation: sourceLocation) {
            try await connection.write(ByteBuffer(string: "late"))
        }
    }

    @Test("the socket count reads all of /proc/net/udp, past the first 4 KiB a single read returns")
    func socketCountSeesEverySocket() throws {
        let target = try RawUDPSocket()
        defer { target.close() }
        var address = RawUDPSocket.loopback(port: target.port)
        let sockets = (0..<100).map { _ in socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0) }
        defer { for fd in sockets where fd >= 0 { Glibc.close(fd) } }
        for fd in sockets {
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            try #require(connected == 0)
        }
        let ours = sockets.map { fd -> UInt16 in
            var local = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            return UInt16(bigEndian: local.sin_port)
        }
        // Counted by local port: a socket of a test running beside this one may be connected to
        // the same port (a closed listener's, come round again).
        let listed = Set(Self.localPortsConnected(toPort: target.port) ?? [])
        #expect(ours.filter { listed.contains($0) }.count == 100)
    }

    @Test("connect to a peer that never answers: cancelled promptly, its socket closed")
    func connectCancelled() async throws {
        let silent = try RawUDPSocket()  // receives the ClientHello, answers nothing
        defer { silent.close() }
        var configuration = EndToEndTests.clientConfiguration()
        configuration.handshakeTimeout = .seconds(600)
        // On a loop of its own, and waited for without blocking: Swift's cooperative pool has a
        // thread per core, which tests running beside this one can keep busy for seconds.
        let attempt = Task(executorPreference: TOUConnection.nextTaskExecutor()) {
            try await TOUConnection.connect(host: "127.0.0.1", port: Int(silent.port), configuration: configuration)
        }
        // The attempt is under way once its first datagram arrives from a socket connected to
        // the silent port: the attempt's own (a stray datagram from another test is not).
        var attemptPort: UInt16?
        for _ in 0..<500 where attemptPort == nil {
            guard let datagram = silent.receive() else {
                try await Task.sleep(for: .milliseconds(20))
                continue
            }
            if Self.localPortsConnected(toPort: silent.port)?.contains(datagram.fromPort) == true {
                attemptPort = datagram.fromPort
            }
        }
        let port = try #require(attemptPort, "no datagram from the attempt's socket in 10 s")
        attempt.cancel()
        let result = await attempt.result
        #expect(throws: CancellationError.self) { try result.get() }
        // The socket goes with it (closing completes on the loop just after the failure).
        var open = true
        for _ in 0..<250 where open {
            open = Self.localPortsConnected(toPort: silent.port)?.contains(port) != false
            if open { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(!open, "the client's UDP socket is still open")
        // Nothing is sent after the cancellation: no retransmitted ClientHello.
        while silent.receive() != nil {}
        try await Task.sleep(for: .milliseconds(1500))  // past the first DTLS retransmission (1 s)
        var late: [UInt16] = []
        while let datagram = silent.receive() { late.append(datagram.fromPort) }
        #expect(!late.contains(port), "datagrams after the cancellation")
    }

    @Test("connect in a task cancelled before it starts throws CancellationError and opens nothing that stays")
    func connectAlreadyCancelled() async throws {
        let silent = try RawUDPSocket()
        defer { silent.close() }
        let attempt = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await TOUConnection.connect(host: "127.0.0.1", port: Int(silent.port),
                                                   configuration: EndToEndTests.clientConfiguration())
        }
        let result = await attempt.result
        #expect(throws: CancellationError.self) { try result.get() }
        #expect(try await Self.socketsConnectedOnceSettled(toPort: silent.port) == 0)
    }

    @Test("a read waiting for bytes: cancelled with CancellationError, the connection reset")
    func readCancelled() async throws {
        let (listener, connection, serverSide) = try await Self.connectedPair()
        let reader = Task { await Self.drainUntilFailure(connection) }
        try await Task.sleep(for: .milliseconds(100))  // let it wait (cancelling earlier ends it the same way)
        reader.cancel()
        let failure = await reader.value
        #expect(failure.map(Self.isCancellation) == true, "\(String(describing: failure))")
        await Self.expectReset(connection, peer: serverSide)
        try await listener.close()
    }

    @Test("a write waiting for room: cancelled with CancellationError, the connection reset")
    func writeCancelled() async throws {
        var client = EndToEndTests.clientConfiguration()
        client.sendBufferSize = 16 << 10
        var server = EndToEndTests.serverConfiguration()
        server.receiveBufferSize = 16 << 10
        let (listener, connection, serverSide) = try await Self.connectedPair(client, server: server)
        // The server reads nothing, so the writes soon wait for room.
        let writer = Task {
            let chunk = ByteBuffer(repeating: 0x61, count: 64 << 10)
            while true { try await connection.write(chunk) }
        }
        try await Task.sleep(for: .milliseconds(200))
        writer.cancel()
        let result = await writer.result
        #expect(throws: CancellationError.self) { try result.get() }
        await Self.expectReset(connection, peer: serverSide)
        try await listener.close()
    }

    @Test("close waiting for the peer: cancelled with CancellationError, the connection reset")
    func closeCancelled() async throws {
        let (listener, connection, serverSide) = try await Self.connectedPair()
        // The server never finishes, so close() waits (up to the 30 s close timeout).
        let closing = Task { try await connection.close() }
        try await Task.sleep(for: .milliseconds(100))
        closing.cancel()
        let result = await closing.result
        #expect(throws: CancellationError.self) { try result.get() }
        // Reset on our side: whatever the peer does next, our connection is over.
        await #expect(throws: TOUError.closed) { try await connection.write(ByteBuffer(string: "late")) }
        await #expect(throws: TOUError.closed) { try await connection.close() }
        _ = try? await serverSide.close()
        try await listener.close()
    }

    @Test("a completed operation is not undone by a later cancellation")
    func completedReadSurvives() async throws {
        let (listener, connection, serverSide) = try await Self.connectedPair()
        try await serverSide.write(ByteBuffer(string: "hello"))
        try await serverSide.finishWriting()
        let reader = Task {
            var text = ""
            for try await chunk in connection.inbound { text += String(buffer: chunk) }
            return text
        }
        let text = try await reader.value
        reader.cancel()
        #expect(text == "hello")
        try await connection.close()
        try await serverSide.close()
        try await listener.close()
    }
}
