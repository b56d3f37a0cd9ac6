import NIOCore
import Testing
import TOUWire

@testable import TCPEngine

/// RACK's view of reordering (RFC 8985 6.2): what counts as reordering, how the reordering
/// window grows and shrinks, and the minimum RTT it is measured in.
@Suite struct ReorderingTests {
    let s = { (n: Int) in ourSegmentStart(n) }

    /// RFC 8985 6.2 step 3: newly SACKed data is taken in ascending order. The receiver lists the
    /// block of its latest arrival first; applied in that order the lower block looked
    /// reordered, and the reordering window then delayed every loss for the connection's life.
    @Test(arguments: [Setup.modern, .shippedDefaults])
    func blocksAreAppliedLowestFirst(_ setup: Setup) {
        var c = tenSegmentsInFlight(setup)
        c.receive(peerACK(s(1), echo: c.timestampValue(at: at(100)), sack: [block(s(5), s(7)), block(s(2), s(4))]), now: at(113))
        // Four SACKed segments above both holes and no reordering: both are lost at once.
        let resent = c.drainPaced(at: at(113)).map(\.sequenceNumber)
        #expect(resent.first == s(1))
        #expect(resent.contains(s(4)) || c.scoreboard.lostSegments == 1)  // 4 waits for room in the pipe
        #expect(c.stats.fastRetransmits == 1)
        #expect(!c.scoreboard.reorderingSeen)
    }

    /// Spurious retransmissions of 0 and 1, each D-SACKed: the multiplier grows once for the
    /// round trip that saw D-SACKs, not once per D-SACK.
    @Test(arguments: [Setup.modern, .shippedDefaults])
    func reorderingWindowGrowsOncePerRoundTrip(_ setup: Setup) {
        var c = tenSegmentsInFlight(setup)
        let echo = c.timestampValue(at: at(100))
        c.receive(peerACK(s(0), echo: echo, sack: [block(s(2), s(8))]), now: at(113))
        #expect(c.drainPaced(at: at(113)).map(\.sequenceNumber).prefix(2) == [s(0), s(1)])
        // The originals were only late; the copies arrive after them and are D-SACKed.
        let late = c.timestampValue(at: at(113))
        c.receive(peerACK(s(10), tsOffset: 2, echo: late), now: at(120))
        c.receive(peerACK(s(10), tsOffset: 3, echo: late, sack: [block(s(0), s(1))]), now: at(124))
        c.receive(peerACK(s(10), tsOffset: 4, echo: late, sack: [block(s(1), s(2))]), now: at(125))
        #expect(c.reorderingMultiplier == 2)
    }

    /// A D-SACK for a tail loss probe (the probe is timer-driven, not a RACK decision) and one
    /// for data never retransmitted (the network duplicated it) say nothing about reordering.
    @Test(arguments: [Setup.modern, .shippedDefaults])
    func probeAndNetworkDuplicatesDoNotWidenTheWindow(_ setup: Setup) {
        var c = modernConnection(configuration: setup.configuration)
        #expect(c.write(bytes(count: 3 * modernMSS)) == 3 * modernMSS)
        _ = c.drainPaced(at: at(100))
        c.handleTimeout(now: at(120))
        #expect(c.drain(at: at(120)).map(\.sequenceNumber) == [s(2)])
        c.receive(peerACK(s(3), echo: c.timestampValue(at: at(100)), sack: [block(s(2), s(3))]), now: at(135))
        #expect(c.reorderingMultiplier == 1)

        var d = tenSegmentsInFlight(setup)
        d.receive(peerACK(s(5), echo: d.timestampValue(at: at(100)), sack: [block(s(2), s(3))]), now: at(113))
        #expect(d.reorderingMultiplier == 1)
    }

    /// RFC 8985 6.2 step 4: after 16 recoveries without a D-SACK the multiplier returns to 1.
    @Test func reorderingWindowResetsAfterSixteenRecoveriesWithoutDSACK() {
        var c = tenSegmentsInFlight(.modern)
        let echo = c.timestampValue(at: at(100))
        c.receive(peerACK(s(0), echo: echo, sack: [block(s(2), s(5))]), now: at(113))
        _ = c.drain(at: at(113))
        let late = c.timestampValue(at: at(113))
        c.receive(peerACK(s(10), tsOffset: 2, echo: late), now: at(120))
        c.receive(peerACK(s(10), tsOffset: 3, echo: late, sack: [block(s(0), s(1))]), now: at(124))
        #expect(c.reorderingMultiplier == 2)
        var now: Int64 = 200
        for episode in 1...16 {
            // Whatever is in flight is acknowledged; then a fresh flight loses its first segment.
            c.receive(peerACK(c.sndMax, tsOffset: UInt32(10 * episode), echo: c.timestampValue(at: at(now - 10))), now: at(now))
            var sent = c.drain(at: at(now))
            #expect(c.write(bytes(count: 4 * modernMSS)) > 0)
            sent += c.drain(at: at(now))
            let flight = sent.filter { $0.payload.readableBytes > 0 }.map(\.sequenceNumber)
            #expect(flight.count >= 2)
            guard flight.count >= 2 else { return }
            c.receive(
                peerACK(flight[0], tsOffset: UInt32(10 * episode + 1), echo: c.timestampValue(at: at(now)),
                        sack: [block(flight[1], flight[1] &+ UInt32(modernMSS))]),
                now: at(now + 12))
            let resent = c.drain(at: at(now + 12)) + c.runTimers(until: at(now + 40))
            #expect(resent.contains { $0.sequenceNumber == flight[0] })
            c.receive(peerACK(c.sndMax, tsOffset: UInt32(10 * episode + 2), echo: c.timestampValue(at: at(now + 40))), now: at(now + 50))
            #expect(c.stats.fastRetransmits == 1 + episode)
            #expect(c.reorderingMultiplier == (episode < 16 ? 2 : 1))
            now += 100
        }
    }

    /// Timestamp echoes time in whole milliseconds: on a path faster than that, a retransmission
    /// timed by its echo measures 0 ms. The minimum RTT (RACK's reordering window and its
    /// spurious-retransmission check) must not drop to it.
    @Test(arguments: [Setup.modern, .shippedDefaults])
    func timestampSamplesDoNotDragTheMinimumRTTToZero(_ setup: Setup) {
        var c = synSentConnection(setup)
        let options = TCPOptions(
            maximumSegmentSize: 1460, windowScale: 0, sackPermitted: true,
            timestamps: peerTS(0, echo: c.timestampValue(at: t0)))
        c.receive(fromPeer(seq: remoteISS, flags: .syn, options: options), now: t0 + .microseconds(300))
        _ = c.drain(at: t0 + .microseconds(300))
        #expect(c.stats.minimumRTT == .microseconds(300))
        #expect(c.write(bytes(count: 100)) == 100)
        _ = c.drain(at: at(100))
        // Nothing comes back: the segment is sent again (by the RTO or a probe in its place).
        let again = c.runTimers(until: at(400))
        #expect(again.first?.sequenceNumber == ourSegmentStart(0))
        c.receive(peerACK(ourSegmentStart(0) &+ 100, echo: c.timestampValue(at: at(300))), now: at(300) + .microseconds(300))
        #expect(c.stats.minimumRTT == .microseconds(300))
    }

    /// The minimum RTT is a windowed minimum (Linux: 300 s): a path that got slower is seen.
    @Test(arguments: [Setup.modern, .shippedDefaults])
    func minimumRTTForgetsSamplesOlderThanItsWindow(_ setup: Setup) {
        var c = modernConnection(configuration: setup.configuration)
        #expect(c.stats.minimumRTT == .milliseconds(10))
        var sequence = ourSegmentStart(0)
        for step in 0..<32 {
            let sent = at(1000 + Int64(step) * 10_000)
            #expect(c.write(bytes(count: 100)) == 100)
            #expect(c.drain(at: sent).count == 1)
            sequence = sequence &+ 100
            c.receive(peerACK(sequence, tsOffset: UInt32(step + 1), echo: c.timestampValue(at: sent)), now: sent + .milliseconds(50))
            _ = c.drain(at: sent + .milliseconds(50))
        }
        #expect(c.stats.minimumRTT == .milliseconds(50))
    }

    /// The minimum RTT belongs to a path: after the peer moves, the next sample sets it.
    @Test(arguments: [Setup.modern, .shippedDefaults])
    func pathChangeRestartsTheMinimumRTT(_ setup: Setup) {
        var c = modernConnection(configuration: setup.configuration)
        #expect(c.stats.minimumRTT == .milliseconds(10))
        c.pathChanged()
        #expect(c.write(bytes(count: 100)) == 100)
        #expect(c.drain(at: at(1000)).count == 1)
        c.receive(peerACK(ourSegmentStart(0) &+ 100, echo: c.timestampValue(at: at(1000))), now: at(1050))
        #expect(c.stats.minimumRTT == .milliseconds(50))
    }
}
