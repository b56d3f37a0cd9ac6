import NIOCore
import Testing
import TOUWire

@testable import TCPEngine

@Suite struct TailLossProbeTests {
    /// RFC 8985 7.2: with one segment in flight PTO = 2*srtt + WCDelAckT = 220 ms, later than the
    /// 200 ms RTO; the probe is sent at the RTO's time instead of the RTO (as Linux does), so a
    /// lost tail costs a probe, not a timeout.
    @Test(arguments: [Setup.modern, .shippedDefaults])
    func probeIsClampedToTheRTOWithOneSegmentInFlight(_ setup: Setup) {
        var c = modernConnection(configuration: setup.configuration)
        #expect(c.write(bytes(count: 100)) == 100)
        #expect(c.drain(at: at(100)).map(\.sequenceNumber) == [ourSegmentStart(0)])
        #expect(c.nextDeadline == at(300))
        c.handleTimeout(now: at(300))
        let probe = c.drain(at: at(300))
        #expect(probe.map(\.sequenceNumber) == [ourSegmentStart(0)])
        #expect(probe.first?.payload == bytes(count: 100))
        #expect(c.stats.tailLossProbes == 1 && c.stats.rtoExpiries == 0)
        #expect(c.nextDeadline == at(500))  // the RTO, re-armed behind the probe
        c.receive(peerACK(ourSegmentStart(0) &+ 100, echo: c.timestampValue(at: at(300))), now: at(310))
        #expect(c.stats.rtoExpiries == 0)
        #expect(c.stats.congestionWindow > modernMSS)
    }

    /// RFC 8985 7.4: the original arrived and only its ACK was lost. A receiver that echoes the
    /// probe's timestamp on the duplicate (Linux does when the probe ends at RCV.NXT) but D-SACKs
    /// it shows the probe was redundant: no loss, no window reduction.
    @Test(arguments: Setup.allCases)
    func dsackedProbeMeansNoLoss(_ setup: Setup) {
        var c = modernConnection(configuration: setup.configuration)
        let s = { (n: Int) in ourSegmentStart(n) }
        #expect(c.write(bytes(count: 3 * modernMSS)) == 3 * modernMSS)
        #expect(c.drainPaced(at: at(100)).count == 3)
        #expect(c.nextDeadline == at(120))
        c.handleTimeout(now: at(120))
        #expect(c.drain(at: at(120)).map(\.sequenceNumber) == [s(2)])
        let before = c.stats.congestionWindow
        c.receive(peerACK(s(3), echo: c.timestampValue(at: at(120)), sack: [block(s(2), s(3))]), now: at(135))
        #expect(c.stats.congestionWindow >= before)
        // The episode is over: ACKs for later data do not find a repaired loss in it either.
        #expect(c.write(bytes(count: modernMSS)) == modernMSS)
        #expect(c.drainPaced(at: at(136)).map(\.sequenceNumber) == [s(3)])
        c.receive(peerACK(s(4), tsOffset: 2, echo: c.timestampValue(at: at(136))), now: at(146))
        #expect(c.stats.slowStartThreshold > 1 << 30)  // still in the first slow start
        #expect(c.reorderingMultiplier == 1)
    }

    /// RFC 8985 7.4: the probe's copy filled the hole (no D-SACK follows): once an ACK goes past
    /// the probe, the loss it repaired is answered like any other.
    @Test(arguments: Setup.allCases)
    func probeThatRepairedALossReducesTheWindowOnceAnACKPassesIt(_ setup: Setup) {
        var c = modernConnection(configuration: setup.configuration)
        let s = { (n: Int) in ourSegmentStart(n) }
        #expect(c.write(bytes(count: 3 * modernMSS)) == 3 * modernMSS)
        _ = c.drainPaced(at: at(100))
        c.handleTimeout(now: at(120))
        #expect(c.drain(at: at(120)).map(\.sequenceNumber) == [s(2)])
        c.receive(peerACK(s(3), echo: c.timestampValue(at: at(120))), now: at(135))
        #expect(c.stats.slowStartThreshold > 1 << 30)  // a D-SACK for the original may yet come
        #expect(c.write(bytes(count: modernMSS)) == modernMSS)
        #expect(c.drainPaced(at: at(136)).map(\.sequenceNumber) == [s(3)])
        c.receive(peerACK(s(4), tsOffset: 2, echo: c.timestampValue(at: at(136))), now: at(146))
        #expect(c.stats.slowStartThreshold < 1 << 30)
        #expect(c.stats.fastRetransmits == 0 && c.stats.rtoExpiries == 0)
    }
}
