import Foundation
import NIOCore
import TOUWire
import Testing
@testable import TOUDTLS

/// Resumption end to end: a client configuration's session cache, a listener's session tickets.
@Suite("Resumption with session tickets", .serialized)
struct ResumptionTests {
    typealias E2E = EndToEndTests

    /// Certificate (type 11) handshake messages in the listener's epoch-0 datagrams.
    static func certificatesSent(_ capture: CapturingRelay.Capture) -> Int {
        capture.serverHandshake.reduce(0) { count, bytes in
            let payload = ByteBuffer(bytes: bytes.dropFirst(CapturedDatagram.headerLength(bytes) ?? 0))
            return count + payload.dtlsRecords.filter { at, header in
                header.contentType == 22 && header.epoch == 0
                    && payload.getInteger(at: at + 13, as: UInt8.self) == 11
            }.count
        }
    }

    @Test("a second connection with the same configuration resumes: no certificate, session renewed in the cache")
    func secondConnectionResumes() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: E2E.serverConfiguration())
        let port = try #require(listener.localAddress.port)
        let relay = try CapturingRelay(listenerPort: UInt16(port))
        defer { relay.stop() }
        let configuration = E2E.clientConfiguration()
        let cache = try #require(configuration.sessionCache)

        try await FastSetupTests.connectOnce(listener, port: Int(relay.port), client: configuration)
        #expect(Self.certificatesSent(relay.snapshot) == 1)
        let first = try #require(cache.session(serverName: "localhost", port: Int(relay.port)))

        let second = try CapturingRelay(listenerPort: UInt16(port))
        defer { second.stop() }
        var copy = configuration  // copies share the cache
        copy.idleTimeout = .seconds(60)
        let server = Task {
            var iterator = listener.connections.makeAsyncIterator()
            let connection = try #require(await iterator.next())
            #expect(connection.isResumed)
            try await connection.close()
        }
        // The cache is keyed by server name and port: the relay's port is new, so seed it.
        cache.insert(first, port: Int(second.port))
        let resumed = try await TOUConnection.connect(host: "127.0.0.1", port: Int(second.port), configuration: copy)
        #expect(resumed.isResumed)
        #expect(resumed.peerCertificateSubject == "CN=localhost")
        #expect(Self.certificatesSent(second.snapshot) == 0)
        try await resumed.close()
        try await server.value
        try await listener.close()
    }

    @Test("a session is offered only to its server name and port; one the listener cannot open falls back to a full handshake")
    func foreignAndStaleSessions() async throws {
        var listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: E2E.serverConfiguration())
        var port = try #require(listener.localAddress.port)
        var configuration = E2E.clientConfiguration()
        try await FastSetupTests.connectOnce(listener, port: port, client: configuration)
        let cache = try #require(configuration.sessionCache)
        let saved = try #require(cache.session(serverName: "localhost", port: port))
        #expect(cache.session(serverName: "localhost", port: port + 1) == nil)

        // Offered under another server name, the session is refused before the handshake.
        let other = TOUSessionCache()
        configuration.sessionCache = other
        configuration.serverName = "127.0.0.1"
        // The same bytes labelled with another name: the DTLS layer checks the name inside them.
        other.insert(TOUSavedSession(.init(bytes: saved.saved.bytes, serverName: "127.0.0.1", expires: saved.saved.expires)),
                     port: port)
        try await FastSetupTests.connectOnce(listener, port: port, client: configuration)
        #expect(other.session(serverName: "127.0.0.1", port: port) != nil)  // the fresh one

        // A listener restarted has new ticket keys: the old ticket buys a full handshake, no failure.
        try await listener.close()
        listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: E2E.serverConfiguration())
        port = try #require(listener.localAddress.port)
        configuration = E2E.clientConfiguration()
        configuration.sessionCache?.insert(saved, port: port)
        let server = Task {
            var iterator = listener.connections.makeAsyncIterator()
            let connection = try #require(await iterator.next())
            #expect(!connection.isResumed)
            try await connection.close()
        }
        let fresh = try await TOUConnection.connect(host: "127.0.0.1", port: port, configuration: configuration)
        #expect(!fresh.isResumed)
        #expect(fresh.resumptionRefusal == nil)  // it was offered; the listener declined
        #expect(fresh.resumableSession != nil && fresh.resumableSession != saved)
        try await fresh.close()
        try await server.value
        try await listener.close()
    }

    @Test("a saved session survives a connect that never reached the server")
    func sessionSurvivesAnUnreachableServer() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: E2E.serverConfiguration())
        let port = try #require(listener.localAddress.port)
        let configuration = E2E.clientConfiguration()
        try await FastSetupTests.connectOnce(listener, port: port, client: configuration)
        let cache = try #require(configuration.sessionCache)
        let saved = try #require(cache.session(serverName: "localhost", port: port))
        try await listener.close()

        // Nothing listens now: ICMP port unreachable ends the attempt at once.
        await #expect(throws: TOUError.self) {
            try await TOUConnection.connect(host: "127.0.0.1", port: port, configuration: configuration)
        }
        #expect(cache.session(serverName: "localhost", port: port) == saved)
    }

    @Test("saved sessions survive serialization; junk is refused with a reason")
    func serialization() throws {
        let saved = TOUSavedSession(.init(bytes: [1, 2, 3, 4], serverName: "example.org", expires: 1_900_000_000))
        let copy = try TOUSavedSession(serialized: saved.serialized())
        #expect(copy == saved)
        #expect(copy.expires == Date(timeIntervalSince1970: 1_900_000_000))
        #expect(throws: TOUError.invalidConfiguration("not a saved toudtls session")) {
            try TOUSavedSession(serialized: Array("hello".utf8))
        }
        #expect(throws: TOUError.self) { try TOUSavedSession(serialized: Array(saved.serialized().prefix(20))) }
    }

    @Test("the cache is bounded, least recently used first, and drops expired sessions")
    func cacheBounds() {
        let cache = TOUSessionCache(capacity: 2)
        func session(_ name: String, expires: Int64 = 4_000_000_000) -> TOUSavedSession {
            TOUSavedSession(.init(bytes: [1], serverName: name, expires: expires))
        }
        cache.insert(session("a"), port: 1)
        cache.insert(session("b"), port: 1)
        _ = cache.session(serverName: "a", port: 1)
        cache.insert(session("c"), port: 1)
        #expect(cache.count == 2)
        #expect(cache.session(serverName: "b", port: 1) == nil)
        #expect(cache.session(serverName: "a", port: 1) != nil)
        cache.insert(session("old", expires: 1), port: 1)
        #expect(cache.session(serverName: "old", port: 1) == nil)
    }
}

@Suite("Client DTLS contexts are built once per set of PEM material")
struct ClientContextCacheTests {
    @Test func aConfigurationReusesItsContextUntilItsMaterialChanges() throws {
        var configuration = EndToEndTests.clientConfiguration()
        let first = try configuration.makeClientContext()
        #expect(try configuration.makeClientContext() === first)
        let copy = configuration
        #expect(try copy.makeClientContext() === first)
        configuration.pinnedPublicKeys = ["sha256:" + String(repeating: "A", count: 43) + "="]
        let pinned = try configuration.makeClientContext()
        #expect(pinned !== first)
        configuration.trustRoots = .pemFile("\(EndToEndTests.certs)/other-ca.pem")
        #expect(try configuration.makeClientContext() !== pinned)
    }

    /// A connect looks at the files, not into them: a file replaced on disk takes effect, one
    /// touched without a change keeps the context, and one removed fails as unreadable.
    @Test func aTrustFileChangedOnDiskTakesEffect() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("toudtls-ca-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("ca.pem").path
        let ca = try Data(contentsOf: URL(fileURLWithPath: "\(EndToEndTests.certs)/ca.pem"))
        let otherCA = try Data(contentsOf: URL(fileURLWithPath: "\(EndToEndTests.certs)/other-ca.pem"))
        try ca.write(to: URL(fileURLWithPath: path))
        var configuration = EndToEndTests.clientConfiguration()
        configuration.trustRoots = .pemFile(path)
        let first = try configuration.makeClientContext()
        #expect(try configuration.makeClientContext() === first)

        // Same bytes, new modification time: read again, same material, same context.
        try ca.write(to: URL(fileURLWithPath: path))
        #expect(try configuration.makeClientContext() === first)

        try otherCA.write(to: URL(fileURLWithPath: path), options: .atomic)
        let replaced = try configuration.makeClientContext()
        #expect(replaced !== first)
        #expect(try configuration.makeClientContext() === replaced)

        try FileManager.default.removeItem(atPath: path)
        #expect(throws: TOUError.self) { try configuration.makeClientContext() }
    }
}
