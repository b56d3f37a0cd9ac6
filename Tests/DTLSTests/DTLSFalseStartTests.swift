import DTLS
import NIOCore
import Testing

/// DTLS False Start (RFC 7918): a client may send data right after its Finished, before the
/// server's Finished; the server's data is held by the client until that Finished verifies.
@Suite struct DTLSFalseStartTests {
    @Test(arguments: DTLSCipherSuite.allCases)
    func clientWritesRightAfterItsFinishedAndHoldsTheServersDataUntilItsFinished(suite: DTLSCipherSuite) throws {
        let pair = try Pair(client: Certs.client(cipherSuites: [suite]), server: Certs.server())
        #expect(!pair.client.canWriteApplicationData)
        var serverFinished: [ByteBuffer] = []
        pair.deliverToClient = { datagram in
            guard RecordList(datagram).contains(where: { $0.epoch == 1 }) else { return true }
            serverFinished.append(datagram)
            return false
        }
        pair.handshake()
        let server = try #require(pair.server)
        #expect(pair.serverEvents == [.handshakeCompleted])
        #expect(pair.clientEvents.isEmpty)
        #expect(pair.client.state == .handshaking)
        #expect(pair.client.canWriteApplicationData)

        try pair.client.writeApplicationData(ByteBuffer(string: "SYN and a request"))
        let early = try #require(pair.client.pollDatagram())
        server.receiveDatagram(early, now: pair.now)
        #expect(server.readApplicationData() == ByteBuffer(string: "SYN and a request"))

        try server.writeApplicationData(ByteBuffer(string: "SYN-ACK and an answer"))
        let answer = try #require(server.pollDatagram())
        pair.client.receiveDatagram(answer, now: pair.now)
        #expect(pair.client.readApplicationData() == nil)  // held: the server's Finished is not here yet

        for datagram in serverFinished { pair.client.receiveDatagram(datagram, now: pair.now) }
        pair.collectEvents()
        #expect(pair.clientEvents == [.handshakeCompleted])
        #expect(pair.client.readApplicationData() == ByteBuffer(string: "SYN-ACK and an answer"))
        #expect(pair.client.droppedRecords == 0)
        let sent = RecordList(pair.clientSent + [early])
        #expect(sent.repeatedSequenceNumbers.isEmpty, "client repeated \(sent.repeatedSequenceNumbers)")
    }

    /// The early record overtakes the client's Finished: the server holds it, then opens it.
    @Test func dataBeforeTheClientsFinishedIsHeldByTheServer() throws {
        let pair = try Pair(client: Certs.client(), server: Certs.server())
        var clientFlight: [ByteBuffer] = []
        pair.deliverToServer = { datagram in
            guard RecordList(datagram).contains(where: { $0.epoch == 1 }) else { return true }
            clientFlight.append(datagram)
            return false
        }
        pair.handshake()
        let server = try #require(pair.server)
        #expect(pair.serverEvents.isEmpty)
        try pair.client.writeApplicationData(ByteBuffer(string: "overtaking"))
        server.receiveDatagram(try #require(pair.client.pollDatagram()), now: pair.now)
        #expect(server.readApplicationData() == nil)
        pair.deliverToServer = { _ in true }
        for datagram in clientFlight { server.receiveDatagram(datagram, now: pair.now) }
        pair.shuttle()
        #expect(pair.serverEvents == [.handshakeCompleted])
        #expect(pair.clientEvents == [.handshakeCompleted])
        #expect(server.readApplicationData() == ByteBuffer(string: "overtaking"))
        #expect(server.droppedRecords == 0)
    }
}
