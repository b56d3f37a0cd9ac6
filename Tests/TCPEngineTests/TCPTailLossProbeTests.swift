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
}
