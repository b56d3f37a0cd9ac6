#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import NIOCore
import TCPEngine
import TCPSimulator

/// CPU cost of one loss episode (`TCPSimulator.LossEpisode`) at large windows: the episode is
/// recorded once and replayed into each engine alone, so each side's thread CPU time is taken
/// without a clock read per call; the fastest of `replays` counts.
struct LossEpisodeBenchmark {
    var segments: Int
    var congestion: CongestionChoice
    var rtt: TimeAmount
    var mss: Int
    /// Drop the first segment of the measured flight (false: the same flight without loss).
    var loses: Bool
    var replays: Int

    struct Outcome: Codable {
        var segments: Int
        var algorithm: String
        var loses: Bool
        var peakSegmentsInFlight: Int
        var senderMilliseconds: Double
        var receiverMilliseconds: Double
        var retransmissions: Int
        var fastRetransmits: Int
        var rtoExpiries: Int
        /// Every replay ended with the recorded engine's counters (the engines are deterministic).
        var replaysMatched: Bool
    }

    func run() -> Outcome? {
        var tcp = TCPConfiguration(maximumSegmentSize: mss)
        guard congestion.apply(to: &tcp),
            let episode = LossEpisode.record(segments: segments, configuration: tcp, rtt: rtt, losesFirstSegment: loses)
        else { return nil }
        let (senderSeconds, senderMatched) = Self.time(episode.sender, replays: replays)
        let (receiverSeconds, receiverMatched) = Self.time(episode.receiver, replays: replays)
        let before = episode.senderStatsBefore
        let after = episode.senderStatsAfter
        return Outcome(
            segments: segments, algorithm: congestion.rawValue, loses: loses,
            peakSegmentsInFlight: episode.peakSegmentsInFlight,
            senderMilliseconds: senderSeconds * 1000, receiverMilliseconds: receiverSeconds * 1000,
            retransmissions: after.retransmissions - before.retransmissions,
            fastRetransmits: after.fastRetransmits - before.fastRetransmits,
            rtoExpiries: after.rtoExpiries - before.rtoExpiries,
            replaysMatched: senderMatched && receiverMatched)
    }

    private static func time(_ side: LossEpisode.Side, replays: Int) -> (seconds: Double, matched: Bool) {
        var best = Double.infinity
        var matched = true
        for _ in 0..<max(1, replays) {
            let began = threadCPUSeconds()
            let end = LossEpisode.replay(side.calls, into: side.start)
            best = min(best, threadCPUSeconds() - began)
            matched = matched && end.stats == side.end.stats && end.state == side.end.state
        }
        return (best, matched)
    }

    private static func threadCPUSeconds() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }
}
