import NIOCore

/// RFC 9293 connection states. LISTEN lives outside the engine (`TCPConnection.accept`).
public enum TCPState: Sendable, Hashable {
    case closed, listen, synSent, synReceived, established, finWait1, finWait2, closeWait, closing,
        lastAck, timeWait
}

public enum TCPCloseReason: Sendable, Equatable, Hashable {
    /// Both FINs were sent and acknowledged.
    case normal
    /// The peer reset the connection.
    case reset
    /// Retransmissions, zero-window probes or keepalive probes went unanswered too long.
    case timedOut
    /// Sent data (or a probe) stayed unacknowledged for the configured user timeout (RFC 5482).
    case userTimeout
    /// The local side called `abort()`.
    case aborted
}

public enum TCPEvent: Sendable, Equatable, Hashable {
    /// Reached ESTABLISHED.
    case connected
    /// New in-order bytes are available; at most one is pending at a time.
    case readable
    /// Send-buffer space became available after `write` accepted less than it was given.
    case writable
    /// The peer's FIN arrived; every byte before it is readable.
    case peerFinished
    /// Reached CLOSED; the connection is finished.
    case closed(TCPCloseReason)
}

public struct TCPStats: Sendable, Hashable {
    /// Payload bytes sent for the first time.
    public var bytesSent: Int = 0
    /// Payload bytes delivered in order to the receive buffer.
    public var bytesReceived: Int = 0
    public var segmentsSent: Int = 0
    public var segmentsReceived: Int = 0
    /// Segments sent again (after RTO, fast retransmit, RACK, NewReno partial ACK or a tail probe).
    public var retransmissions: Int = 0
    /// Retransmissions later shown unnecessary (timestamps/Eifel or D-SACK).
    public var spuriousRetransmissions: Int = 0
    public var rtoExpiries: Int = 0
    public var fastRetransmits: Int = 0
    /// Tail loss probes sent (RFC 8985 section 7).
    public var tailLossProbes: Int = 0
    /// Loss-recovery episodes undone because they proved spurious.
    public var recoveryUndos: Int = 0
    public var sackBlocksReceived: Int = 0
    public var sackBlocksSent: Int = 0
    /// Segments dropped by PAWS (RFC 7323 section 5).
    public var pawsRejected: Int = 0
    public var challengeACKs: Int = 0
    public var smoothedRTT: TimeAmount?
    public var rttVariance: TimeAmount?
    public var minimumRTT: TimeAmount?
    public var rto: TimeAmount = .seconds(1)
    public var congestionWindow: Int = 0
    public var slowStartThreshold: Int = 0
    /// Bytes per second the pacer releases; nil when pacing is off or no RTT is known yet.
    public var pacingRate: Int?
    /// The peer's advertised window, scaled.
    public var sendWindow: Int = 0
    /// The receive buffer after auto-tuning.
    public var receiveBufferSize: Int = 0
    /// Out-of-order bytes dropped to keep the receive queues within their memory budget (the
    /// peer must send them again; RFC 2018 8 allows reneging on SACKed data).
    public var outOfOrderBytesPruned: Int = 0
    public var selectiveAcknowledgmentsEnabled = false
    public var timestampsEnabled = false

    public init() {}

    public var cwnd: Int { congestionWindow }
    public var ssthresh: Int { slowStartThreshold }
    public var srtt: TimeAmount? { smoothedRTT }
    public var rttvar: TimeAmount? { rttVariance }
}
