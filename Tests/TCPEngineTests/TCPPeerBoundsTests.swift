import NIOCore
import Testing
import TOUWire

@testable import TCPEngine

/// What a peer, broken or hostile, may make the engine do: segment sizes, how many ACKs its junk
/// earns, how long a closed window keeps us retrying, and sequence-space corner cases.
@Suite struct PeerBoundsTests {
    /// CVE-2019-11479 class: a peer announcing a 1-byte MSS would make us cut the stream into
    /// 1-byte segments (a scoreboard entry, a segment and a header each). The peer's MSS is
    /// raised to 48 bytes as Linux does; options still come out of it.
    @Test(arguments: [Setup.modern, .shippedDefaults])
    func tinyPeerMSSIsRaisedToTheFloor(_ setup: Setup) {
        var c = modernConnection(configuration: setup.configuration, peerMSS: 1)
        #expect(c.write(bytes(count: 1000)) == 1000)
        let sent = c.drainPaced(at: at(100))
        #expect(sent.first?.payload.readableBytes == 48 - 12)
    }
}
