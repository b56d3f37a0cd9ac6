import NIOCore
import Testing
import TOUWire

@testable import TCPEngine

@Suite struct RetransmissionTests {
    @Test func timeoutRetransmitsWithBackoffAndKarnsRule() {
        var c = establishedConnection()
        #expect(c.write(bytes("abc")) == 3)
        let first = toPeer(flags: .psh, payload: bytes("abc"))
        #expect(c.drain(at: at(100)) == [first])
        #expect(c.nextDeadline == at(300))
        c.handleTimeout(now: at(300))
        #expect(c.drain(at: at(300)) == [first])
        #expect(c.nextDeadline == at(700))  // doubled
        c.handleTimeout(now: at(700))
        #expect(c.drain(at: at(700)) == [first])
        #expect(c.nextDeadline == at(1500))
        #expect(c.stats.rtoExpiries == 2 && c.stats.retransmissions == 2)
        #expect(c.stats.slowStartThreshold == 2 * 1399 && c.stats.congestionWindow == 1399)
        // Karn: the ACK is ambiguous, so the 10 ms estimate stays; the backoff is cleared.
        c.receive(fromPeer(ack: localISS &+ 4), now: at(750))
        #expect(c.stats.smoothedRTT == .milliseconds(10))
        #expect(c.retransmissionTimeout == .milliseconds(200))
        #expect(c.nextDeadline == nil)
        // A fresh segment is timed again.
        #expect(c.write(bytes("d")) == 1)
        _ = c.drain(at: at(800))
        c.receive(fromPeer(ack: localISS &+ 5), now: at(850))
        #expect(c.stats.smoothedRTT == .nanoseconds((7 * 10_000_000 + 50_000_000) / 8))
    }

    @Test func goBackNAfterTimeout() {
        var c = establishedConnection()
        #expect(c.write(bytes(count: 4000)) == 4000)
        #expect(c.drain(at: at(100)).count == 3)
        c.handleTimeout(now: at(300))
        // Loss window of one segment: only the first is resent until ACKs arrive.
        #expect(c.drain(at: at(300)) == [toPeer(payload: bytes(count: 1399))])
        c.receive(fromPeer(ack: localISS &+ 1400), now: at(310))
        let resent = c.drain(at: at(310))
        #expect(resent.map(\.sequenceNumber) == [localISS &+ 1400, localISS &+ 2799])
        #expect(c.stats.bytesSent == 4000)  // retransmissions are not counted again
    }

    @Test func tooManyTimeoutsCloseTheConnection() {
        var configuration = classicConfiguration()
        configuration.maximumRetransmissions = 3
        var c = establishedConnection(configuration: configuration)
        _ = c.write(bytes("x"))
        var now = at(100)
        _ = c.drain(at: now)
        for _ in 0..<4 {
            now = c.nextDeadline!
            c.handleTimeout(now: now)
            _ = c.drain(at: now)
        }
        #expect(c.state == .closed)
        #expect(c.drainEvents() == [.closed(.timedOut)])
        #expect(c.nextDeadline == nil)
    }

    @Test func threeDuplicateACKsTriggerFastRetransmitAndNewReno() {
        var c = establishedConnection()
        #expect(c.write(bytes(count: 1399 * 20)) == 1399 * 20)
        let sent = c.drain(at: at(100))
        #expect(sent.count == 10)
        // Segments 1 and 4 are lost; the peer ACKs segment 0 and then repeats that ACK.
        let segment1 = localISS &+ 1 &+ 1399
        func segment(_ n: Int) -> TCPSegment {
            toPeer(seq: localISS &+ 1 &+ UInt32(n * 1399), payload: bytes(count: 1399))
        }
        c.receive(fromPeer(ack: segment1), now: at(110))
        #expect(c.drain(at: at(110)) == [segment(10), segment(11)])  // slow start: one ACK, +1399
        // RFC 3042 limited transmit: one new segment for each of the first two duplicates.
        c.receive(fromPeer(ack: segment1), now: at(111))
        #expect(c.drain(at: at(111)) == [segment(12)])
        c.receive(fromPeer(ack: segment1), now: at(112))
        #expect(c.drain(at: at(112)) == [segment(13)])
        c.receive(fromPeer(ack: segment1), now: at(113))
        #expect(c.drain(at: at(113)) == [segment(1)])
        #expect(c.stats.fastRetransmits == 1)
        let threshold = c.stats.slowStartThreshold
        #expect(threshold == (1399 * 13) / 2)
        #expect(c.stats.congestionWindow == threshold)  // inflation by the 3 duplicates is separate
        // Each further duplicate inflates the window by one segment; new data flows once the
        // inflated window exceeds what is in flight.
        for step in 0..<4 {
            c.receive(fromPeer(ack: segment1), now: at(114 + Int64(step)))
            #expect(c.drain(at: at(114 + Int64(step))) == [])
        }
        c.receive(fromPeer(ack: segment1), now: at(118))
        #expect(c.drain(at: at(118)) == [segment(14)])
        // Partial ACK up to the second hole: NewReno resends it at once.
        let segment4 = localISS &+ 1 &+ 4 * 1399
        c.receive(fromPeer(ack: segment4), now: at(130))
        let afterPartial = c.drain(at: at(130))
        #expect(afterPartial.first == segment(4))
        #expect(c.stats.fastRetransmits == 1)
        #expect(c.stats.retransmissions == 2)
        // Full ACK: recovery ends with cwnd at most ssthresh.
        c.receive(fromPeer(ack: localISS &+ 1 &+ 15 * 1399), now: at(150))
        #expect(c.stats.congestionWindow <= threshold)
    }

    @Test func duplicateACKsWithDataOrWindowChangeDoNotCount() {
        var c = establishedConnection()
        _ = c.write(bytes(count: 5000))
        _ = c.drain(at: at(100))
        for step in 0..<5 {
            c.receive(fromPeer(seq: remoteISS &+ 1 &+ UInt32(step), payload: bytes("z")), now: at(110))
        }
        c.receive(fromPeer(seq: remoteISS &+ 6, window: 63000), now: at(111))
        #expect(c.stats.fastRetransmits == 0)
    }
}
