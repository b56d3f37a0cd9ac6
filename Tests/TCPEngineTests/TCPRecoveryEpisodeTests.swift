import NIOCore
import Testing
import TOUWire

@testable import TCPEngine

/// One recovery episode: when it begins and ends, what it reduces, and when it may be undone.
@Suite struct RecoveryEpisodeTests {
    let s = { (n: Int) in ourSegmentStart(n) }

    /// An RTO during fast recovery is the same congestion event: ssthresh stays where recovery
    /// put it, however many RTOs follow (RFC 5681 4.2 "held constant", as Linux). CUBIC used to
    /// take 0.7 of the already reduced window on each, reaching 2 MSS after two.
    @Test(arguments: [Setup.modernCubic, .shippedDefaults])
    func timeoutsDuringRecoveryDoNotReduceAgain(_ setup: Setup) {
        var c = recoveringFirstSegment(setup)
        let threshold = c.stats.slowStartThreshold
        #expect(threshold == 7 * modernMSS)  // 0.7 of ten segments
        // The retransmission is lost and the peer falls silent: two RTOs.
        while c.stats.rtoExpiries < 2, let deadline = c.nextDeadline, deadline < at(5000) {
            c.handleTimeout(now: deadline)
            _ = c.drain(at: deadline)
        }
        #expect(c.stats.rtoExpiries == 2)
        #expect(c.stats.slowStartThreshold == threshold)
        #expect(c.stats.congestionWindow == modernMSS)
    }

    /// After an RTO, a loss found before SND.UNA passes `recover` belongs to the same episode
    /// (RFC 6582 3.2, RFC 6675 5.1): the lost retransmission is resent, but no fast recovery
    /// starts and ssthresh stays.
    @Test(arguments: [Setup.modern, .modernCubic, .shippedDefaults])
    func lostRetransmissionAfterATimeoutStartsNoNewRecovery(_ setup: Setup) {
        var c = tenSegmentsInFlight(setup)
        // Nothing comes back: a tail loss probe, then the RTO resends the first segment.
        var timeout = at(100)
        var resent: [TCPSegment] = []
        while c.stats.rtoExpiries == 0, let deadline = c.nextDeadline, deadline < at(2000) {
            timeout = deadline
            c.handleTimeout(now: deadline)
            resent = c.drainPaced(at: deadline, limit: .milliseconds(5))
        }
        #expect(c.stats.rtoExpiries == 1)
        #expect(resent.map(\.sequenceNumber) == [s(0)])
        let threshold = c.stats.slowStartThreshold
        let t = { (milliseconds: Int64) in timeout + .milliseconds(milliseconds) }
        c.receive(peerACK(s(1), echo: c.timestampValue(at: timeout)), now: t(10))
        #expect(c.drainPaced(at: t(10), limit: .milliseconds(5)).map(\.sequenceNumber) == [s(1), s(2)])
        // The copy of 2 arrives, that of 1 does not: RACK finds 1 lost after its reordering window.
        c.receive(peerACK(s(1), echo: c.timestampValue(at: t(10)), sack: [block(s(2), s(3))]), now: t(20))
        resent = c.drain(at: t(20)) + c.runTimers(until: t(30))
        #expect(resent.contains { $0.sequenceNumber == s(1) })
        #expect(c.stats.fastRetransmits == 0)
        #expect(c.stats.slowStartThreshold == threshold)
    }

    /// Eifel shows the first retransmission was unnecessary, but the episode's other
    /// retransmission is still unacknowledged: no undo (Linux requires none outstanding), and
    /// the window stays reduced once that retransmission proves needed.
    @Test(arguments: Setup.allCases)
    func noUndoWhileAnotherRetransmissionIsOutstanding(_ setup: Setup) {
        var c = tenSegmentsInFlight(setup)
        let echo = c.timestampValue(at: at(100))
        c.receive(peerACK(s(0), echo: echo, sack: [block(s(1), s(3)), block(s(4), s(8))]), now: at(113))
        let resent = c.drainPaced(at: at(113)).map(\.sequenceNumber)
        #expect(resent.prefix(2) == [s(0), s(3)])
        let reduced = c.stats.congestionWindow
        // The original 0 was only delayed: its ACK echoes its first transmission.
        c.receive(peerACK(s(3), tsOffset: 2, echo: echo, sack: [block(s(4), s(8))]), now: at(115))
        #expect(c.stats.recoveryUndos == 0)
        // 3 really was lost: its retransmission completes the data.
        c.receive(peerACK(s(10), tsOffset: 3, echo: c.timestampValue(at: at(113))), now: at(126))
        #expect(c.stats.recoveryUndos == 0)
        #expect(c.stats.congestionWindow <= reduced)
    }

    /// RFC 2018 8: the receiver dropped data it had SACKed (reneging). The RTO finds the head of
    /// the scoreboard SACKed, forgets every SACK mark and resends from SND.UNA; the old scoreboard
    /// never resent the head and timed out.
    @Test(arguments: [Setup.modern, .shippedDefaults])
    func timeoutWithTheHeadSACKedForgetsSACKMarks(_ setup: Setup) {
        var c = recoveringFirstSegment(setup)
        // The retransmission arrives, but the receiver has thrown 1-3 away.
        c.receive(peerACK(s(1), tsOffset: 2, echo: c.timestampValue(at: at(113))), now: at(125))
        var afterTimeout: [TCPSegment] = []
        while let deadline = c.nextDeadline, deadline < at(3000) {
            c.handleTimeout(now: deadline)
            let out = c.drain(at: deadline)
            if c.stats.rtoExpiries > 0 {
                afterTimeout += out
                break
            }
        }
        #expect(c.stats.rtoExpiries == 1)
        #expect(afterTimeout.first?.sequenceNumber == s(1))
    }
}
