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
    /// Retransmissions (or zero-window probes) went unanswered too long.
    case timedOut
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
    /// Segments sent again (after RTO, fast retransmit or NewReno partial ACK).
    public var retransmissions: Int = 0
    public var rtoExpiries: Int = 0
    public var fastRetransmits: Int = 0
    public var smoothedRTT: TimeAmount?
    public var rttVariance: TimeAmount?
    public var rto: TimeAmount = .seconds(1)
    public var congestionWindow: Int = 0
    public var slowStartThreshold: Int = 0
    /// The peer's advertised window, scaled.
    public var sendWindow: Int = 0

    public init() {}
}
