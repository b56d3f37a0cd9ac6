import DTLS
import Foundation
import NIOCore
import Testing

/// Abbreviated handshakes with session tickets (RFC 5077): the server keeps no state, the client
/// keeps a saved session bound to the server name and to the trust that verified the server.
@Suite struct DTLSResumptionTests {
    /// A full handshake against `server`; returns the client's saved session.
    private func firstSession(server: DTLSContext, client: DTLSContext? = nil) throws -> DTLSSavedSession {
        let pair = try Pair(client: client ?? Certs.client(), server: server)
        pair.handshake()
        try #require(pair.clientEvents == [.handshakeCompleted])
        #expect(!pair.client.isResumed)
        #expect(Self.certificateMessages(in: pair.serverSent) == 1)
        return try #require(pair.client.resumableSession)
    }

    /// How many Certificate handshake messages (type 11) the datagrams carry in epoch 0.
    static func certificateMessages(in datagrams: [ByteBuffer]) -> Int {
        RecordList(datagrams).filter { $0.type == 22 && $0.epoch == 0 && $0.firstBodyByte == 11 }.count
    }

    @Test func aSavedSessionResumesWithoutACertificateAndCarriesData() throws {
        let server = try Certs.server()
        let saved = try firstSession(server: server)
        #expect(saved.serverName == "localhost")
        #expect(saved.expires > Int64(Date().timeIntervalSince1970) + 3000)

        let pair = try Pair(client: Certs.client(), server: server)
        let resumed = try DTLSConnection(client: Certs.client(), serverName: "localhost", mtu: 1400, resuming: saved)
        #expect(resumed.resumptionRefusal == nil)
        let resumedPair = try Pair(client: resumed, serverContext: server)
        resumedPair.handshake()
        #expect(resumedPair.clientEvents == [.handshakeCompleted])
        #expect(resumedPair.serverEvents == [.handshakeCompleted])
        #expect(resumed.isResumed)
        #expect(try #require(resumedPair.server).isResumed)
        #expect(Self.certificateMessages(in: resumedPair.serverSent) == 0)
        #expect(resumed.peerCertificateSubject == "CN=localhost")
        // Fewer bytes than a full handshake: no certificate chain, no key exchange.
        pair.handshake()
        let fullBytes = pair.serverSent.reduce(0) { $0 + $1.readableBytes }
        let resumedBytes = resumedPair.serverSent.reduce(0) { $0 + $1.readableBytes }
        #expect(resumedBytes < fullBytes / 2, "resumed \(resumedBytes) bytes, full \(fullBytes)")

        try resumed.writeApplicationData(ByteBuffer(string: "resumed"))
        let datagram = try #require(resumed.pollDatagram())
        let serverSide = try #require(resumedPair.server)
        serverSide.receiveDatagram(datagram, now: resumedPair.now)
        #expect(serverSide.readApplicationData() == ByteBuffer(string: "resumed"))
    }

    /// A saved session is decoded once and offered by every later connection, on any thread: each
    /// offer hands OpenSSL a copy, since OpenSSL changes the session it resumes (a renewed ticket)
    /// and the one of a connection freed without close_notify (no longer resumable).
    @Test func oneSavedSessionResumesManyConnectionsAfterItsSourceEndedUncleanly() throws {
        let server = try Certs.server()
        // firstSession's pair is freed without a close_notify either way.
        let saved = try firstSession(server: server)
        let client = try Certs.client()
        /// Whether a connection offering `saved` resumed, and whether it got a renewed ticket.
        @Sendable func resumeOnce() throws -> (resumed: Bool, renewed: Bool) {
            let connection = try DTLSConnection(client: client, serverName: "localhost", mtu: 1400, resuming: saved)
            let pair = try Pair(client: connection, serverContext: server)
            pair.handshake()
            #expect(pair.clientEvents == [.handshakeCompleted])
            return (connection.isResumed, connection.resumableSession != nil)
        }
        for _ in 0..<3 { #expect(try resumeOnce() == (true, false)) }
        // A resumption whose ticket the server renews leaves the saved session as it was.
        server.rotateTicketKeys()
        #expect(try resumeOnce() == (true, true))
        #expect(try resumeOnce() == (true, true))

        let resumed = LockedCounter()
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            if (try? resumeOnce())?.resumed == true { resumed.increment() }
        }
        #expect(resumed.value == 8)
    }

    /// A session holds the server's certificate, however large: one of 10 KB or more (hundreds of
    /// names) is saved and resumed like any other. (Export used a fixed 8 KB buffer and returned no
    /// session for a larger one, silently.)
    @Test func aSessionWithALargeServerCertificateIsSavedAndResumes() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("toudtls-bigcert-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let names = ["DNS:localhost"] + (0..<400).map { "DNS:host-\($0).a-rather-long-name.example.org" }
        let key = directory.appendingPathComponent("large.key").path
        let request = directory.appendingPathComponent("large.csr").path
        let certificate = directory.appendingPathComponent("large.pem").path
        let extensions = directory.appendingPathComponent("large.ext").path
        try ("subjectAltName=" + names.joined(separator: ",") + "\n").write(toFile: extensions, atomically: true, encoding: .utf8)
        try Self.openssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key])
        try Self.openssl(["req", "-new", "-key", key, "-subj", "/CN=localhost", "-out", request])
        try Self.openssl(["x509", "-req", "-in", request, "-CA", Certs.path("ca.pem"), "-CAkey", Certs.path("ca.key"),
                          "-CAcreateserial", "-CAserial", directory.appendingPathComponent("ca.srl").path,
                          "-days", "2", "-sha256", "-extfile", extensions, "-out", certificate])
        let server = try DTLSContext.server(certificateChainPEM: [UInt8](try Data(contentsOf: URL(fileURLWithPath: certificate))),
                                            privateKeyPEM: [UInt8](try Data(contentsOf: URL(fileURLWithPath: key))))
        let first = try Pair(client: Certs.client(), server: server)
        first.handshake()
        try #require(first.clientEvents == [.handshakeCompleted])
        #expect(Self.certificateMessages(in: first.serverSent) > 1)  // fragmented across datagrams
        let saved = try #require(first.client.resumableSession)
        #expect(saved.bytes.count > 12_000, "\(saved.bytes.count) bytes")
        let resumed = try DTLSConnection(client: Certs.client(), serverName: "localhost", mtu: 1400, resuming: saved)
        let pair = try Pair(client: resumed, serverContext: server)
        pair.handshake()
        #expect(pair.clientEvents == [.handshakeCompleted])
        #expect(resumed.isResumed)
    }

    static func openssl(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        try #require(process.terminationStatus == 0, "openssl \(arguments.joined(separator: " ")) failed")
    }

    @Test func aSessionIsNeverOfferedToAnotherServerNameOrUnderOtherTrust() throws {
        let server = try Certs.server()
        let saved = try firstSession(server: server)

        let otherName = try DTLSConnection(client: Certs.client(), serverName: "127.0.0.1", mtu: 1400, resuming: saved)
        #expect(otherName.resumptionRefusal == "the session is for \"localhost\", not \"127.0.0.1\"")
        let pair = try Pair(client: otherName, serverContext: server)
        pair.handshake()
        #expect(pair.clientEvents == [.handshakeCompleted])
        #expect(!otherName.isResumed)
        #expect(Self.certificateMessages(in: pair.serverSent) == 1)

        let pin = try DTLSContext.publicKeySHA256(ofCertificatePEM: Certs.bytes("server.pem"))
        let pinned = try DTLSContext.client(trustRootsPEM: Certs.bytes("ca.pem"), pinnedPublicKeySHA256: [pin])
        let otherTrust = try DTLSConnection(client: pinned, serverName: "localhost", mtu: 1400, resuming: saved)
        #expect(otherTrust.resumptionRefusal == "the session was made under other trust roots or pins")

        var garbage = saved.bytes
        garbage[garbage.count - 10] ^= 0xff
        garbage.removeLast(5)
        let corrupt = try DTLSConnection(client: Certs.client(), serverName: "localhost", mtu: 1400,
                                         resuming: DTLSSavedSession(bytes: garbage, serverName: "localhost", expires: saved.expires))
        #expect(corrupt.resumptionRefusal != nil)
        let foreign = try DTLSConnection(client: Certs.client(), serverName: "localhost", mtu: 1400,
                                         resuming: DTLSSavedSession(bytes: Array("not a session".utf8), serverName: "localhost", expires: 0))
        #expect(foreign.resumptionRefusal == "not a saved toudtls session")
    }

    @Test func anExpiredSessionIsNotOffered() throws {
        let saved = try firstSession(server: Certs.server())
        let late = try DTLSConnection(client: Certs.client(), serverName: "localhost", mtu: 1400,
                                      resuming: saved, now: saved.expires + 1)
        #expect(late.resumptionRefusal == "the saved session has expired")
    }

    /// After one rotation the previous key still opens the ticket (and a new ticket is issued);
    /// after two it is unknown and the server falls back to a full handshake.
    @Test func rotatedTicketKeysRenewThenRefuseOldTickets() throws {
        let server = try Certs.server()
        let saved = try firstSession(server: server)
        server.rotateTicketKeys()
        let renewed = try DTLSConnection(client: Certs.client(), serverName: "localhost", mtu: 1400, resuming: saved)
        let renewedPair = try Pair(client: renewed, serverContext: server)
        renewedPair.handshake()
        #expect(renewed.isResumed)
        let fresh = try #require(renewed.resumableSession)
        #expect(fresh.bytes != saved.bytes)

        server.rotateTicketKeys()
        let stale = try DTLSConnection(client: Certs.client(), serverName: "localhost", mtu: 1400, resuming: saved)
        let stalePair = try Pair(client: stale, serverContext: server)
        stalePair.handshake()
        #expect(stalePair.clientEvents == [.handshakeCompleted])
        #expect(!stale.isResumed)
        #expect(Self.certificateMessages(in: stalePair.serverSent) == 1)
    }

    @Test func aServerWithoutTicketsLeavesNothingToResume() throws {
        let server = try DTLSContext.server(certificateChainPEM: Certs.bytes("server.pem"),
                                            privateKeyPEM: Certs.bytes("server.key"), ticketLifetime: nil)
        let pair = try Pair(client: Certs.client(), server: server)
        pair.handshake()
        #expect(pair.clientEvents == [.handshakeCompleted])
        #expect(pair.client.resumableSession == nil)
    }

    /// Resumption also works with a client certificate (the session keeps it).
    @Test func aSessionWithAClientCertificateResumes() throws {
        let server = try Certs.server(clientTrust: "ca.pem", requireClient: true)
        let saved = try firstSession(server: server, client: Certs.client(withCertificate: true))
        let resumed = try DTLSConnection(client: Certs.client(withCertificate: true), serverName: "localhost",
                                         mtu: 1400, resuming: saved)
        let pair = try Pair(client: resumed, serverContext: server)
        pair.handshake()
        #expect(pair.serverEvents == [.handshakeCompleted])
        #expect(resumed.isResumed)
        #expect(try #require(pair.server).peerCertificateSubject != nil)
    }
}

/// A counter shared by concurrent test work.
private final class LockedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func increment() { lock.lock(); count += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return count }
}
