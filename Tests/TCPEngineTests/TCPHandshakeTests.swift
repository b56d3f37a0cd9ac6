import NIOCore
import Testing
import TOUWire

@testable import TCPEngine

@Suite struct SynSentTests {
    @Test func connectSendsSYNWithMSSAndWindowScale() {
        var c = TCPConnection.connect(
            localPort: localPort, remotePort: remotePort, configuration: classicConfiguration(),
            initialSequenceNumber: localISS, now: t0)
        #expect(c.state == .synSent)
        #expect(c.drain(at: t0) == [toPeer(seq: localISS, ack: nil, flags: .syn, window: 65535, options: ourSYNOptions)])
        #expect(c.nextDeadline == at(1000))
    }

    @Test func synIsRetransmittedWithBackoffThenTimesOut() {
        var configuration = classicConfiguration()
        configuration.synRetries = 2
        var c = TCPConnection.connect(
            localPort: localPort, remotePort: remotePort, configuration: configuration,
            initialSequenceNumber: localISS, now: t0)
        let syn = toPeer(seq: localISS, ack: nil, flags: .syn, window: 65535, options: ourSYNOptions)
        #expect(c.drain(at: t0) == [syn])
        c.handleTimeout(now: at(999))
        #expect(c.drain(at: at(999)) == [])
        c.handleTimeout(now: at(1000))
        #expect(c.drain(at: at(1000)) == [syn])
        #expect(c.nextDeadline == at(3000))
        c.handleTimeout(now: at(3000))
        #expect(c.drain(at: at(3000)) == [syn])
        #expect(c.nextDeadline == at(7000))
        c.handleTimeout(now: at(7000))
        #expect(c.drain(at: at(7000)) == [])
        #expect(c.state == .closed)
        #expect(c.drainEvents() == [.closed(.timedOut)])
        #expect(c.stats.retransmissions == 2)
    }

    @Test func synACKEstablishesAndIsAcknowledged() {
        var c = TCPConnection.connect(
            localPort: localPort, remotePort: remotePort, configuration: classicConfiguration(),
            initialSequenceNumber: localISS, now: t0)
        _ = c.drain(at: t0)
        c.receive(fromPeer(seq: remoteISS, flags: .syn, options: peerSYNOptions), now: at(10))
        #expect(c.state == .established)
        #expect(c.drain(at: at(10)) == [toPeer()])
        #expect(c.drainEvents() == [.connected])
        #expect(c.stats.smoothedRTT == .milliseconds(10))
        #expect(c.stats.rto == .milliseconds(200))  // 10 + 4*5 ms, raised to the 200 ms floor
        #expect(c.nextDeadline == nil)
    }

    @Test func peerMSSCapsOurSegments() {
        var c = establishedConnection(peerOptions: TCPOptions(maximumSegmentSize: 500, windowScale: 0))
        #expect(c.write(bytes(count: 1200)) == 1200)
        let sent = c.drain(at: at(20))
        #expect(sent.map(\.payload.readableBytes) == [500, 500, 200])
    }

    @Test func withoutPeerWindowScaleNeitherSideScales() {
        var c = TCPConnection.connect(
            localPort: localPort, remotePort: remotePort, configuration: classicConfiguration(),
            initialSequenceNumber: localISS, now: t0)
        _ = c.drain(at: t0)
        c.receive(fromPeer(seq: remoteISS, flags: .syn, window: 1000, options: TCPOptions(maximumSegmentSize: 1460)), now: at(10))
        #expect(c.drain(at: at(10)) == [toPeer(window: 65535)])
        #expect(c.stats.sendWindow == 1000)
    }

    @Test func unacceptableACKInSynSentGetsReset() {
        var c = TCPConnection.connect(
            localPort: localPort, remotePort: remotePort, configuration: classicConfiguration(),
            initialSequenceNumber: localISS, now: t0)
        _ = c.drain(at: t0)
        c.receive(fromPeer(seq: remoteISS, ack: localISS &+ 5, flags: .syn), now: at(10))
        #expect(c.drain(at: at(10)) == [toPeer(seq: localISS &+ 5, ack: nil, flags: .rst, window: 0)])
        #expect(c.state == .synSent)
    }

    @Test func resetInSynSent() {
        var c = TCPConnection.connect(
            localPort: localPort, remotePort: remotePort, configuration: classicConfiguration(),
            initialSequenceNumber: localISS, now: t0)
        _ = c.drain(at: t0)
        c.receive(fromPeer(seq: 0, ack: nil, flags: .rst), now: at(5))  // no ACK: ignored
        #expect(c.state == .synSent)
        c.receive(fromPeer(seq: 0, ack: localISS &+ 1, flags: .rst), now: at(10))
        #expect(c.state == .closed)
        #expect(c.drainEvents() == [.closed(.reset)])
        #expect(c.drain(at: at(10)) == [])
    }
}

@Suite struct SynReceivedTests {
    func accepted(options: TCPOptions = peerSYNOptions) -> TCPConnection {
        TCPConnection.accept(
            syn: fromPeer(seq: remoteISS, ack: nil, flags: .syn, options: options),
            configuration: classicConfiguration(), initialSequenceNumber: localISS, now: t0)!
    }
    let synACK = toPeer(seq: localISS, flags: .syn, window: 65535, options: ourSYNOptions)

    @Test func acceptRejectsNonSYN() {
        for flags: TCPFlags in [[], .rst, [.syn, .rst], [.syn, .fin]] {
            #expect(TCPConnection.accept(syn: fromPeer(ack: nil, flags: flags), configuration: classicConfiguration(), initialSequenceNumber: 1, now: t0) == nil)
        }
        #expect(TCPConnection.accept(syn: fromPeer(flags: .syn), configuration: classicConfiguration(), initialSequenceNumber: 1, now: t0) == nil)
    }

    @Test func sendsSYNACKAndEstablishesOnACKWithData() {
        var c = accepted()
        #expect(c.state == .synReceived)
        #expect(c.localPort == localPort && c.remotePort == remotePort)
        #expect(c.drain(at: t0) == [synACK])
        c.receive(fromPeer(payload: bytes("hello")), now: at(10))
        #expect(c.state == .established)
        #expect(c.drainEvents() == [.connected, .readable])
        #expect(c.readAll() == "hello")
        #expect(c.stats.smoothedRTT == .milliseconds(10))
    }

    @Test func synACKOmitsWindowScaleWhenPeerDidNotOfferIt() {
        var c = accepted(options: TCPOptions(maximumSegmentSize: 1460))
        #expect(c.drain(at: t0) == [toPeer(seq: localISS, flags: .syn, window: 65535, options: TCPOptions(maximumSegmentSize: 1399))])
    }

    @Test func retransmittedSYNIsAnsweredAgain() {
        var c = accepted()
        _ = c.drain(at: t0)
        c.receive(fromPeer(seq: remoteISS, ack: nil, flags: .syn, options: peerSYNOptions), now: at(500))
        #expect(c.drain(at: at(500)) == [synACK])
    }

    @Test func synACKRetransmittedOnTimeout() {
        var c = accepted()
        _ = c.drain(at: t0)
        c.handleTimeout(now: at(1000))
        #expect(c.drain(at: at(1000)) == [synACK])
        #expect(c.nextDeadline == at(3000))
    }

    @Test func badACKGetsResetAndRSTCloses() {
        var c = accepted()
        _ = c.drain(at: t0)
        c.receive(fromPeer(ack: localISS &+ 100), now: at(10))
        #expect(c.drain(at: at(10)) == [toPeer(seq: localISS &+ 100, ack: nil, flags: .rst, window: 0)])
        #expect(c.state == .synReceived)
        c.receive(fromPeer(ack: nil, flags: .rst), now: at(20))
        #expect(c.state == .closed)
        #expect(c.drainEvents() == [.closed(.reset)])
    }
}
