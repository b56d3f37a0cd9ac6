import NIOCore

/// RFC 9406 HyStart++: leaves slow start when the RTT of a round rises by more than a
/// threshold over the previous round, through a few rounds of conservative slow start (CSS)
/// that return to slow start if the rise was a false alarm.
struct HyStartPlusPlus: Sendable {
    private static let minimumRTTThreshold = TimeAmount.milliseconds(4)
    private static let maximumRTTThreshold = TimeAmount.milliseconds(16)
    private static let minimumRTTDivisor: Int64 = 8
    private static let rttSamplesPerRound = 8
    static let cssGrowthDivisor = 4
    private static let cssRounds = 5

    private var windowEnd: UInt32?
    private var lastRoundMinimumRTT: TimeAmount?
    private var currentRoundMinimumRTT: TimeAmount?
    private var samples = 0
    private var cssBaselineMinimumRTT: TimeAmount?
    private var roundsInCSS = 0

    var inConservativeSlowStart: Bool { cssBaselineMinimumRTT != nil }

    enum Verdict { case slowStart, conservative, exitToAvoidance }

    /// Feeds one ACK taken in slow start; says how the window should grow for it. The ACK that
    /// reaches the round's end still belongs to that round; the next round starts after it.
    mutating func onAck(_ sample: CongestionAckSample) -> Verdict {
        if windowEnd == nil { windowEnd = sample.highestSent }
        if let rtt = sample.rttSample {
            currentRoundMinimumRTT = min(currentRoundMinimumRTT ?? rtt, rtt)
            samples += 1
        }
        var verdict = evaluate()
        if let end = windowEnd, sample.acknowledgment.seqGE(end) {
            windowEnd = sample.highestSent
            lastRoundMinimumRTT = currentRoundMinimumRTT
            currentRoundMinimumRTT = nil
            samples = 0
            if cssBaselineMinimumRTT != nil {
                roundsInCSS += 1
                if roundsInCSS >= Self.cssRounds { verdict = .exitToAvoidance }
            }
        }
        return verdict
    }

    private mutating func evaluate() -> Verdict {
        guard samples >= Self.rttSamplesPerRound, let current = currentRoundMinimumRTT else {
            return inConservativeSlowStart ? .conservative : .slowStart
        }
        if let baseline = cssBaselineMinimumRTT {
            if current < baseline {
                // The RTT rise was spurious: back to slow start.
                cssBaselineMinimumRTT = nil
                roundsInCSS = 0
                return .slowStart
            }
            return .conservative
        }
        if let last = lastRoundMinimumRTT {
            let eighth = TimeAmount.nanoseconds(last.nanoseconds / Self.minimumRTTDivisor)
            let threshold = min(max(eighth, Self.minimumRTTThreshold), Self.maximumRTTThreshold)
            if current >= last + threshold {
                cssBaselineMinimumRTT = current
                roundsInCSS = 0
                return .conservative
            }
        }
        return .slowStart
    }

    /// A congestion event or timeout ends slow start; the next one starts afresh.
    mutating func reset() { self = HyStartPlusPlus() }
}

/// Slow start shared by both controllers: RFC 3465 byte counting, shaped by HyStart++. L = 2
/// unpaced; a paced sender counts every acked byte (RFC 9406 4.2), so stretch ACKs from a
/// receiver that coalesces them do not slow it down.
/// Returns the growth, and whether slow start should end now.
func slowStartGrowth(
    _ hyStart: inout HyStartPlusPlus, sample: CongestionAckSample, mss: Int
) -> (growth: Int, exit: Bool) {
    let base = sample.paced ? sample.ackedBytes : min(sample.ackedBytes, 2 * mss)
    switch hyStart.onAck(sample) {
    case .slowStart: return (base, false)
    case .conservative: return (max(1, base / HyStartPlusPlus.cssGrowthDivisor), false)
    case .exitToAvoidance: return (0, true)
    }
}
