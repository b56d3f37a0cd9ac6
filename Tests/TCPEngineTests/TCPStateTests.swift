import NIOCore
import Testing
import TOUWire

@testable import TCPEngine

@Suite struct SimultaneousOpenTests {
    @Test func crossingSYNsEstablishBothSides() {
        var c = TCPConnection.connect(
            localPort: localPort, remotePort: remotePort, configuration: classicConfiguration(),
            initialSequenceNumber: localISS, now: t0)
        _ = c.drain(at: t0)
        // The peer's own SYN crosses ours: SYN-RECEIVED, and our SYN goes again as a SYN-ACK.
        c.receive(fromPeer(seq: remoteISS, ack: nil, flags: .syn, options: peerSYNOptions), now: at(5))
        #expect(c.state == .synReceived)
        #expect(c.drain(at: at(5)) == [toPeer(seq: localISS, flags: .syn, window: 65535, options: ourSYNOptions)])
        // The peer's SYN-ACK (answering our SYN) establishes.
        c.receive(fromPeer(seq: remoteISS, flags: .syn, options: peerSYNOptions), now: at(10))
        #expect(c.state == .established)
        #expect(c.drainEvents() == [.connected])
        #expect(c.drain(at: at(10)) == [toPeer()])
    }
}

@Suite struct RFC5961Tests {
    @Test func challengeACKsAreRateLimited() {
        var c = establishedConnection()
        for step in 0..<15 {
            c.receive(fromPeer(seq: remoteISS &+ 100, ack: nil, flags: .rst), now: at(100 + Int64(step)))
            _ = c.drain(at: at(100 + Int64(step)))
        }
        #expect(c.stats.challengeACKs == 10)
        #expect(c.state == .established)
        // A new second, a new allowance.
        c.receive(fromPeer(seq: remoteISS &+ 100, ack: nil, flags: .rst), now: at(1200))
        #expect(c.drain(at: at(1200)) == [toPeer()])
    }

    @Test func ackOlderThanAnyWindowIsChallengedAndItsDataDropped() {
        var c = establishedConnection(peerWindow: 1000)
        c.receive(fromPeer(ack: localISS &- 5000, payload: bytes("blind")), now: at(100))
        #expect(c.readableBytes == 0)
        #expect(c.drain(at: at(100)) == [toPeer()])
        #expect(c.stats.challengeACKs == 1)
        // Within MAX.SND.WND behind SND.UNA: an old duplicate ACK, data accepted.
        c.receive(fromPeer(ack: localISS &- 500, payload: bytes("ok")), now: at(101))
        #expect(c.readAll() == "ok")
    }

    @Test func synInSynchronizedStateIsChallengedNotReset() {
        var c = establishedConnection()
        c.receive(fromPeer(seq: remoteISS &+ 50, ack: nil, flags: .syn), now: at(100))
        #expect(c.state == .established)
        #expect(c.drain(at: at(100)) == [toPeer()])
    }
}
