import NIOCore

/// Which congestion controller a connection runs.
public enum TCPCongestionControlAlgorithm: Sendable, Hashable {
    /// RFC 5681 slow start and congestion avoidance, RFC 6582 fast recovery (with HyStart++).
    case newReno
    /// RFC 9438 CUBIC with HyStart++ (RFC 9406).
    case cubic
}

/// TCP keepalive (RFC 9293 3.8.4): after `idle` without hearing from the peer, a probe every
/// `interval`; `count` unanswered probes close the connection with `.timedOut`.
public struct TCPKeepAlive: Sendable, Hashable {
    public var idle: TimeAmount
    public var interval: TimeAmount
    public var count: Int

    public init(idle: TimeAmount = .seconds(7200), interval: TimeAmount = .seconds(75), count: Int = 9) {
        self.idle = idle
        self.interval = interval
        self.count = count
    }
}

/// Tunables of one TCP connection. Defaults follow the RFCs except where noted.
public struct TCPConfiguration: Sendable {
    /// The MSS we advertise and cap our segments at; the caller derives it from the path MTU.
    /// Options (timestamps, SACK blocks) come out of it, so a segment never outgrows the path.
    public var maximumSegmentSize: Int
    /// Initial receive buffer; auto-tuning may grow it up to `maximumReceiveBufferSize`.
    public var receiveBufferSize: Int
    /// Cap for receive-window auto-tuning; the window scale is chosen so it can be advertised.
    /// Values below `receiveBufferSize` disable auto-tuning.
    public var maximumReceiveBufferSize: Int
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
    /// Offer (and accept) SACK, RFC 2018.
    public var selectiveAcknowledgments: Bool
    /// Offer (and accept) RFC 7323 timestamps (RTTM, PAWS, spurious-retransmission detection).
    public var timestamps: Bool
    public var congestionControl: TCPCongestionControlAlgorithm
    /// Spread each window over the round trip instead of sending it as one burst.
    public var pacing: Bool
    /// Disables Nagle's algorithm: small segments go out even while data is unacknowledged.
    public var noDelay: Bool
    /// Keepalive probes; nil (the default) sends none.
    public var keepAlive: TCPKeepAlive?
    /// RFC 5482's user timeout: the connection closes with `.userTimeout` once sent data has
    /// been outstanding this long without any of it being acknowledged (each advance of SND.UNA
    /// starts the wait again), once a closed window has gone this long without a word from the
    /// peer, or once keepalive probes have gone this long unanswered. It bounds how long a dead
    /// peer goes unnoticed where the RTO retry limit alone takes minutes. nil (the default): none.
    public var userTimeout: TimeAmount?
    /// Data on the SYN, as TCP Fast Open (RFC 7413) does but without its cookie: what is written
    /// before the SYN leaves rides on it (as much as one segment holds), a SYN's data is taken at
    /// once, and the listening side may answer from SYN-RECEIVED, before the handshake's last
    /// ACK. Without a cookie this is only safe where every segment is authenticated and cannot be
    /// replayed (TCP inside DTLS); off by default.
    public var fastOpen: Bool

    public init(maximumSegmentSize: Int = 1399) {
        self.maximumSegmentSize = maximumSegmentSize
        self.receiveBufferSize = 4 << 20
        self.maximumReceiveBufferSize = 16 << 20
        self.sendBufferSize = 4 << 20
        self.initialRTO = .seconds(1)
        self.minimumRTO = .milliseconds(200)
        self.maximumRTO = .seconds(60)
        self.maximumRetransmissions = 12
        self.synRetries = 6
        self.timeWaitDuration = .seconds(60)
        self.delayedACKTimeout = .milliseconds(40)
        self.selectiveAcknowledgments = true
        self.timestamps = true
        self.congestionControl = .cubic
        self.pacing = true
        self.noDelay = false
        self.keepAlive = nil
        self.userTimeout = nil
        self.fastOpen = false
    }

    /// MSL; TIME-WAIT lasts twice this. Stored as `timeWaitDuration` so the two never disagree.
    public var maximumSegmentLifetime: TimeAmount {
        get { .nanoseconds(timeWaitDuration.nanoseconds / 2) }
        set { timeWaitDuration = newValue + newValue }
    }

    /// The MSS actually advertised: what fits the 16-bit option, and at least 64 bytes.
    var advertisedMSS: Int { min(max(maximumSegmentSize, 64), Int(UInt16.max)) }

    /// Payload of a full segment between two ends with this configuration: the MSS less the
    /// timestamps option, which rides on every segment when both offer it (RFC 7323, RFC 6691).
    public var fullSegmentPayload: Int {
        advertisedMSS - (timestamps ? TCPConnection.timestampsOptionLength : 0)
    }

    /// Largest buffer a 14-bit window scale can advertise.
    static let largestWindow = Int(UInt16.max) << 14

    /// The initial receive buffer, clamped to what a 14-bit window scale can advertise.
    var effectiveReceiveBufferSize: Int { min(max(receiveBufferSize, 1), Self.largestWindow) }

    /// The auto-tuning cap, never below the initial buffer.
    var effectiveMaximumReceiveBufferSize: Int {
        min(max(maximumReceiveBufferSize, effectiveReceiveBufferSize), Self.largestWindow)
    }

    /// The smallest shift that lets the largest receive buffer be advertised (RFC 7323, at most 14).
    var receiveWindowShift: UInt8 {
        var shift: UInt8 = 0
        while shift < 14, Int(UInt16.max) << Int(shift) < effectiveMaximumReceiveBufferSize { shift += 1 }
        return shift
    }
}
