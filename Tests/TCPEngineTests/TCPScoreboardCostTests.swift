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
}
