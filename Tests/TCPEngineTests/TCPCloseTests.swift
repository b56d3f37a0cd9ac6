import NIOCore
import Testing
import TOUWire

@testable import TCPEngine

@Suite struct CloseTests {
    @Test func activeCloseThroughFinWaitAndTimeWait() {
        var c = establishedConnection()
        _ = c.write(bytes("bye"))
        c.finishWriting()
        #expect(c.state == .finWait1)
        #expect(c.write(bytes("more")) == 0)
        #expect(c.drain(at: at(100)) == [toPeer(flags: [.psh, .fin], payload: bytes("bye"))])
        c.receive(fromPeer(ack: localISS &+ 5), now: at(110))
        #expect(c.state == .finWait2)
        #expect(c.isSendQueueEmptyAndAcknowledged)
        // FIN-WAIT-2 keeps receiving.
        c.receive(fromPeer(ack: localISS &+ 5, payload: bytes("still")), now: at(120))
        c.receive(fromPeer(seq: remoteISS &+ 6, ack: localISS &+ 5, flags: .fin), now: at(130))
        #expect(c.state == .timeWait)
        #expect(c.drain(at: at(130)) == [toPeer(seq: localISS &+ 5, ack: remoteISS &+ 7)])
        #expect(c.drainEvents() == [.readable, .peerFinished])
        #expect(c.readAll() == "still")
        #expect(c.nextDeadline == at(130 + 60_000))
        // A retransmitted FIN is ACKed again and restarts 2*MSL.
        c.receive(fromPeer(seq: remoteISS &+ 6, ack: localISS &+ 5, flags: .fin), now: at(1000))
        #expect(c.drain(at: at(1000)) == [toPeer(seq: localISS &+ 5, ack: remoteISS &+ 7)])
        #expect(c.nextDeadline == at(61_000))
        c.handleTimeout(now: at(61_000))
        #expect(c.state == .closed)
        #expect(c.drainEvents() == [.closed(.normal)])
    }

    @Test func simultaneousCloseGoesThroughClosing() {
        var c = establishedConnection()
        c.finishWriting()
        #expect(c.drain(at: at(100)) == [toPeer(flags: .fin)])
        // The peer's FIN crosses ours and does not acknowledge it.
        c.receive(fromPeer(ack: localISS &+ 1, flags: .fin), now: at(105))
        #expect(c.state == .closing)
        #expect(c.drain(at: at(105)) == [toPeer(seq: localISS &+ 2, ack: remoteISS &+ 2)])
        c.receive(fromPeer(seq: remoteISS &+ 2, ack: localISS &+ 2), now: at(110))
        #expect(c.state == .timeWait)
    }

    @Test func finIsRetransmittedInFinWait1() {
        var c = establishedConnection()
        c.finishWriting()
        let fin = toPeer(flags: .fin)
        #expect(c.drain(at: at(100)) == [fin])
        c.handleTimeout(now: at(300))
        #expect(c.drain(at: at(300)) == [fin])
    }

    @Test func passiveCloseThroughCloseWaitAndLastAck() {
        var c = establishedConnection()
        c.receive(fromPeer(flags: .fin, payload: bytes("done")), now: at(100))
        #expect(c.state == .closeWait)
        // The FIN's ACK is a delayed one: it goes when the delayed-ACK timer fires.
        #expect(c.drain(at: at(100)) == [])
        #expect(c.nextDeadline == at(140))
        c.handleTimeout(now: at(140))
        #expect(c.drain(at: at(140)) == [toPeer(ack: remoteISS &+ 6)])
        #expect(c.drainEvents() == [.readable, .peerFinished])
        #expect(c.readAll() == "done")
        // CLOSE-WAIT keeps sending.
        #expect(c.write(bytes("reply")) == 5)
        #expect(c.drain(at: at(110)) == [toPeer(ack: remoteISS &+ 6, flags: .psh, payload: bytes("reply"))])
        c.finishWriting()
        #expect(c.state == .lastAck)
        #expect(c.drain(at: at(120)) == [toPeer(seq: localISS &+ 6, ack: remoteISS &+ 6, flags: .fin)])
        c.receive(fromPeer(seq: remoteISS &+ 6, ack: localISS &+ 6), now: at(130))
        #expect(c.state == .lastAck)  // FIN not yet acknowledged
        c.receive(fromPeer(seq: remoteISS &+ 6, ack: localISS &+ 7), now: at(131))
        #expect(c.state == .closed)
        #expect(c.drainEvents() == [.closed(.normal)])
        #expect(c.isSendQueueEmptyAndAcknowledged)
    }

    /// An application that closes as soon as the peer's stream ends sends one segment, FIN and
    /// the ACK of the peer's FIN together (the ACK waited as a delayed one).
    @Test func peerFINIsAcknowledgedByOurFINWhenTheApplicationClosesAtOnce() {
        var c = establishedConnection()
        c.receive(fromPeer(flags: .fin), now: at(100))
        #expect(c.state == .closeWait)
        #expect(c.drain(at: at(100)) == [])
        c.finishWriting()
        #expect(c.drain(at: at(101)) == [toPeer(ack: remoteISS &+ 2, flags: .fin)])
        #expect(c.state == .lastAck)
        c.receive(fromPeer(seq: remoteISS &+ 2, ack: localISS &+ 2), now: at(110))
        #expect(c.state == .closed)
    }

    @Test func dataAfterPeerFINIsIgnored() {
        var c = establishedConnection()
        c.receive(fromPeer(flags: .fin), now: at(100))
        _ = c.drain(at: at(100))
        c.receive(fromPeer(seq: remoteISS &+ 2, payload: bytes("zzz")), now: at(110))
        #expect(c.readableBytes == 0)
    }

    @Test func outOfOrderFINWaitsForTheHole() {
        var c = establishedConnection()
        c.receive(fromPeer(seq: remoteISS &+ 4, flags: .fin, payload: bytes("def")), now: at(100))
        #expect(c.state == .established)
        #expect(c.drain(at: at(100)) == [toPeer()])
        c.receive(fromPeer(payload: bytes("abc")), now: at(110))
        #expect(c.state == .closeWait)
        #expect(c.drain(at: at(110)) == [toPeer(ack: remoteISS &+ 8)])
        #expect(c.readAll() == "abcdef")
        #expect(c.drainEvents() == [.readable, .peerFinished])
    }

    @Test func resetInClosingStates() {
        for close in [false, true] {
            var c = establishedConnection()
            if close {
                c.finishWriting()
                _ = c.drain(at: at(100))
            } else {
                c.receive(fromPeer(flags: .fin), now: at(100))
                _ = c.drain(at: at(100))
            }
            let sequence = close ? remoteISS &+ 1 : remoteISS &+ 2
            c.receive(fromPeer(seq: sequence, ack: nil, flags: .rst), now: at(110))
            #expect(c.state == .closed)
            #expect(c.drainEvents().last == .closed(.reset))
        }
    }

    /// RFC 1337: the peer that closed last may answer a stray segment with a RST once its side is
    /// gone; in TIME-WAIT that must not undo a clean close.
    @Test func resetInTimeWaitIsIgnored() {
        var c = establishedConnection()
        c.finishWriting()
        _ = c.drain(at: at(100))
        c.receive(fromPeer(ack: localISS &+ 2), now: at(110))
        c.receive(fromPeer(seq: remoteISS &+ 1, ack: localISS &+ 2, flags: .fin), now: at(120))
        #expect(c.state == .timeWait)
        _ = c.drain(at: at(120))
        c.receive(fromPeer(seq: remoteISS &+ 2, ack: nil, flags: .rst), now: at(130))
        #expect(c.state == .timeWait)
        #expect(c.drainEvents() == [.peerFinished])
        c.handleTimeout(now: at(120 + 60_000))
        #expect(c.state == .closed)
        #expect(c.drainEvents() == [.closed(.normal)])
    }

    /// RFC 9293: in LAST-ACK a RST ends the connection quietly when the peer holds all our data
    /// (only our FIN unacknowledged), and as a reset when some of it is unacknowledged.
    @Test func resetInLastAckIsCleanOnlyWhenAllDataWasAcknowledged() {
        for dataAcknowledged in [true, false] {
            var c = establishedConnection()
            c.receive(fromPeer(flags: .fin), now: at(100))
            _ = c.drain(at: at(100))
            #expect(c.write(bytes("reply")) == 5)
            c.finishWriting()
            #expect(c.state == .lastAck)
            _ = c.drain(at: at(110))
            if dataAcknowledged {
                c.receive(fromPeer(seq: remoteISS &+ 2, ack: localISS &+ 6), now: at(120))
            }
            _ = c.drainEvents()
            c.receive(fromPeer(seq: remoteISS &+ 2, ack: nil, flags: .rst), now: at(130))
            #expect(c.state == .closed)
            #expect(c.drainEvents() == [.closed(dataAcknowledged ? .normal : .reset)])
        }
    }

    @Test func finishWritingBeforeEstablishedSendsFINAfterHandshake() {
        var c = TCPConnection.connect(
            localPort: localPort, remotePort: remotePort, configuration: classicConfiguration(),
            initialSequenceNumber: localISS, now: t0)
        _ = c.write(bytes("early"))
        c.finishWriting()
        _ = c.drain(at: t0)
        c.receive(fromPeer(seq: remoteISS, flags: .syn, options: peerSYNOptions), now: at(10))
        #expect(c.state == .finWait1)
        #expect(c.drain(at: at(10)) == [toPeer(flags: [.psh, .fin], payload: bytes("early"))])
    }
}
