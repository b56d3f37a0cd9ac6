@testable import DTLS
import NIOCore
import Testing

/// Once both sides have finished the handshake, OpenSSL's connection object is freed and the
/// record layer carries on alone: data, alerts both ways, the answers kept from the handshake.
@Suite struct DTLSReleaseTests {
    private func establishedPair(client: DTLSContext? = nil, server: DTLSContext? = nil) throws -> (Pair, DTLSConnection) {
        let pair = try Pair(client: client ?? Certs.client(), server: server ?? Certs.server())
        pair.handshake()
        try #require(pair.clientEvents == [.handshakeCompleted])
        try #require(pair.serverEvents == [.handshakeCompleted])
        return (pair, try #require(pair.server))
    }

    @Test func releasedConnectionsCarryDataAndKeepWhatTheHandshakeSettled() throws {
        let (pair, server) = try establishedPair(client: Certs.client(withCertificate: true),
                                                 server: Certs.server(clientTrust: "ca.pem", requireClient: true))
        let suite = try #require(server.negotiatedCipherSuite)
        let session = try #require(pair.client.resumableSession)
        server.releaseHandshakeState()
        pair.client.releaseHandshakeState()
        #expect(server.handshakeStateReleased && pair.client.handshakeStateReleased)
        #expect(server.negotiatedCipherSuite == suite && pair.client.negotiatedCipherSuite == suite)
        #expect(server.peerCertificateSubject == "CN=toudtls-test-client")
        #expect(pair.client.peerCertificateSubject == "CN=localhost")
        #expect(!server.isResumed && !pair.client.isResumed)
        #expect(server.nextDeadline == nil && pair.client.nextDeadline == nil)
        #expect(pair.client.resumableSession?.bytes == session.bytes)

        for round in 0..<3 {
            try pair.client.writeApplicationData(ByteBuffer(string: "ping \(round)"))
            server.receiveDatagram(try #require(pair.client.pollDatagram()), now: pair.now)
            #expect(server.readApplicationData() == ByteBuffer(string: "ping \(round)"))
            try server.writeApplicationData(ByteBuffer.pattern(1200, seed: UInt8(round)))
            pair.client.receiveDatagram(try #require(server.pollDatagram()), now: pair.now)
            #expect(pair.client.readApplicationData() == ByteBuffer.pattern(1200, seed: UInt8(round)))
        }
        #expect(server.droppedRecords == 0 && pair.client.droppedRecords == 0)

        // The session saved before the release resumes, and that connection releases too.
        let resumed = try DTLSConnection(client: Certs.client(withCertificate: true), serverName: "localhost",
                                         mtu: 1400, resuming: session)
        let again = try Pair(client: resumed, serverContext: pair.serverContext)
        again.handshake()
        #expect(resumed.isResumed)
        resumed.releaseHandshakeState()
        #expect(resumed.isResumed && resumed.handshakeStateReleased)
    }

    @Test func closeNotifyReachesAReleasedPeerAndLeavesFromOne() throws {
        let (pair, server) = try establishedPair()
        server.releaseHandshakeState()
        pair.client.sendCloseNotify()
        let alert = try #require(pair.client.pollDatagram())
        server.receiveDatagram(alert, now: pair.now)
        #expect(server.pollEvent() == .closeNotifyReceived)
        #expect(server.state == .closed)
        // Its own close_notify goes out through the record layer, to a peer that kept OpenSSL.
        try server.writeApplicationData(ByteBuffer(string: "last words"))
        server.sendCloseNotify()
        pair.client.receiveDatagram(try #require(server.pollDatagram()), now: pair.now)
        pair.client.receiveDatagram(try #require(server.pollDatagram()), now: pair.now)
        #expect(pair.client.readApplicationData() == ByteBuffer(string: "last words"))
        #expect(pair.client.pollEvent() == .closeNotifyReceived)
        #expect(server.droppedRecords == 0)
    }

    @Test func fatalAlertFailsAReleasedConnectionAndAWarningDoesNot() throws {
        let (pair, server) = try establishedPair()
        server.releaseHandshakeState()
        try pair.client.sendAlertForTesting(level: 1, description: 90)  // user_canceled
        let warning = try #require(pair.client.pollDatagram())
        server.receiveDatagram(warning, now: pair.now)
        #expect(server.pollEvent() == nil)
        #expect(server.state == .established)
        // A replayed alert is checked by the same window as data.
        server.receiveDatagram(warning, now: pair.now)
        #expect(server.droppedRecords == 1)

        try pair.client.sendAlertForTesting(level: 2, description: 40)  // handshake_failure
        server.receiveDatagram(try #require(pair.client.pollDatagram()), now: pair.now)
        #expect(server.state == .failed)
        #expect(server.pollEvent() == .failed(.alertReceived("received fatal alert: handshake failure")))
    }

    @Test func aLateCopyOfTheHandshakeIsDroppedAndCounted() throws {
        let (pair, server) = try establishedPair()
        server.releaseHandshakeState()
        pair.client.releaseHandshakeState()
        for datagram in pair.clientSent { server.receiveDatagram(datagram, now: pair.now) }
        for datagram in pair.serverSent { pair.client.receiveDatagram(datagram, now: pair.now) }
        #expect(server.pollDatagram() == nil && pair.client.pollDatagram() == nil)
        #expect(server.pollEvent() == nil && pair.client.pollEvent() == nil)
        #expect(server.state == .established && pair.client.state == .established)
        #expect(server.droppedRecords > 0 && pair.client.droppedRecords > 0)
        // Still working.
        try pair.client.writeApplicationData(ByteBuffer(string: "after"))
        server.receiveDatagram(try #require(pair.client.pollDatagram()), now: pair.now)
        #expect(server.readApplicationData() == ByteBuffer(string: "after"))
    }

    @Test func nothingIsReleasedBeforeTheHandshakeCompletes() throws {
        let pair = try Pair(client: Certs.client(), server: Certs.server())
        pair.client.startHandshake(now: pair.now)
        pair.client.releaseHandshakeState()
        #expect(!pair.client.handshakeStateReleased)
        #expect(pair.client.nextDeadline != nil)
        pair.shuttle()
        #expect(pair.clientEvents == [.handshakeCompleted])
    }
}
