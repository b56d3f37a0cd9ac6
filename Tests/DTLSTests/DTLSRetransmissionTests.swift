import DTLS
import Foundation
import NIOCore
import Testing

@Suite struct DTLSRetransmissionTests {
    /// OpenSSL's DTLS timer reads the real clock, so this test waits out its first 1 s timeout.
    @Test func lostServerFlightIsRetransmitted() throws {
        let pair = try Pair(client: Certs.client(), server: Certs.server())
        pair.now = .now()
        var dropped = 0
        pair.deliverToClient = { _ in
            guard dropped < 1_000, pair.serverSent.count <= 1 else { return true }
            dropped += 1
            return false
        }
        pair.handshake()
        #expect(dropped == 1)
        #expect(pair.clientEvents.isEmpty)
        let server = try #require(pair.server)
        let clientDeadline = try #require(pair.client.nextDeadline)
        let serverDeadline = try #require(server.nextDeadline)
        #expect(clientDeadline > pair.now && clientDeadline <= pair.now + .seconds(2))

        let sentBefore = pair.serverSent.count
        Thread.sleep(forTimeInterval: Double((serverDeadline - .now()).nanoseconds) / 1e9 + 0.05)
        pair.now = .now()
        server.handleTimeout(now: pair.now)
        pair.client.handleTimeout(now: pair.now)
        pair.shuttle()
        #expect(pair.serverSent.count > sentBefore)
        #expect(pair.clientEvents == [.handshakeCompleted])
        #expect(pair.serverEvents == [.handshakeCompleted])
    }

    @Test func deadlineIsNotDueEarly() throws {
        let client = try DTLSConnection(client: Certs.client(), serverName: "localhost", mtu: 1400)
        let start = NIODeadline.now()
        client.startHandshake(now: start)
        _ = client.pollDatagram()
        // Calling early does nothing: OpenSSL's own timer has not expired.
        client.handleTimeout(now: start)
        #expect(client.pollDatagram() == nil)
        let deadline = try #require(client.nextDeadline)
        #expect(deadline > start + .milliseconds(500))
    }
}
