import NIOCore

/// Tunables of one TCP connection. Defaults follow the RFCs except where noted.
public struct TCPConfiguration: Sendable {
    /// The MSS we advertise and cap our segments at; the caller derives it from the path MTU.
    public var maximumSegmentSize: Int
    /// Receive buffer; the window scale is chosen so the whole buffer can be advertised.
    public var receiveBufferSize: Int
    /// Send buffer; `write` accepts up to its free space.
    public var sendBufferSize: Int
    /// RFC 6298's initial RTO.
    public var initialRTO: TimeAmount
    /// Lower bound for the RTO. 200 ms like Linux, deliberately below RFC 6298's 1 s: with an
    /// RTT estimate available, a 1 s floor only stalls recovery on fast paths.
    public var minimumRTO: TimeAmount
    public var maximumRTO: TimeAmount
    /// Consecutive RTO expiries (or unanswered zero-window probes) before `.closed(.timedOut)`.
    public var maximumRetransmissions: Int
    /// SYN (or SYN-ACK) retransmissions before `.closed(.timedOut)`.
    public var synRetries: Int
    /// 2*MSL. The session may end TIME-WAIT early (wire-format.md: SIDs make old segments harmless).
    public var timeWaitDuration: TimeAmount
    /// How long an ACK for in-order data may wait; every second full segment is ACKed at once.
    public var delayedACKTimeout: TimeAmount

    public init(maximumSegmentSize: Int = 1399) {
        self.maximumSegmentSize = maximumSegmentSize
        self.receiveBufferSize = 4 << 20
        self.sendBufferSize = 4 << 20
        self.initialRTO = .seconds(1)
        self.minimumRTO = .milliseconds(200)
        self.maximumRTO = .seconds(60)
        self.maximumRetransmissions = 12
        self.synRetries = 6
        self.timeWaitDuration = .seconds(60)
        self.delayedACKTimeout = .milliseconds(40)
    }

    /// The MSS actually advertised: what fits the 16-bit option, and at least 64 bytes.
    var advertisedMSS: Int { min(max(maximumSegmentSize, 64), Int(UInt16.max)) }

    /// The receive buffer, clamped to what a 14-bit window scale can advertise.
    var effectiveReceiveBufferSize: Int { min(max(receiveBufferSize, 1), Int(UInt16.max) << 14) }

    /// The smallest shift that lets the whole receive buffer be advertised (RFC 7323, at most 14).
    var receiveWindowShift: UInt8 {
        var shift: UInt8 = 0
        while shift < 14, Int(UInt16.max) << Int(shift) < effectiveReceiveBufferSize { shift += 1 }
        return shift
    }
}
