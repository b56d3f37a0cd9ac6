import NIOCore
import TCPEngine

/// A snapshot of one connection's counters.
public struct TOUConnectionStats: Sendable, CustomStringConvertible {
    /// Payload bytes sent (first transmissions) and delivered to us.
    public var bytesSent: Int
    public var bytesReceived: Int
    public var segmentsSent: Int
    public var segmentsReceived: Int
    public var retransmissions: Int
    public var retransmissionTimeouts: Int
    public var fastRetransmits: Int
    /// Retransmissions later found unnecessary (Eifel or D-SACK), and tail loss probes sent.
    public var spuriousRetransmissions: Int
    public var tailLossProbes: Int
    public var sackBlocksReceived: Int
    public var sackBlocksSent: Int
    public var smoothedRTT: TimeAmount?
    public var rttVariance: TimeAmount?
    public var retransmissionTimeout: TimeAmount
    public var congestionWindow: Int
    public var slowStartThreshold: Int
    /// Bytes per second the sender paces at, nil before an RTT sample or with pacing off.
    public var pacingRate: Int?
    /// Datagrams this session dropped (wrong SID, DTLS rejects) and undecodable TCP segments.
    public var droppedDatagrams: Int
    public var malformedSegments: Int
    /// The negotiated DTLS suite, nil in plain mode.
    public var cipherSuite: String?
    /// Times the peer's address moved (NAT rebinding, migration), and datagrams held back from a
    /// new address that had not yet proven it is live (the 3x amplification limit).
    public var addressChanges = 0
    public var amplificationLimitedDatagrams = 0

    init(tcp: TCPStats?, droppedDatagrams: Int, malformedSegments: Int, cipherSuite: String?) {
        bytesSent = tcp?.bytesSent ?? 0
        bytesReceived = tcp?.bytesReceived ?? 0
        segmentsSent = tcp?.segmentsSent ?? 0
        segmentsReceived = tcp?.segmentsReceived ?? 0
        retransmissions = tcp?.retransmissions ?? 0
        retransmissionTimeouts = tcp?.rtoExpiries ?? 0
        fastRetransmits = tcp?.fastRetransmits ?? 0
        spuriousRetransmissions = tcp?.spuriousRetransmissions ?? 0
        tailLossProbes = tcp?.tailLossProbes ?? 0
        sackBlocksReceived = tcp?.sackBlocksReceived ?? 0
        sackBlocksSent = tcp?.sackBlocksSent ?? 0
        pacingRate = tcp?.pacingRate
        smoothedRTT = tcp?.smoothedRTT
        rttVariance = tcp?.rttVariance
        retransmissionTimeout = tcp?.rto ?? .seconds(1)
        congestionWindow = tcp?.congestionWindow ?? 0
        slowStartThreshold = tcp?.slowStartThreshold ?? 0
        self.droppedDatagrams = droppedDatagrams
        self.malformedSegments = malformedSegments
        self.cipherSuite = cipherSuite
    }

    public var description: String {
        // Microseconds as "m.uuu ms".
        let srtt = smoothedRTT.map { rtt -> String in
            let microseconds = Int((Double(rtt.nanoseconds) / 1e3).rounded())
            let fraction = String(microseconds % 1000)
            return "\(microseconds / 1000)." + String(repeating: "0", count: 3 - fraction.count) + fraction + " ms"
        } ?? "-"
        return "sent \(bytesSent) B in \(segmentsSent) segments, received \(bytesReceived) B in "
            + "\(segmentsReceived) segments, \(retransmissions) retransmissions "
            + "(\(retransmissionTimeouts) timeouts, \(fastRetransmits) fast, \(spuriousRetransmissions) spurious, "
            + "\(tailLossProbes) tail probes), srtt \(srtt), "
            + "cwnd \(congestionWindow) B"
    }
}

/// Per-endpoint counters of what arrived and what was dropped, by reason.
public struct TOUEndpointCounters: Sendable, CustomStringConvertible {
    public var datagramsReceived = 0
    public var datagramsSent = 0
    /// Writes that carried a run of datagrams for the kernel to segment (UDP GSO).
    public var segmentationWrites = 0
    /// Reads that delivered several coalesced datagrams (UDP GRO).
    public var coalescedReads = 0
    /// GUE header failed a receiver rule (truncated, bad flags, wrong mode...).
    public var droppedMalformed = 0
    /// No session for D and not an acceptable new-session attempt.
    public var droppedUnknownSession = 0
    /// Arrived for a session that ended moments ago (the peer's close_notify after ours, a
    /// retransmitted FIN): discarded as expected, not counted as a drop.
    public var datagramsAfterEnd = 0
    /// A new-session attempt that was not a ClientHello (or SYN in plain mode), or that DTLS refused.
    public var droppedBadAttempt = 0
    /// Over the half-open, session or per-source rate limit.
    public var droppedOverLimit = 0
    /// Dropped inside a session (wrong source SID, undecodable segment).
    public var droppedBySession = 0
    /// HelloVerifyRequests sent (cookie missing, stale, replayed or wrong D).
    public var helloVerifyRequestsSent = 0
    /// Repeats of an already admitted (address, port, SID) answered with a fresh HelloVerifyRequest.
    public var replayedAttempts = 0
    /// Attempts answered at once, without a cookie exchange (the listener was not under pressure).
    public var cookielessAdmissions = 0
    /// The most any attempt was sent, as a multiple of what it had sent, before it proved its
    /// address (at most 3).
    public var largestAmplification = 0.0
    public var sessionsAccepted = 0
    /// A listener with several workers: datagrams that reached a worker other than their
    /// session's (the kernel's hash, where the steering program is not attached) and were handed
    /// to it.
    public var misroutedDatagrams = 0

    public init() {}

    /// Every worker's counters added up (largest amplification: the largest).
    public static func sum(_ all: [TOUEndpointCounters]) -> TOUEndpointCounters {
        var total = TOUEndpointCounters()
        for counters in all {
            total.datagramsReceived += counters.datagramsReceived
            total.datagramsSent += counters.datagramsSent
            total.segmentationWrites += counters.segmentationWrites
            total.coalescedReads += counters.coalescedReads
            total.droppedMalformed += counters.droppedMalformed
            total.droppedUnknownSession += counters.droppedUnknownSession
            total.datagramsAfterEnd += counters.datagramsAfterEnd
            total.droppedBadAttempt += counters.droppedBadAttempt
            total.droppedOverLimit += counters.droppedOverLimit
            total.droppedBySession += counters.droppedBySession
            total.helloVerifyRequestsSent += counters.helloVerifyRequestsSent
            total.replayedAttempts += counters.replayedAttempts
            total.cookielessAdmissions += counters.cookielessAdmissions
            total.largestAmplification = max(total.largestAmplification, counters.largestAmplification)
            total.sessionsAccepted += counters.sessionsAccepted
            total.misroutedDatagrams += counters.misroutedDatagrams
        }
        return total
    }

    public var totalDropped: Int {
        droppedMalformed + droppedUnknownSession + droppedBadAttempt + droppedOverLimit + droppedBySession
    }

    public var description: String {
        "datagrams received \(datagramsReceived) (\(coalescedReads) coalesced reads), "
            + "sent \(datagramsSent) (\(segmentationWrites) GSO writes); dropped: malformed \(droppedMalformed), "
            + "unknown session \(droppedUnknownSession) (\(datagramsAfterEnd) more after their session ended), "
            + "bad attempt \(droppedBadAttempt), "
            + "over limit \(droppedOverLimit), in session \(droppedBySession); "
            + "hello-verify-requests \(helloVerifyRequestsSent), replayed attempts \(replayedAttempts), "
            + "cookieless admissions \(cookielessAdmissions), misrouted \(misroutedDatagrams)"
    }
}
