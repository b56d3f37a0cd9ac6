import NIOCore
import TCPSimulator
import Testing

@testable import TCPEngine

@Suite struct ScoreboardCostTests {
    /// One loss at the head of a 4,000-segment flight, through the real engines with the shipped
    /// defaults. Each ACK SACKs a segment or two more above the hole: the sender's scoreboard
    /// must work in proportion to that, not walk the SACKed run when applying the blocks or
    /// rescan it in RACK on every ACK (which made one episode quadratic in the window).
    @Test func lossEpisodeWorkIsLinearInTheFlight() throws {
        let segments = 4000
        let episode = try #require(LossEpisode.record(segments: segments, configuration: TCPConfiguration()))
        #expect(episode.peakSegmentsInFlight >= segments - 1)
        #expect(episode.senderStatsAfter.fastRetransmits - episode.senderStatsBefore.fastRetransmits == 1)
        #expect(episode.senderStatsAfter.rtoExpiries == episode.senderStatsBefore.rtoExpiries)
        let visited = episode.sender.end.scoreboard.entriesVisited - episode.sender.start.scoreboard.entriesVisited
        #expect(visited < 20 * segments, "\(visited) scoreboard entries visited")
    }

    /// A burst of 1,000 segments lost at the head of a 2,000-segment flight, on a connection
    /// that has seen reordering (so RACK waits a reordering window before calling them lost).
    /// 1,000 ACKs, each SACKing one more segment, arrive inside that window: RACK must not walk
    /// all the waiting segments on each of them (it did: a million entries for this burst).
    @Test(arguments: [Setup.modern, .shippedDefaults])
    func burstLossInsideTheReorderingWindowCostsLinearWork(_ setup: Setup) {
        var configuration = setup.configuration
        configuration.sendBufferSize = 8 << 20
        var c = modernConnection(configuration: configuration, peerWindowScale: 14)
        let flight = 2000
        let lost = 1000
        // A window that holds the flight, set directly (slow start to it would take thousands of
        // ACKs), and reordering seen, as after an undone recovery.
        c.congestion = AnyCongestionController(
            setup.configuration.congestionControl, mss: modernMSS, initialWindow: (flight + 10) * modernMSS)
        c.scoreboard.noteReordering()
        // The SYN's window is unscaled; the first ACK opens the scaled one.
        c.receive(peerACK(ourSegmentStart(0), echo: c.timestampValue(at: at(10))), now: at(20))
        #expect(c.write(bytes(count: flight * modernMSS)) == flight * modernMSS)
        #expect(c.drainPaced(at: at(100)).count == flight)
        let before = c.scoreboard.entriesVisited
        let echo = c.timestampValue(at: at(100))
        for n in lost..<flight {
            let now = at(110) + .microseconds(Int64(n - lost))
            let sack = block(ourSegmentStart(lost), ourSegmentStart(n + 1))
            c.receive(peerACK(ourSegmentStart(0), tsOffset: UInt32(n), echo: echo, sack: [sack]), now: now)
            _ = c.drain(at: now)
        }
        #expect(c.scoreboard.sackedSegments == flight - lost)
        #expect(c.invariantViolation == nil)
        let visited = c.scoreboard.entriesVisited - before
        #expect(visited < 20 * flight, "\(visited) scoreboard entries visited")
    }
}
