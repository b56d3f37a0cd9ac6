import Foundation
import NIOCore
import Testing
@testable import TOUDTLS

/// Real UDP sockets on loopback, real OpenSSL, both ends of the library.
@Suite("End to end over loopback UDP")
struct EndToEndTests {
    static let certs = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("certs").path

    static func serverConfiguration(requireClientCertificate: Bool = false) -> TOUConfiguration {
        .server(certificateChain: .pemFile("\(certs)/server.pem"), privateKey: .pemFile("\(certs)/server.key"),
                clientTrustRoots: .pemFile("\(certs)/ca.pem"), requireClientCertificate: requireClientCertificate)
    }

    static func clientConfiguration(ca: String = "ca.pem", serverName: String? = "localhost",
                                    clientCertificate: Bool = false) -> TOUConfiguration {
        .client(trustRoots: .pemFile("\(certs)/\(ca)"), serverName: serverName,
                certificateChain: clientCertificate ? .pemFile("\(certs)/client.pem") : nil,
                privateKey: clientCertificate ? .pemFile("\(certs)/client.key") : nil)
    }

    /// Deterministic bytes, a function of (seed, stream offset), so the receiver can check every
    /// byte without keeping a copy, whatever the chunk boundaries.
    struct Pattern {
        let seed: UInt64

        func block(_ index: Int) -> UInt64 {
            var z = seed &+ UInt64(truncatingIfNeeded: index) &* 0x9E37_79B9_7F4A_7C15
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }

        func fill(_ bytes: UnsafeMutableRawBufferPointer, streamOffset: Int) {
            var index = 0
            while index < bytes.count {
                let position = streamOffset + index
                let value = block(position >> 3)
                bytes[index] = UInt8(truncatingIfNeeded: value >> (UInt64(position & 7) * 8))
                index += 1
            }
        }

        func bytes(count: Int, streamOffset: Int) -> ByteBuffer {
            var buffer = ByteBufferAllocator().buffer(capacity: count)
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { pointer in
                fill(UnsafeMutableRawBufferPointer(rebasing: pointer[0..<count]), streamOffset: streamOffset)
                return count
            }
            return buffer
        }
    }

    static func send(_ connection: TOUConnection, bytes: Int, seed: UInt64) async throws {
        let pattern = Pattern(seed: seed)
        var sent = 0
        while sent < bytes {
            let count = min(64 << 10, bytes - sent)
            try await connection.write(pattern.bytes(count: count, streamOffset: sent))
            sent += count
        }
        try await connection.finishWriting()
    }

    /// Reads until the peer's FIN; returns the byte count, checking each byte against the pattern.
    static func receive(_ connection: TOUConnection, seed: UInt64) async throws -> (count: Int, intact: Bool) {
        let pattern = Pattern(seed: seed)
        var count = 0
        var intact = true
        for try await chunk in connection.inbound {
            if chunk != pattern.bytes(count: chunk.readableBytes, streamOffset: count) { intact = false }
            count += chunk.readableBytes
        }
        return (count, intact)
    }

    /// Returns the client endpoint's counters, taken once both directions are done.
    @discardableResult
    func transfer(server: TOUConfiguration, client: TOUConfiguration, host: String = "127.0.0.1",
                  bytes: Int) async throws -> TOUEndpointCounters {
        let listener = try await TOUListener.bind(host: host, port: 0, configuration: server)
        let port = try #require(listener.localAddress.port)
        let serverSide = Task {
            var iterator = listener.connections.makeAsyncIterator()
            let connection = try #require(await iterator.next())
            async let received = Self.receive(connection, seed: 2)
            try await Self.send(connection, bytes: bytes, seed: 1)
            let result = try await received
            try await connection.close()
            return result
        }
        let connection = try await TOUConnection.connect(host: host, port: port, configuration: client)
        async let received = Self.receive(connection, seed: 1)
        try await Self.send(connection, bytes: bytes, seed: 2)
        let clientResult = try await received
        let counters = await connection.endpointCounters
        try await connection.close()
        let serverResult = try await serverSide.value
        #expect(clientResult.count == bytes && clientResult.intact)
        #expect(serverResult.count == bytes && serverResult.intact)
        try await listener.close()
        return counters
    }

    @Test("bulk data leaves in GSO runs and arrives in GRO reads where the kernel has them")
    func segmentationOffload() async throws {
        let counters = try await transfer(server: Self.serverConfiguration(), client: Self.clientConfiguration(),
                                          bytes: 8 << 20)
        // 8 MiB each way is ~6,000 full datagrams; runs of up to 44 make far fewer writes.
        if System.supportsUDPSegmentationOffload {
            #expect(counters.segmentationWrites > 0)
            #expect(counters.segmentationWrites < counters.datagramsSent / 4)
        } else {
            #expect(counters.segmentationWrites == 0)
        }
        if System.supportsUDPReceiveOffload {
            #expect(counters.coalescedReads > 0)
        } else {
            #expect(counters.coalescedReads == 0)
        }
    }

    @Test("with offload off every datagram is its own write and read, and the bytes still arrive")
    func segmentationOffloadOff() async throws {
        var server = Self.serverConfiguration()
        var client = Self.clientConfiguration()
        server.segmentationOffload = false
        client.segmentationOffload = false
        let counters = try await transfer(server: server, client: client, bytes: 4 << 20)
        #expect(counters.segmentationWrites == 0)
        #expect(counters.coalescedReads == 0)
    }

    @Test("10 MB each way with DTLS over IPv4, every byte checked")
    func bulkBothWaysDTLS() async throws {
        try await transfer(server: Self.serverConfiguration(), client: Self.clientConfiguration(), bytes: 10 << 20)
    }

    @Test("10 MB each way in plain mode")
    func bulkBothWaysPlain() async throws {
        try await transfer(server: .plain, client: .plain, bytes: 10 << 20)
    }

    @Test("IPv6 loopback with DTLS")
    func ipv6() async throws {
        try await transfer(server: Self.serverConfiguration(), client: Self.clientConfiguration(), host: "::1",
                           bytes: 1 << 20)
    }

    @Test("the client sees the server's subject and the server the client's")
    func certificateSubjects() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0,
                                                  configuration: Self.serverConfiguration(requireClientCertificate: true))
        let port = try #require(listener.localAddress.port)
        let serverSide = Task {
            var iterator = listener.connections.makeAsyncIterator()
            let connection = try #require(await iterator.next())
            let subject = connection.peerCertificateSubject
            try await connection.finishWriting()
            for try await _ in connection.inbound {}
            try await connection.close()
            return subject
        }
        let connection = try await TOUConnection.connect(host: "127.0.0.1", port: port,
                                                         configuration: Self.clientConfiguration(clientCertificate: true))
        #expect(connection.peerCertificateSubject?.contains("localhost") == true)
        #expect(connection.cipherSuite?.contains("AES256-GCM") == true)
        try await connection.finishWriting()
        for try await _ in connection.inbound {}
        try await connection.close()
        #expect(try await serverSide.value?.contains("toudtls-test-client") == true)
        let stats = await connection.stats
        #expect(stats.smoothedRTT != nil)
        try await listener.close()
    }

    @Test("an untrusted CA fails the handshake with a typed error")
    func untrustedCA() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: Self.serverConfiguration())
        let port = try #require(listener.localAddress.port)
        await #expect {
            _ = try await TOUConnection.connect(host: "127.0.0.1", port: port,
                                                configuration: Self.clientConfiguration(ca: "other-ca.pem"))
        } throws: { error in
            guard case .untrustedCertificate = error as? TOUError else { return false }
            return true
        }
        #expect(await listener.counters.sessionsAccepted == 0)
        try await listener.close()
    }

    @Test("a wrong server name fails the handshake with a typed error")
    func wrongName() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: Self.serverConfiguration())
        let port = try #require(listener.localAddress.port)
        await #expect {
            _ = try await TOUConnection.connect(host: "127.0.0.1", port: port,
                                                configuration: Self.clientConfiguration(serverName: "example.com"))
        } throws: { error in
            guard case .nameMismatch = error as? TOUError else { return false }
            return true
        }
        try await listener.close()
    }

    @Test("a missing client certificate is refused when required")
    func missingClientCertificate() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0,
                                                  configuration: Self.serverConfiguration(requireClientCertificate: true))
        let port = try #require(listener.localAddress.port)
        await #expect {
            _ = try await TOUConnection.connect(host: "127.0.0.1", port: port, configuration: Self.clientConfiguration())
        } throws: { error in
            (error as? TOUError)?.isAuthenticationFailure == true
        }
        #expect(await listener.counters.sessionsAccepted == 0)
        try await listener.close()
    }

    @Test("nothing listening: unreachable, quickly")
    func unreachable() async throws {
        // Bind and close a socket to find a port nobody listens on.
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: .plain)
        let port = try #require(listener.localAddress.port)
        try await listener.close()
        var configuration = TOUConfiguration.plain
        configuration.handshakeTimeout = .seconds(3)
        await #expect {
            _ = try await TOUConnection.connect(host: "127.0.0.1", port: port, configuration: configuration)
        } throws: { error in
            switch error as? TOUError {
            case .unreachable, .timedOut: return true
            default: return false
            }
        }
    }

    @Test("an unreadable key file is a configuration error")
    func unreadableFile() async throws {
        let configuration = TOUConfiguration.server(certificateChain: .pemFile("\(Self.certs)/server.pem"),
                                                    privateKey: .pemFile("/nonexistent/key.pem"))
        await #expect {
            _ = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: configuration)
        } throws: { error in
            guard case .unreadableFile = error as? TOUError else { return false }
            return true
        }
    }

    @Test("a peer that vanishes mid-transfer ends in a timeout or unreachable error, never a hang or a socket error")
    func vanishedPeer() async throws {
        var serverConfiguration = Self.serverConfiguration()
        serverConfiguration.idleTimeout = .seconds(2)  // the server side notices too, and close() returns
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: serverConfiguration)
        let relay = try CapturingRelay(listenerPort: UInt16(try #require(listener.localAddress.port)))
        defer { relay.stop() }
        let serverSide = Task {
            var iterator = listener.connections.makeAsyncIterator()
            let connection = try #require(await iterator.next())
            // Reads until the path dies; its own idle timeout ends it.
            _ = try? await Self.receive(connection, seed: 3)
        }
        defer { serverSide.cancel() }
        var configuration = Self.clientConfiguration()
        configuration.idleTimeout = .seconds(2)
        let connection = try await TOUConnection.connect(host: "127.0.0.1", port: Int(relay.port),
                                                         configuration: configuration)
        let start = ContinuousClock.now
        relay.stop()  // the peer is gone: nothing passes any more
        await #expect {
            try await Self.send(connection, bytes: 64 << 20, seed: 3)
            for try await _ in connection.inbound {}
        } throws: { error in
            // The relay's closed port may answer with ICMP port unreachable: that says unreachable.
            switch error as? TOUError {
            case .timedOut, .unreachable: return true
            default: return false
            }
        }
        #expect(ContinuousClock.now - start < .seconds(30))
        try? await listener.close()
    }

    @Test("expired and not-yet-valid server certificates and a wrong pin are typed errors")
    func certificateFailures() async throws {
        for (name, pin) in [("expired-server", nil), ("future-server", nil), ("server", "sha256:" + String(repeating: "A", count: 43) + "=")] {
            let server = TOUConfiguration.server(certificateChain: .pemFile("\(Self.certs)/\(name).pem"),
                                                 privateKey: .pemFile("\(Self.certs)/\(name).key"))
            let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: server)
            let port = try #require(listener.localAddress.port)
            var client = Self.clientConfiguration()
            if let pin { client.pinnedPublicKeys = [pin] }
            await #expect {
                _ = try await TOUConnection.connect(host: "127.0.0.1", port: port, configuration: client)
            } throws: { error in
                switch error as? TOUError {
                case .untrustedCertificate(let what): return pin == nil && (what.contains("expired") || what.contains("not yet valid"))
                case .pinMismatch: return pin != nil
                default: return false
                }
            }
            #expect(await listener.counters.sessionsAccepted == 0)
            try await listener.close()
        }
    }
}
