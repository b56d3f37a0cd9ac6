import NIOCore
import Testing
import TOUWire

@testable import TCPEngine

@Suite struct IdleRestartTests {
    /// RFC 5681 4.1 (Linux's tcp_slow_start_after_idle): after sending nothing for longer than
    /// the RTO, the window learnt before says little about the path now. It restarts from the
    /// initial window (halved per idle RTO, never below that), so the next burst does not hit
    /// the path at the old rate.
    @Test(arguments: [Setup.modern, .shippedDefaults])
    func windowRestartsAfterAnIdlePeriodLongerThanTheRTO(_ setup: Setup) {
        var c = modernConnection(configuration: setup.configuration, peerWindow: 65535)
        #expect(c.write(bytes(count: 30 * modernMSS)) == 30 * modernMSS)
        // Slow start over 20 ms round trips: unpaced, an ACK per segment, each answered at once;
        // paced, one ACK per round (a paced slow start counts every acknowledged byte).
        var now: Int64 = 100
        var flight = c.drainPaced(at: at(now), limit: .milliseconds(10)).filter { $0.payload.readableBytes > 0 }
        while let last = flight.last, now < 1000 {
            now += 20
            let echo = c.timestampValue(at: at(now - 20))
            var next: [TCPSegment] = []
            if setup == .modern {
                for (index, segment) in flight.enumerated() {
                    let end = segment.sequenceNumber &+ UInt32(segment.payload.readableBytes)
                    c.receive(peerACK(end, tsOffset: UInt32(now + Int64(index)), echo: echo), now: at(now))
                    next += c.drain(at: at(now))
                }
            } else {
                let end = last.sequenceNumber &+ UInt32(last.payload.readableBytes)
                c.receive(peerACK(end, tsOffset: UInt32(now), echo: echo), now: at(now))
                next = c.drainPaced(at: at(now), limit: .milliseconds(10))
            }
            flight = next.filter { $0.payload.readableBytes > 0 }
        }
        #expect(c.isSendQueueEmptyAndAcknowledged)
        let grown = c.stats.congestionWindow
        #expect(grown >= 20 * modernMSS)
        // Ten seconds later the application writes again.
        #expect(c.write(bytes(count: 40 * modernMSS)) == 40 * modernMSS)
        let burst = c.drain(at: at(10_000)).filter { $0.payload.readableBytes > 0 }
        #expect(c.stats.congestionWindow == 10 * modernMSS)
        #expect(burst.count <= 10)
    }
}
