import NIOCore
import Testing
import TOUWire

@testable import TCPEngine

@Suite struct SACKReceiverTests {
    @Test func outOfOrderDataIsReportedMostRecentFirst() {
        var c = modernConnection()
        let base = remoteISS &+ 1
        func data(_ offset: UInt32, _ text: String, ts: UInt32) -> TCPSegment {
            fromPeer(seq: base &+ offset, options: TCPOptions(timestamps: peerTS(ts, echo: 0)), payload: bytes(text))
        }
        c.receive(data(10, "kl", ts: 1), now: at(100))
        #expect(c.drain(at: at(100)) == [toPeer(options: c.ourOptions(at: at(100), sack: [block(base &+ 10, base &+ 12)]))])
        c.receive(data(20, "uv", ts: 2), now: at(101))
        #expect(c.drain(at: at(101)) == [toPeer(options: c.ourOptions(at: at(101), sack: [block(base &+ 20, base &+ 22), block(base &+ 10, base &+ 12)]))])
        // Extending the older block moves it to the front.
        c.receive(data(12, "mn", ts: 3), now: at(102))
        #expect(c.drain(at: at(102)) == [toPeer(options: c.ourOptions(at: at(102), sack: [block(base &+ 10, base &+ 14), block(base &+ 20, base &+ 22)]))])
        c.receive(data(30, "EF", ts: 4), now: at(103))
        c.receive(data(40, "OP", ts: 5), now: at(103))
        // With timestamps only three blocks fit.
        let four = c.drain(at: at(103))
        #expect(four.last?.options.sackBlocks == [block(base &+ 40, base &+ 42), block(base &+ 30, base &+ 32), block(base &+ 10, base &+ 14)])
        // The hole at the start fills: the cumulative ACK jumps and the covered block is gone.
        c.receive(data(0, "abcdefghij", ts: 6), now: at(104))
        #expect(c.drain(at: at(104)) == [toPeer(ack: base &+ 14, options: c.ourOptions(at: at(104), echo: peerTSBase &+ 6, sack: [block(base &+ 40, base &+ 42), block(base &+ 30, base &+ 32), block(base &+ 20, base &+ 22)]))])
        #expect(c.stats.sackBlocksSent == 1 + 2 + 2 + 3 + 3)
    }

    @Test func duplicateSegmentEarnsADSACK() {
        var c = modernConnection()
        c.receive(fromPeer(options: TCPOptions(timestamps: peerTS(1, echo: 0)), payload: bytes("abcd")), now: at(100))
        c.handleTimeout(now: at(140))
        _ = c.drain(at: at(140))
        c.receive(fromPeer(options: TCPOptions(timestamps: peerTS(2, echo: 0)), payload: bytes("abcd")), now: at(150))
        #expect(c.drain(at: at(150)) == [toPeer(ack: remoteISS &+ 5, options: c.ourOptions(at: at(150), echo: peerTSBase &+ 1, sack: [block(remoteISS &+ 1, remoteISS &+ 5)]))])
    }
}

extension SACKReceiverTests {
    @Test func partialOverlapIsReportedAsADSACK() {
        var c = modernConnection()
        let base = remoteISS &+ 1
        c.receive(fromPeer(options: TCPOptions(timestamps: peerTS(1, echo: 0)), payload: bytes("abcd")), now: at(100))
        c.receive(fromPeer(seq: base &+ 2, options: TCPOptions(timestamps: peerTS(2, echo: 0)), payload: bytes("cdefg")), now: at(101))
        #expect(c.drain(at: at(101)) == [toPeer(ack: base &+ 7, options: c.ourOptions(at: at(101), echo: peerTSBase &+ 1, sack: [block(base &+ 2, base &+ 4)]))])
        #expect(c.readAll() == "abcdefg")
    }
}

@Suite struct SACKSenderTests {
    /// Ten full segments in flight at 100 ms.
    func loaded() -> TCPConnection {
        var c = modernConnection()
        #expect(c.write(bytes(count: 40 * modernMSS)) == 40 * modernMSS)
        #expect(c.drain(at: at(100)).count == 10)
        return c
    }

    @Test func rackMarksTheHoleLostOnceThreeSegmentsAboveItAreSACKed() {
        var c = loaded()
        let echo = c.timestampValue(at: at(100))
        let s = { (n: Int) in ourSegmentStart(n) }
        c.receive(peerACK(s(1), echo: echo), now: at(110))
        #expect(c.drain(at: at(110)).map(\.sequenceNumber) == [s(10), s(11)])
        c.receive(peerACK(s(1), echo: echo, sack: [block(s(2), s(3))]), now: at(111))
        #expect(c.drain(at: at(111)).map(\.sequenceNumber) == [s(12)])  // the SACK freed the pipe
        // One SACKed segment: RACK waits a reordering window (min RTT / 4) past the RACK RTT.
        #expect(c.nextDeadline == at(111) + .microseconds(2500))
        c.receive(peerACK(s(1), echo: echo, sack: [block(s(2), s(4))]), now: at(112))
        #expect(c.drain(at: at(112)).map(\.sequenceNumber) == [s(13)])
        c.receive(peerACK(s(1), echo: echo, sack: [block(s(2), s(5))]), now: at(113))
        // Three SACKed above the hole and no reordering seen: lost now, resent at once.
        #expect(c.drain(at: at(113)) == [toPeer(seq: s(1), options: c.ourOptions(at: at(113), echo: peerTSBase &+ 1), payload: bytes(count: modernMSS))])
        #expect(c.stats.fastRetransmits == 1 && c.stats.retransmissions == 1)
        #expect(c.stats.slowStartThreshold == 13 * modernMSS / 2)
        #expect(c.stats.sackBlocksReceived == 3)
        // The retransmission fills the hole: recovery ends on the ACK that covers everything sent.
        c.receive(peerACK(s(14), tsOffset: 2, echo: c.timestampValue(at: at(113))), now: at(125))
        #expect(c.stats.congestionWindow == 13 * modernMSS / 2)
        #expect(c.stats.rtoExpiries == 0)
    }

    @Test func reorderingTimerDeclaresTheLossWhenFewSegmentsFollowTheHole() {
        var c = loaded()
        let echo = c.timestampValue(at: at(100))
        let s = { (n: Int) in ourSegmentStart(n) }
        var configuration = modernConfiguration()
        configuration.noDelay = true
        c.receive(peerACK(s(1), echo: echo, sack: [block(s(2), s(3))]), now: at(112))
        _ = c.drain(at: at(112))
        // RACK.rtt = 12 ms for the SACKed segment sent at 100; the hole, sent at 100 too, is lost
        // at 100 + 12 + 2.5 ms.
        #expect(c.nextDeadline == at(114) + .microseconds(500))
        c.handleTimeout(now: at(114) + .microseconds(500))
        let out = c.drain(at: at(114) + .microseconds(500))
        #expect(out.first?.sequenceNumber == s(1))
        #expect(c.stats.fastRetransmits == 1)
    }

    @Test func tailLossProbeSendsNewDataThenResendsTheLastSegment() {
        var c = modernConnection()
        #expect(c.write(bytes(count: 3 * modernMSS)) == 3 * modernMSS)
        #expect(c.drain(at: at(100)).count == 3)
        // PTO = 2 * srtt = 20 ms, well before the 200 ms RTO.
        #expect(c.nextDeadline == at(120))
        #expect(c.write(bytes(count: 100)) == 100)  // new data that the window has room for
        #expect(c.drain(at: at(100)).count == 1)
        c.handleTimeout(now: at(120))
        // Nothing new left: the probe resends the last segment.
        let probe = c.drain(at: at(120))
        #expect(probe == [toPeer(seq: ourSegmentStart(3), flags: .psh, options: c.ourOptions(at: at(120)), payload: bytes(count: 100))])
        #expect(c.stats.tailLossProbes == 1)
        #expect(c.nextDeadline == at(320))  // the RTO, re-armed; only one probe per episode
        // The probe's ACK SACKs it, exposing the tail loss to RACK.
        let s = { (n: Int) in ourSegmentStart(n) }
        c.receive(peerACK(s(2), echo: c.timestampValue(at: at(100)), sack: [block(s(3), s(3) &+ 100)]), now: at(130))
        // Segment 2, sent before the SACKed probe and not delivered within RACK.rtt: lost.
        #expect(c.drain(at: at(130)).first?.sequenceNumber == s(2))
        #expect(c.stats.rtoExpiries == 0)
    }

    @Test func timeoutKeepsSACKedSegmentsAndResendsOnlyTheRest() {
        var c = loaded()
        let echo = c.timestampValue(at: at(100))
        let s = { (n: Int) in ourSegmentStart(n) }
        c.receive(peerACK(s(0), echo: echo, sack: [block(s(4), s(6))]), now: at(110))
        _ = c.drain(at: at(110))
        // RACK declares 0-3 lost; pretend the retransmissions vanish and the RTO fires.
        c.handleTimeout(now: c.nextDeadline!)
        while let deadline = c.nextDeadline, deadline < at(2000), c.stats.rtoExpiries == 0 {
            c.handleTimeout(now: deadline)
            _ = c.drain(at: deadline)
        }
        #expect(c.stats.rtoExpiries == 1)
        #expect(c.stats.congestionWindow == modernMSS)
        let now = at(2000)
        c.receive(peerACK(s(1), tsOffset: 2, echo: c.timestampValue(at: now), sack: [block(s(4), s(6))]), now: now)
        let resent = c.drain(at: now).map(\.sequenceNumber)
        #expect(!resent.contains(s(4)) && !resent.contains(s(5)))
    }

    @Test func eifelUndoesASpuriousFastRetransmit() {
        var c = loaded()
        let echo = c.timestampValue(at: at(100))
        let s = { (n: Int) in ourSegmentStart(n) }
        let before = c.stats.congestionWindow
        c.receive(peerACK(s(0), echo: echo, sack: [block(s(1), s(4))]), now: at(113))
        let resent = c.drain(at: at(113))
        #expect(resent.first?.sequenceNumber == s(0))
        #expect(c.stats.congestionWindow < before)
        // The original segment 0 was only delayed: its ACK echoes the original timestamp.
        c.receive(peerACK(s(10), tsOffset: 2, echo: echo), now: at(115))
        #expect(c.stats.spuriousRetransmissions == 1)
        #expect(c.stats.recoveryUndos == 1)
        #expect(c.stats.congestionWindow >= before)
    }

    @Test func dsackUndoesWhenEveryRetransmissionWasDuplicated() {
        var c = loaded()
        let echo = c.timestampValue(at: at(100))
        let s = { (n: Int) in ourSegmentStart(n) }
        let before = c.stats.congestionWindow
        c.receive(peerACK(s(0), echo: echo, sack: [block(s(1), s(4))]), now: at(113))
        _ = c.drain(at: at(113))
        let reduced = c.stats.congestionWindow
        #expect(reduced < before)
        // The peer echoes the retransmission's timestamp (so Eifel cannot tell) but reports it
        // with a D-SACK below the cumulative ACK.
        c.receive(peerACK(s(10), tsOffset: 2, echo: c.timestampValue(at: at(113)), sack: [block(s(0), s(1))]), now: at(125))
        #expect(c.stats.spuriousRetransmissions == 1)
        #expect(c.stats.recoveryUndos == 1)
        #expect(c.stats.congestionWindow >= before)
    }
    @Test func lostRetransmissionIsDetectedByALaterSACK() {
        var c = loaded()
        let echo = c.timestampValue(at: at(100))
        let s = { (n: Int) in ourSegmentStart(n) }
        c.receive(peerACK(s(1), echo: echo), now: at(110))
        c.receive(peerACK(s(1), echo: echo, sack: [block(s(2), s(3))]), now: at(111))
        c.receive(peerACK(s(1), echo: echo, sack: [block(s(2), s(4))]), now: at(112))
        _ = c.drain(at: at(112))
        c.receive(peerACK(s(1), echo: echo, sack: [block(s(2), s(5))]), now: at(113))
        #expect(c.drain(at: at(113)).map(\.sequenceNumber) == [s(1)])
        // The retransmission is lost too. More SACKs free the pipe for one new segment...
        c.receive(peerACK(s(1), echo: echo, sack: [block(s(2), s(10))]), now: at(120))
        #expect(c.drain(at: at(120)).map(\.sequenceNumber) == [s(14)])
        // ...which, sent after the retransmission and SACKed, shows the retransmission lost.
        c.receive(peerACK(s(1), echo: echo, sack: [block(s(2), s(15))]), now: at(140))
        #expect(c.drain(at: at(140)).first?.sequenceNumber == s(1))
        #expect(c.stats.retransmissions == 2)
        #expect(c.stats.fastRetransmits == 1)  // one recovery episode, one reduction
        #expect(c.stats.rtoExpiries == 0)
    }

    @Test func tailLossProbeSendsNewDataWhenItHasSome() {
        var c = modernConnection()
        #expect(c.write(bytes(count: 12 * modernMSS)) == 12 * modernMSS)
        #expect(c.drain(at: at(100)).count == 10)  // the initial window
        #expect(c.nextDeadline == at(120))
        c.handleTimeout(now: at(120))
        // The probe is new data, past the congestion window: it costs no retransmission.
        #expect(c.drain(at: at(120)) == [toPeer(seq: ourSegmentStart(10), options: c.ourOptions(at: at(120)), payload: bytes(count: modernMSS))])
        #expect(c.stats.tailLossProbes == 1 && c.stats.retransmissions == 0)
    }
}
