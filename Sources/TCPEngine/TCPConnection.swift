import DequeModule
import NIOCore
import TOUWire

/// A sans-IO TCP connection (RFC 9293): segments and instants in, segments, events and the next
/// deadline out. It knows nothing of DTLS, GUE, sockets or clocks.
///
/// - Options: MSS, window scale, SACK (RFC 2018, with D-SACK) and timestamps (RFC 7323: RTTM,
///   PAWS), each used only when both sides offer it.
/// - Loss recovery: a scoreboard of sent segments (RFC 6675 pipe), RACK-TLP (RFC 8985) as the
///   loss detector with SACK, NewReno (RFC 6582) with limited transmit (RFC 3042) without it;
///   spurious retransmissions are detected (timestamps, Eifel RFC 3522; D-SACK, RFC 3708) and
///   their window reduction undone.
/// - Congestion control behind `CongestionController` (NewReno or CUBIC, HyStart++), paced.
/// - Timers: RFC 6298 RTO with backoff and a retry limit, delayed ACK, Nagle, persist,
///   keepalive, TIME-WAIT.
///
/// The code is split by concern: this file holds the state and the application's side;
/// `+Input` takes segments in, `+Output` makes them, `+Recovery` finds and repairs losses,
/// `+Timers` fires deadlines.
///
/// ## Poll contract
/// Drive a connection from one place (it is a value, not thread safe):
/// 1. Feed it: `receive(_:now:)` for each segment that arrives, `handleTimeout(now:)` once
///    `nextDeadline` has passed, and `write`, `read`, `finishWriting`, `abort` as the application
///    asks. Any of these may create output.
/// 2. Then call `pollTransmit(now:)` until it returns nil and send what it returns, in order;
///    call `pollEvent()` until nil.
/// 3. Only then read `nextDeadline`: it is complete only after `pollTransmit` has returned nil,
///    since sending arms timers (retransmission, tail loss probe, pacing). Call
///    `handleTimeout(now:)` at or after it; calling early is harmless.
/// `now` must never go backwards between calls.
public struct TCPConnection {
    public internal(set) var state: TCPState
    public let localPort: UInt16
    public let remotePort: UInt16
    let configuration: TCPConfiguration
    /// Origin of the timestamp clock.
    let createdAt: NIODeadline

    // MARK: Send sequence space (RFC 9293 3.3.1)
    let iss: UInt32
    var sndUna: UInt32
    /// Highest sequence number sent, plus one (SND.NXT: retransmissions come from the scoreboard).
    var sndMax: UInt32
    /// The SYN (or SYN-ACK) is due.
    var synPending = true
    var synSentAt: NIODeadline?
    var synWasAcknowledged = false
    /// The peer's window, scaled, in bytes, and the largest it has offered.
    var sndWnd = 0
    var maxSndWnd = 0
    var sndWl1: UInt32 = 0
    var sndWl2: UInt32 = 0
    var sendShift = 0
    /// Room for payload and options in one segment: min(our MSS, the peer's MSS).
    var segmentSpace: Int
    /// Payload cap of our segments: `segmentSpace` less the timestamps option.
    var sendMSS: Int
    var sendBuffer = TCPSendBuffer()
    /// Sequence number of the first byte held in `sendBuffer`.
    var sendBufferSequence: UInt32
    var finQueued = false
    var finSequence: UInt32 = 0
    var writeBlocked = false

    // MARK: Receive sequence space
    var irs: UInt32 = 0
    var rcvNxt: UInt32 = 0
    var receiveShift = 0
    /// Right edge of the window last advertised; never moves left (RFC 9293 3.8.6.2.2).
    var advertisedEdge: UInt32 = 0
    var receiveBuffer = TCPReceiveBuffer()
    /// The receive buffer after auto-tuning (starts at the configured size).
    var receiveBufferLimit: Int
    var autotuneStart: NIODeadline?
    var autotuneMark = 0
    /// Bytes the application has read: receive auto-tuning measures the reader, not the sender.
    var bytesConsumed = 0
    /// A FIN that arrived ahead of a hole.
    var pendingPeerFin: UInt32?
    var offersWindowScale: Bool

    // MARK: Options
    var sackEnabled = false
    var timestampsEnabled = false
    let timestampOffset: UInt32
    /// TS.Recent and Last.ACK.sent of RFC 7323 4.3.
    var timestampRecent: UInt32 = 0
    var lastACKSent: UInt32 = 0
    /// SACK blocks to report, most recent first (RFC 2018 section 4).
    var sackHistory: [TCPSACKBlock] = []
    var pendingDSACK: TCPSACKBlock?
    /// An ACK carrying SACK information should go out even if data is also leaving.
    var sackInfoPending = false

    // MARK: Acknowledgment
    var ackNow = false
    var segmentsSinceACK = 0

    // MARK: Timers
    var timers = TCPTimerTable()
    var rtt: RTTEstimator
    /// RACK's and HyStart's minimum RTT: windowed (Linux: 300 s) and restarted when the path
    /// changes, so a path that got slower or a new one is seen.
    var minimumRTTFilter = WindowedMinimum(window: .seconds(300))
    var minimumRTT: TimeAmount? { minimumRTTFilter.value }
    var persistBackoff = 0
    var unansweredProbes = 0
    var consecutiveTimeouts = 0
    /// The RTOs that count toward the retry limit: not those into a closed window.
    var countedTimeouts = 0
    var synRetransmissions = 0
    /// Tail loss probe (RFC 8985 7): whether one is due; the SND.NXT it covered until it is
    /// judged, and whether it resent data (only then can it have repaired a loss).
    var probePending = false
    var probeEnd: UInt32?
    var probeRetransmitted = false
    var pacer = Pacer()
    /// When the last data segment (new or resent) went: what idle is measured from.
    var lastDataSentAt: NIODeadline?
    var lastHeardAt: NIODeadline
    var keepAliveProbesSent = 0
    var lastKeepAliveAt: NIODeadline?
    var challengeWindowStart: NIODeadline?
    var challengeACKsInWindow = 0
    var lastUnacceptableACKAt: NIODeadline?

    // MARK: Loss recovery and congestion control
    var scoreboard = TCPScoreboard()
    var congestion: AnyCongestionController
    /// How losses are found: chosen from SACK-permitted when the peer's SYN arrives.
    var lossRecovery = LossRecovery.newReno
    var recoveryPhase = RecoveryPhase.open
    var inRecovery: Bool { recoveryPhase == .fast }
    /// RFC 6582 "recover": SND.NXT when recovery (or the last RTO) began; meaningful only
    /// outside `.open` (so it never lags SND.UNA by half the sequence space).
    var recoveryPoint: UInt32
    var duplicateACKs = 0
    /// NewReno's window inflation by duplicate ACKs (and RFC 3042 limited transmit).
    var inflation = 0
    /// The first retransmission of a recovery goes out whatever the pipe says.
    var forceRetransmit = false
    /// RACK's reordering window multiplier (RFC 8985 6.2 step 4): raised once per round trip
    /// that brings a D-SACK (`dsackRound` is SND.NXT when that round began), back to 1 after
    /// `reorderingPersistence` recoveries without one.
    var reorderingMultiplier = 1
    var reorderingPersistence = 0
    var dsackRound: UInt32?
    /// Segments D-SACKed so far; more than were ever resent means the network duplicates.
    var dsackedSegments = 0
    /// Undo state of the last window reduction; nil once undone or judged.
    var episode: RecoveryEpisode?

    var controlQueue: Deque<TCPSegment> = []
    var events: Deque<TCPEvent> = []
    var readableEventPending = false
    var writableEventPending = false
    var counters = TCPStats()

    /// An extra bound on the window offered, for a receiver whose connections share one queue
    /// (a listener's UDP socket): their windows together should fit it, or they overflow it and
    /// lose packets. Lowering it never takes back window already offered. At least one MSS.
    public var receiveWindowCap: Int = .max

    static let defaultPeerMSS = 536
    static let minimumPeerMSS = 48
    static let controlQueueLimit = 8
    static let timestampsOptionLength = 12
    /// RFC 8985 7.2 WCDelAckT: the longest a peer may delay the ACK of a lone segment.
    static let worstCaseDelayedACK = TimeAmount.milliseconds(200)
    static let minimumProbeTimeout = TimeAmount.milliseconds(10)
    /// Linux's tcp_invalid_ratelimit: bare ACKs to unacceptable segments at most this often.
    static let unacceptableACKInterval = TimeAmount.milliseconds(500)
    /// RFC 5961 7: challenge ACKs per connection per second.
    static let challengeACKLimit = 10
    static let maximumReorderingMultiplier = 8
    /// RFC 8985 6.2: recoveries without a D-SACK before the reordering window shrinks back.
    static let reorderingPersistence = 16

    private init(
        state: TCPState, localPort: UInt16, remotePort: UInt16, configuration: TCPConfiguration,
        iss: UInt32, offersWindowScale: Bool, now: NIODeadline
    ) {
        self.state = state
        self.localPort = localPort
        self.remotePort = remotePort
        self.configuration = configuration
        self.createdAt = now
        self.lastHeardAt = now
        self.iss = iss
        self.sndUna = iss
        self.sndMax = iss
        self.recoveryPoint = iss
        self.sendBufferSequence = iss &+ 1
        self.segmentSpace = configuration.advertisedMSS
        self.sendMSS = configuration.advertisedMSS
        self.offersWindowScale = offersWindowScale
        self.receiveShift = offersWindowScale ? Int(configuration.receiveWindowShift) : 0
        self.receiveBufferLimit = configuration.effectiveReceiveBufferSize
        // RFC 7323 7.1: a per-connection random offset; the ISN is random, so mix it.
        self.timestampOffset = (iss ^ 0x5bd1_e995) &* 0x9E37_79B1
        self.rtt = RTTEstimator(
            initial: configuration.initialRTO, minimum: configuration.minimumRTO,
            maximum: configuration.maximumRTO)
        let mss = configuration.advertisedMSS
        self.congestion = AnyCongestionController(
            configuration.congestionControl, mss: mss, initialWindow: Self.initialWindow(mss: mss))
    }

    /// RFC 6928: min(10*MSS, max(2*MSS, 14600)).
    static func initialWindow(mss: Int) -> Int { min(10 * mss, max(2 * mss, 14600)) }

    /// Active open: the first `pollTransmit` yields the SYN.
    public static func connect(
        localPort: UInt16, remotePort: UInt16, configuration: TCPConfiguration,
        initialSequenceNumber: UInt32, now: NIODeadline
    ) -> TCPConnection {
        TCPConnection(
            state: .synSent, localPort: localPort, remotePort: remotePort,
            configuration: configuration, iss: initialSequenceNumber, offersWindowScale: true, now: now)
    }

    /// Passive open from a SYN received by a listener; nil unless it is a plain SYN.
    /// The first `pollTransmit` yields the SYN-ACK.
    public static func accept(
        syn: TCPSegment, configuration: TCPConfiguration, initialSequenceNumber: UInt32,
        now: NIODeadline
    ) -> TCPConnection? {
        guard syn.flags.contains(.syn), !syn.flags.contains(.ack), !syn.flags.contains(.rst),
            !syn.flags.contains(.fin)
        else { return nil }
        var connection = TCPConnection(
            state: .synReceived, localPort: syn.destinationPort, remotePort: syn.sourcePort,
            configuration: configuration, iss: initialSequenceNumber,
            offersWindowScale: syn.options.windowScale != nil, now: now)
        connection.counters.segmentsReceived = 1
        connection.learnPeerSYN(syn)
        // Fast open: the SYN's data is the stream's first bytes, readable at once; the SYN-ACK
        // acknowledges it. Otherwise it is ignored, and the peer sends it again.
        if configuration.fastOpen, syn.payload.readableBytes > 0 {
            let data = syn.payload.getSlice(at: syn.payload.readerIndex,
                                            length: min(syn.payload.readableBytes, configuration.receiveBufferSize))
                ?? ByteBuffer()
            connection.receiveBuffer.appendInOrder(data)
            connection.rcvNxt = connection.rcvNxt.seqAdvanced(by: data.readableBytes)
            connection.lastACKSent = connection.rcvNxt
            connection.advertisedEdge = connection.rcvNxt
            connection.counters.bytesReceived += data.readableBytes
            connection.signalReadable()
        }
        return connection
    }

    // MARK: - Application side

    public var sendBufferFreeSpace: Int {
        guard acceptsWrites else { return 0 }
        return max(0, configuration.sendBufferSize - sendBuffer.count)
    }

    private var acceptsWrites: Bool {
        guard !finQueued else { return false }
        switch state {
        case .synSent, .synReceived, .established, .closeWait: return true
        default: return false
        }
    }

    /// Queues bytes to send; returns how many were accepted (at most the free space).
    public mutating func write(_ data: ByteBuffer) -> Int {
        let accepted = min(sendBufferFreeSpace, data.readableBytes)
        if accepted < data.readableBytes { writeBlocked = true }
        guard accepted > 0 else { return 0 }
        var source = data
        if let taken = source.readSlice(length: accepted) { sendBuffer.append(taken) }
        return accepted
    }

    public var readableBytes: Int { receiveBuffer.readableBytes }

    /// An ACK is due now (not only on the delayed-ACK timer): `pollTransmit` will send one.
    public var acknowledgmentDue: Bool { ackNow }

    /// In-order data, up to `maximumBytes`. Reading reopens the receive window; an ACK announces it
    /// once it has grown by a meaningful amount.
    public mutating func read(maximumBytes: Int) -> ByteBuffer? {
        guard let data = receiveBuffer.read(maximumBytes: maximumBytes) else { return nil }
        bytesConsumed += data.readableBytes
        switch state {
        case .established, .finWait1, .finWait2:
            let growth = offerableReceiveSpace - currentReceiveWindow
            if growth >= min(receiveBufferLimit / 2, 2 * configuration.advertisedMSS) { ackNow = true }
        default:
            break
        }
        return data
    }

    /// Sends a FIN after everything already written (half-close); reading goes on.
    public mutating func finishWriting() {
        guard !finQueued else { return }
        switch state {
        case .synSent, .synReceived: break
        case .established: state = .finWait1
        case .closeWait: state = .lastAck
        default: return
        }
        finQueued = true
        finSequence = sendBufferSequence.seqAdvanced(by: sendBuffer.count)
    }

    /// The peer's address changed (migration or NAT rebinding): the minimum RTT measured on the
    /// old path says nothing about this one, so it restarts from the next sample.
    public mutating func pathChanged() {
        minimumRTTFilter.reset()
    }

    /// Resets the connection: a RST goes out (if the peer knows of us) and the state is CLOSED.
    public mutating func abort() {
        switch state {
        case .closed:
            return
        case .listen, .synSent:
            break
        default:
            enqueueControl(
                TCPSegment(
                    sourcePort: localPort, destinationPort: remotePort, sequenceNumber: sndMax,
                    acknowledgmentNumber: rcvNxt, flags: [.rst, .ack], window: 0))
        }
        close(.aborted)
    }

    /// Everything written (and the FIN, if queued) has been sent and acknowledged.
    public var isSendQueueEmptyAndAcknowledged: Bool {
        switch state {
        case .synSent, .synReceived: return false
        default: break
        }
        return sendBuffer.isEmpty && sndUna == sndMax && (!finQueued || finAcknowledged)
    }

    public var retransmissionTimeout: TimeAmount { rtt.rto }

    public var stats: TCPStats {
        var result = counters
        result.smoothedRTT = rtt.smoothed
        result.rttVariance = rtt.variance
        result.minimumRTT = minimumRTT
        result.rto = rtt.rto
        result.congestionWindow = congestion.congestionWindow
        result.slowStartThreshold = congestion.slowStartThreshold
        result.pacingRate = currentPacingRate.map { Int(min($0, Double(Int.max / 2))) }
        result.sendWindow = sndWnd
        result.receiveBufferSize = receiveBufferLimit
        result.outOfOrderBytesPruned = receiveBuffer.prunedBytes
        result.selectiveAcknowledgmentsEnabled = sackEnabled
        result.timestampsEnabled = timestampsEnabled
        return result
    }

    /// The scoreboard's bookkeeping and the send sequence space agree (for tests).
    var invariantViolation: String? {
        if sndMax.seqLT(sndUna) { return "SND.MAX before SND.UNA" }
        if let problem = scoreboard.invariantViolation(from: sndUna, to: sndMax) { return problem }
        if inflation < 0 { return "negative inflation" }
        return nil
    }

    /// Internal state for tests and diagnostics.
    var debugSummary: String {
        "una=\(sndUna &- iss) max=\(sndMax &- iss) pipe=\(scoreboard.pipe) lost=\(scoreboard.lostSegments) "
            + "sacked=\(scoreboard.sackedSegments)/\(scoreboard.segments.count) rec=\(recoveryPhase) "
            + "reo=\(scoreboard.reorderingSeen) rackEnd=\(scoreboard.rackEnd &- iss) wnd=\(sndWnd) "
            + "rto=\(String(describing: timers[.retransmission])) reoT=\(String(describing: timers[.reordering]))"
    }

    public mutating func pollEvent() -> TCPEvent? {
        guard let event = events.popFirst() else { return nil }
        switch event {
        case .readable: readableEventPending = false
        case .writable: writableEventPending = false
        default: break
        }
        return event
    }
}
