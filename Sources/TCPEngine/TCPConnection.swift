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
public struct TCPConnection {
    public private(set) var state: TCPState
    public let localPort: UInt16
    public let remotePort: UInt16
    private let configuration: TCPConfiguration
    /// Origin of the timestamp clock.
    private let createdAt: NIODeadline

    // MARK: Send sequence space (RFC 9293 3.3.1)
    private let iss: UInt32
    private var sndUna: UInt32
    /// Highest sequence number sent, plus one (SND.NXT: retransmissions come from the scoreboard).
    private var sndMax: UInt32
    /// The SYN (or SYN-ACK) is due.
    private var synPending = true
    private var synSentAt: NIODeadline?
    /// The peer's window, scaled, in bytes, and the largest it has offered.
    private var sndWnd = 0
    private var maxSndWnd = 0
    private var sndWl1: UInt32 = 0
    private var sndWl2: UInt32 = 0
    private var sendShift = 0
    /// Room for payload and options in one segment: min(our MSS, the peer's MSS).
    private var segmentSpace: Int
    /// Payload cap of our segments: `segmentSpace` less the timestamps option.
    private var sendMSS: Int
    private var sendBuffer = TCPSendBuffer()
    /// Sequence number of the first byte held in `sendBuffer`.
    private var sendBufferSequence: UInt32
    private var finQueued = false
    private var finSequence: UInt32 = 0
    private var writeBlocked = false

    // MARK: Receive sequence space
    private var irs: UInt32 = 0
    private var rcvNxt: UInt32 = 0
    private var receiveShift = 0
    /// Right edge of the window last advertised; never moves left (RFC 9293 3.8.6.2.2).
    private var advertisedEdge: UInt32 = 0
    private(set) var receiveBuffer = TCPReceiveBuffer()
    /// The receive buffer after auto-tuning (starts at the configured size).
    private var receiveBufferLimit: Int
    private var autotuneStart: NIODeadline?
    private var autotuneMark = 0
    /// A FIN that arrived ahead of a hole.
    private var pendingPeerFin: UInt32?
    private var offersWindowScale: Bool

    // MARK: Options
    private var sackEnabled = false
    private var timestampsEnabled = false
    private let timestampOffset: UInt32
    /// TS.Recent and Last.ACK.sent of RFC 7323 4.3.
    private var timestampRecent: UInt32 = 0
    private var lastACKSent: UInt32 = 0
    /// SACK blocks to report, most recent first (RFC 2018 section 4).
    private var sackHistory: [TCPSACKBlock] = []
    private var pendingDSACK: TCPSACKBlock?
    /// An ACK carrying SACK information should go out even if data is also leaving.
    private var sackInfoPending = false

    // MARK: Acknowledgment
    private var ackNow = false
    private var delayedACKDeadline: NIODeadline?
    private var segmentsSinceACK = 0

    // MARK: Timers
    private var rtt: RTTEstimator
    private var minimumRTT: TimeAmount?
    private var rtoDeadline: NIODeadline?
    private var persistDeadline: NIODeadline?
    private var persistBackoff = 0
    private var unansweredProbes = 0
    private var timeWaitDeadline: NIODeadline?
    private var consecutiveTimeouts = 0
    private var synRetransmissions = 0
    /// Tail loss probe (RFC 8985 7): when it fires, whether one is due, and the SND.NXT it covered.
    private var probeDeadline: NIODeadline?
    private var probePending = false
    private var probeEnd: UInt32?
    /// RACK's reordering timer.
    private var reorderDeadline: NIODeadline?
    private var pacingDeadline: NIODeadline?
    private var pacingTokens: Double = 0
    private var pacingUpdatedAt: NIODeadline?
    private var lastHeardAt: NIODeadline
    private var keepAliveProbesSent = 0
    private var lastKeepAliveAt: NIODeadline?
    private var challengeWindowStart: NIODeadline?
    private var challengeACKsInWindow = 0

    // MARK: Loss recovery and congestion control
    private var scoreboard = TCPScoreboard()
    private var congestion: AnyCongestionController
    private var inRecovery = false
    /// RFC 6582 "recover": SND.NXT when recovery (or the last RTO) began.
    private var recoveryPoint: UInt32
    private var duplicateACKs = 0
    /// NewReno's window inflation by duplicate ACKs (and RFC 3042 limited transmit).
    private var inflation = 0
    /// The first retransmission of a recovery goes out whatever the pipe says.
    private var forceRetransmit = false
    /// RACK's reordering window multiplier, raised by D-SACKs (RFC 8985 6.2).
    private var reorderingMultiplier = 1
    /// Undo state for the last window reduction: the controller before it, the timestamp of
    /// the episode's first retransmission (Eifel), and its retransmission and D-SACK counts.
    private var undoController: AnyCongestionController?
    private var undoRetransmitTimestamp: UInt32?
    /// End of the episode's first retransmission: only an ACK covering it can judge it.
    private var undoRetransmitEnd: UInt32 = 0
    /// Timestamp of a tail loss probe that resent data (RFC 8985 7.4 loss detection).
    private var probeTimestamp: UInt32?
    private var eifelPending = false
    private var episodeRetransmissions = 0
    private var episodeDSACKs = 0
    private var episodeStart: UInt32 = 0
    private var episodeEnd: UInt32 = 0

    private var controlQueue: Deque<TCPSegment> = []
    private var events: Deque<TCPEvent> = []
    private var readableEventPending = false
    private var writableEventPending = false
    private var counters = TCPStats()

    private static let defaultPeerMSS = 536
    private static let controlQueueLimit = 8
    private static let timestampsOptionLength = 12
    /// RFC 8985 7.2 WCDelAckT: the longest a peer may delay the ACK of a lone segment.
    private static let worstCaseDelayedACK = TimeAmount.milliseconds(200)
    private static let minimumProbeTimeout = TimeAmount.milliseconds(10)
    /// RFC 5961 7: challenge ACKs per connection per second.
    private static let challengeACKLimit = 10

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
    private static func initialWindow(mss: Int) -> Int { min(10 * mss, max(2 * mss, 14600)) }

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

    /// In-order data, up to `maximumBytes`. Reading reopens the receive window; an ACK announces it
    /// once it has grown by a meaningful amount.
    public mutating func read(maximumBytes: Int) -> ByteBuffer? {
        guard let data = receiveBuffer.read(maximumBytes: maximumBytes) else { return nil }
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
            + "sacked=\(scoreboard.sackedSegments)/\(scoreboard.segments.count) rec=\(inRecovery) "
            + "reo=\(scoreboard.reorderingSeen) rackEnd=\(scoreboard.rackEnd &- iss) wnd=\(sndWnd) rto=\(String(describing: rtoDeadline)) reoT=\(String(describing: reorderDeadline))"
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

    // MARK: - Timers

    public var nextDeadline: NIODeadline? {
        // No array literal here: this runs after every event and should not allocate.
        func earlier(_ a: NIODeadline?, _ b: NIODeadline?) -> NIODeadline? {
            guard let a else { return b }
            guard let b else { return a }
            return min(a, b)
        }
        let retransmission = earlier(earlier(rtoDeadline, probeDeadline), reorderDeadline)
        let other = earlier(earlier(persistDeadline, delayedACKDeadline), timeWaitDeadline)
        return earlier(earlier(retransmission, other), earlier(pacingDeadline, keepAliveDeadline))
    }

    public mutating func handleTimeout(now: NIODeadline) {
        if let deadline = timeWaitDeadline, deadline <= now {
            timeWaitDeadline = nil
            close(.normal)
            return
        }
        if let deadline = delayedACKDeadline, deadline <= now {
            delayedACKDeadline = nil
            ackNow = true
        }
        if let deadline = pacingDeadline, deadline <= now {
            pacingDeadline = nil
        }
        if let deadline = rtoDeadline, deadline <= now {
            rtoDeadline = nil
            retransmissionTimerExpired(now: now)
            if state == .closed { return }
        }
        if let deadline = probeDeadline, deadline <= now {
            probeDeadline = nil
            probeTimerExpired(now: now)
        }
        if let deadline = reorderDeadline, deadline <= now {
            reorderDeadline = nil
            detectLosses(now: now)
        }
        if let deadline = persistDeadline, deadline <= now {
            persistDeadline = nil
            persistTimerExpired(now: now)
            if state == .closed { return }
        }
        if let deadline = keepAliveDeadline, deadline <= now {
            keepAliveTimerExpired(now: now)
        }
    }

    private mutating func retransmissionTimerExpired(now: NIODeadline) {
        counters.rtoExpiries += 1
        rtt.backOff()
        switch state {
        case .synSent, .synReceived:
            synRetransmissions += 1
            if synRetransmissions > configuration.synRetries {
                close(.timedOut)
            } else {
                synPending = true
            }
            return
        case .closed, .listen, .timeWait, .finWait2:
            return
        default:
            break
        }
        guard !scoreboard.isEmpty else { return }
        consecutiveTimeouts += 1
        if consecutiveTimeouts > configuration.maximumRetransmissions {
            close(.timedOut)
            return
        }
        // The first timeout of an episode can be undone if it proves spurious; later ones extend it.
        if consecutiveTimeouts == 1, !inRecovery { beginEpisode() }
        // RFC 5681 (4) / RFC 8985 6.3: loss window of one segment, everything unSACKed is lost,
        // and (RFC 6582) no fast recovery for losses from before the timeout.
        congestion.onRetransmissionTimeout(now: now, bytesInFlight: flightSize)
        scoreboard.markAllLost()
        inRecovery = false
        recoveryPoint = sndMax
        duplicateACKs = 0
        inflation = 0
        forceRetransmit = true
        probeDeadline = nil
        probePending = false
        probeEnd = nil
        probeTimestamp = nil
        reorderDeadline = nil
    }

    /// RFC 8985 7.3: send one new segment if the window allows, else resend the last one, so
    /// that a loss at the tail shows up as a SACK instead of waiting for the RTO.
    private mutating func probeTimerExpired(now: NIODeadline) {
        guard !scoreboard.isEmpty, !inRecovery, probeEnd == nil else { return }
        probePending = true
        rtoDeadline = now + rtt.rto
    }

    private mutating func armTailLossProbe(now: NIODeadline) {
        guard sackEnabled, !inRecovery, probeEnd == nil, consecutiveTimeouts == 0,
            let srtt = rtt.smoothed, let last = scoreboard.last
        else {
            probeDeadline = nil
            return
        }
        switch state {
        case .established, .closeWait, .finWait1, .closing, .lastAck: break
        default:
            probeDeadline = nil
            return
        }
        var timeout = srtt + srtt
        if scoreboard.segments.count == 1 || last.start == sndUna { timeout = timeout + Self.worstCaseDelayedACK }
        timeout = max(timeout, Self.minimumProbeTimeout)
        let deadline = now + timeout
        if let rto = rtoDeadline, deadline >= rto {
            probeDeadline = nil
        } else {
            probeDeadline = deadline
        }
    }

    /// A zero-window probe: an ACK carrying SND.UNA-1, which the peer must answer with its
    /// window without it consuming sequence space (as Linux does).
    private mutating func persistTimerExpired(now: NIODeadline) {
        unansweredProbes += 1
        if unansweredProbes > configuration.maximumRetransmissions {
            close(.timedOut)
            return
        }
        persistBackoff += 1
        enqueueControl(makeSegment(sequence: sndUna &- 1, flags: .ack, now: now))
    }

    private var persistInterval: TimeAmount {
        var interval = rtt.rto
        for _ in 0..<min(persistBackoff, 16) {
            interval = interval + interval
            if interval >= configuration.maximumRTO { return configuration.maximumRTO }
        }
        return interval
    }

    private mutating func updatePersistTimer(now: NIODeadline) {
        let waitingForWindow: Bool
        switch state {
        case .established, .closeWait, .finWait1, .closing, .lastAck:
            waitingForWindow = sndWnd == 0 && sndMax == sndUna && sndMax.seqLT(sendLimit)
        default:
            waitingForWindow = false
        }
        if waitingForWindow {
            if persistDeadline == nil { persistDeadline = now + persistInterval }
        } else {
            persistDeadline = nil
        }
    }

    /// Keepalive runs only on an idle, synchronized connection with nothing in flight.
    private var keepAliveDeadline: NIODeadline? {
        guard let keepAlive = configuration.keepAlive, scoreboard.isEmpty else { return nil }
        switch state {
        case .established, .closeWait, .finWait2: break
        default: return nil
        }
        if keepAliveProbesSent == 0 { return lastHeardAt + keepAlive.idle }
        return (lastKeepAliveAt ?? lastHeardAt) + keepAlive.interval
    }

    private mutating func keepAliveTimerExpired(now: NIODeadline) {
        guard let keepAlive = configuration.keepAlive else { return }
        if keepAliveProbesSent >= keepAlive.count {
            close(.timedOut)
            return
        }
        keepAliveProbesSent += 1
        lastKeepAliveAt = now
        // Like a zero-window probe: SND.UNA-1 forces an ACK without consuming sequence space.
        enqueueControl(makeSegment(sequence: sndUna &- 1, flags: .ack, now: now))
    }

    // MARK: - Pacing

    private var currentPacingRate: Double? {
        guard configuration.pacing, let srtt = rtt.smoothed else { return nil }
        return congestion.pacingRate(smoothedRTT: srtt)
    }

    /// A token bucket: the pacer lets a small burst (about a millisecond of data, at least two
    /// segments) go per wakeup, so a window is spread over the RTT without a timer per segment.
    private mutating func pacingAllows(now: NIODeadline) -> Bool {
        guard let rate = currentPacingRate, rate > 0 else { return true }
        let burst = max(2 * Double(segmentSpace), rate / 1000)
        if let last = pacingUpdatedAt {
            let elapsed = Double(max(0, (now - last).nanoseconds)) / 1e9
            pacingTokens = min(burst, pacingTokens + elapsed * rate)
        } else {
            pacingTokens = burst
        }
        pacingUpdatedAt = now
        if pacingTokens > 0 { return true }
        // Clamped in floating point: converting an out-of-range Double to Int64 would trap.
        let wait = min((-pacingTokens + 1) / rate * 1e9 + 1, 1e9)
        pacingDeadline = now + .nanoseconds(Int64(max(wait, 1)))
        return false
    }

    private mutating func consumePacing(_ bytes: Int) {
        if currentPacingRate != nil { pacingTokens -= Double(bytes) }
    }

    // MARK: - Output

    /// The next segment to send, or nil when there is nothing (call until nil).
    public mutating func pollTransmit(now: NIODeadline) -> TCPSegment? {
        let segment = nextSegment(now: now)
        if segment != nil { counters.segmentsSent += 1 }
        return segment
    }

    private mutating func nextSegment(now: NIODeadline) -> TCPSegment? {
        if let control = controlQueue.popFirst() { return control }
        switch state {
        case .closed, .listen:
            return nil
        case .synSent:
            return synPending ? sendSYN(now: now) : nil
        case .synReceived:
            if synPending { return sendSYN(now: now) }
            return ackNow ? makeSegment(sequence: sndMax, flags: .ack, now: now) : nil
        case .timeWait, .finWait2:
            // Nothing left to send but acknowledgments (a retransmitted FIN in TIME-WAIT).
            return ackNow ? makeSegment(sequence: sndMax, flags: .ack, now: now) : nil
        default:
            break
        }
        // SACK news goes out on its own ACK: a full data segment has no room for the blocks.
        if ackNow, sackInfoPending { return makeSegment(sequence: sndMax, flags: .ack, now: now) }
        if probePending, let segment = sendProbe(now: now) { return segment }
        if let segment = sendRetransmission(now: now) { return segment }
        // Lost segments go first (RFC 6675 NextSeg); new data waits behind them.
        if scoreboard.lostSegments == 0, let segment = sendNewData(now: now, probe: false) {
            return segment
        }
        if ackNow { return makeSegment(sequence: sndMax, flags: .ack, now: now) }
        updatePersistTimer(now: now)
        return nil
    }

    /// Sequence number after the last byte we have to send, FIN included.
    private var sendLimit: UInt32 {
        let dataEnd = sendBufferSequence.seqAdvanced(by: sendBuffer.count)
        return finQueued ? dataEnd &+ 1 : dataEnd
    }

    private var flightSize: Int { sndMax.seqDistance(from: sndUna) }

    private var finAcknowledged: Bool { finQueued && sndUna.seqGT(finSequence) }

    /// The window the pipe may fill: cwnd plus NewReno's inflation.
    private var sendableWindow: Int { congestion.congestionWindow + inflation }

    private mutating func sendSYN(now: NIODeadline) -> TCPSegment {
        synPending = false
        if sndMax != iss {
            counters.retransmissions += 1
        } else {
            synSentAt = now
        }
        var options = TCPOptions(maximumSegmentSize: UInt16(configuration.advertisedMSS))
        if offersWindowScale { options.windowScale = UInt8(receiveShift) }
        if state == .synSent {
            options.sackPermitted = configuration.selectiveAcknowledgments
            if configuration.timestamps {
                options.timestamps = TCPTimestamps(value: timestampNow(now), echoReply: 0)
            }
        } else {
            options.sackPermitted = sackEnabled  // timestamps are added by makeSegment
        }
        let flags: TCPFlags = state == .synSent ? .syn : [.syn, .ack]
        let segment = makeSegment(sequence: iss, flags: flags, options: options, now: now)
        sndMax = iss &+ 1
        if rtoDeadline == nil { rtoDeadline = now + rtt.rto }
        return segment
    }

    private mutating func sendNewData(now: NIODeadline, probe: Bool) -> TCPSegment? {
        let dataEnd = sendBufferSequence.seqAdvanced(by: sendBuffer.count)
        guard sndMax.seqLT(sendLimit) else { return nil }
        let unsent = max(0, dataEnd.seqDistance(from: sndMax))
        let outstanding = flightSize
        let windowRoom = max(0, sndWnd - outstanding)
        let congestionRoom = probe ? Int.max : sendableWindow - scoreboard.pipe
        var length = min(sendMSS, unsent)
        // The congestion window counts whole segments; an empty pipe may always send one.
        if length > congestionRoom, scoreboard.pipe > 0 { return nil }
        if length > windowRoom {
            // Sender-side silly window avoidance (RFC 9293 3.8.6.2.1): a partial segment only
            // when it is at least half the largest window offered, or when nothing is in flight
            // (a small window is all there is; the persist timer covers a closed one).
            guard windowRoom > 0, outstanding == 0 || 2 * windowRoom >= maxSndWnd else { return nil }
            length = windowRoom
        }
        // Nagle: one small segment in flight at a time, unless a FIN follows it anyway.
        if !configuration.noDelay, !probe, length < sendMSS, length == unsent, outstanding > 0,
            !finQueued, length > 0
        {
            return nil
        }
        let fin = finQueued && length == unsent && min(windowRoom, max(congestionRoom, 1)) > length
        guard length > 0 || fin else { return nil }
        if !probe, !pacingAllows(now: now) { return nil }

        let payload = sendBuffer.slice(offset: sndMax.seqDistance(from: sendBufferSequence), length: length)
        var flags: TCPFlags = .ack
        if fin { flags.insert(.fin) }
        if length > 0, length == unsent { flags.insert(.psh) }
        let start = sndMax
        let end = start.seqAdvanced(by: length + (fin ? 1 : 0))
        counters.bytesSent += length
        scoreboard.recordTransmission(start: start, end: end, fin: fin, now: now)
        consumePacing(length)
        let segment = makeSegment(sequence: start, flags: flags, payload: payload, now: now)
        sndMax = end
        if rtoDeadline == nil { rtoDeadline = now + rtt.rto }
        persistDeadline = nil
        if probeDeadline == nil { armTailLossProbe(now: now) }
        return segment
    }

    /// Resends the lowest segment deemed lost, if the pipe has room (RFC 6675 NextSeg rule 1).
    private mutating func sendRetransmission(now: NIODeadline) -> TCPSegment? {
        guard let index = scoreboard.nextLostIndex() else {
            forceRetransmit = false
            return nil
        }
        let entry = scoreboard.segments[index]
        if !forceRetransmit, scoreboard.pipe > 0, scoreboard.pipe + entry.length > sendableWindow {
            return nil
        }
        if !forceRetransmit, !pacingAllows(now: now) { return nil }
        forceRetransmit = false
        consumePacing(entry.payloadLength)
        return retransmit(at: index, now: now)
    }

    private mutating func retransmit(at index: Int, now: NIODeadline) -> TCPSegment {
        let entry = scoreboard.segments[index]
        let payload = sendBuffer.slice(
            offset: entry.start.seqDistance(from: sendBufferSequence), length: entry.payloadLength)
        var flags: TCPFlags = .ack
        if entry.fin { flags.insert(.fin) }
        let dataEnd = sendBufferSequence.seqAdvanced(by: sendBuffer.count)
        if entry.payloadLength > 0, entry.start.seqAdvanced(by: entry.payloadLength) == dataEnd {
            flags.insert(.psh)
        }
        scoreboard.recordRetransmission(at: index, now: now)
        counters.retransmissions += 1
        if undoController != nil {
            episodeRetransmissions += 1
            if undoRetransmitTimestamp == nil {
                undoRetransmitTimestamp = timestampNow(now)
                undoRetransmitEnd = entry.end
            }
        }
        if rtoDeadline == nil { rtoDeadline = now + rtt.rto }
        return makeSegment(sequence: entry.start, flags: flags, payload: payload, now: now)
    }

    private mutating func sendProbe(now: NIODeadline) -> TCPSegment? {
        probePending = false
        guard !scoreboard.isEmpty else { return nil }
        let segment: TCPSegment?
        if let fresh = sendNewData(now: now, probe: true) {
            segment = fresh
        } else if let index = scoreboard.lastUnsackedIndex() {
            segment = retransmit(at: index, now: now)
            if timestampsEnabled { probeTimestamp = timestampNow(now) }
        } else {
            segment = nil
        }
        if segment != nil {
            counters.tailLossProbes += 1
            probeEnd = sndMax
            probeDeadline = nil
        }
        return segment
    }

    /// Builds a segment from this connection, filling in ACK, window, timestamps and SACK
    /// blocks; sending an ACK settles any pending acknowledgment.
    private mutating func makeSegment(
        sequence: UInt32, flags: TCPFlags, options: TCPOptions = TCPOptions(),
        payload: ByteBuffer = ByteBuffer(), now: NIODeadline
    ) -> TCPSegment {
        let window = windowField(forSYN: flags.contains(.syn))
        var options = options
        if timestampsEnabled, !flags.contains(.rst) {
            options.timestamps = TCPTimestamps(value: timestampNow(now), echoReply: timestampRecent)
        }
        if flags.contains(.ack) {
            ackNow = false
            delayedACKDeadline = nil
            segmentsSinceACK = 0
            lastACKSent = rcvNxt
            if sackEnabled, !flags.contains(.syn) {
                addSACKBlocks(to: &options, payloadLength: payload.readableBytes)
            }
        }
        return TCPSegment(
            sourcePort: localPort, destinationPort: remotePort, sequenceNumber: sequence,
            acknowledgmentNumber: flags.contains(.ack) ? rcvNxt : 0, flags: flags,
            window: window, options: options, payload: payload)
    }

    /// RFC 2018 4: a D-SACK first, then the block holding the latest arrival, then the others
    /// most recent first, as many as fit beside the payload.
    private mutating func addSACKBlocks(to options: inout TCPOptions, payloadLength: Int) {
        sackHistory.removeAll { $0.right.seqLE(rcvNxt) }
        sackInfoPending = false
        guard pendingDSACK != nil || !sackHistory.isEmpty else { return }
        let room = segmentSpace - payloadLength - (options.timestamps == nil ? 0 : Self.timestampsOptionLength)
        let fitting = min(options.timestamps == nil ? 4 : 3, (room - 4) / 8)
        guard fitting > 0 else { return }
        var blocks: [TCPSACKBlock] = []
        blocks.reserveCapacity(fitting)
        if let dsack = pendingDSACK {
            blocks.append(dsack)
            pendingDSACK = nil
        }
        for block in sackHistory where blocks.count < fitting {
            blocks.append(TCPSACKBlock(left: block.left.seqGT(rcvNxt) ? block.left : rcvNxt, right: block.right))
        }
        counters.sackBlocksSent += blocks.count
        options.sackBlocks = blocks
    }

    /// The RFC 7323 timestamp clock: milliseconds since the connection began, plus an offset.
    private func timestampNow(_ now: NIODeadline) -> UInt32 {
        let milliseconds = max(0, (now - createdAt).nanoseconds / 1_000_000)
        return timestampOffset &+ UInt32(truncatingIfNeeded: milliseconds)
    }

    /// The timestamp value a segment sent at `now` carries (for tests).
    func timestampValue(at now: NIODeadline) -> UInt32 { timestampNow(now) }

    private var availableReceiveSpace: Int { max(0, receiveBufferLimit - receiveBuffer.readableBytes) }

    /// An extra bound on the window offered, for a receiver whose connections share one queue
    /// (a listener's UDP socket): their windows together should fit it, or they overflow it and
    /// lose packets. Lowering it never takes back window already offered. At least one MSS.
    public var receiveWindowCap: Int = .max

    /// What the next window may offer: buffer space, within the shared cap.
    private var offerableReceiveSpace: Int {
        min(availableReceiveSpace, max(receiveWindowCap, configuration.advertisedMSS))
    }

    /// The window currently offered: from RCV.NXT to the advertised right edge.
    private var currentReceiveWindow: Int { max(0, advertisedEdge.seqDistance(from: rcvNxt)) }

    private mutating func windowField(forSYN: Bool) -> UInt16 {
        if forSYN {
            // RFC 7323: the window in a SYN is never scaled.
            let window = min(offerableReceiveSpace, Int(UInt16.max))
            if state != .synSent { raiseAdvertisedEdge(to: rcvNxt.seqAdvanced(by: window)) }
            return UInt16(window)
        }
        let current = currentReceiveWindow
        var window = min(offerableReceiveSpace, Int(UInt16.max) << receiveShift)
        // Receiver silly window avoidance: only move the edge right by a useful amount.
        if window > current, window - current < min(receiveBufferLimit / 2, configuration.advertisedMSS) {
            window = current
        }
        window = max(window, current)
        var field = window >> receiveShift
        if field << receiveShift < current {
            field = (current + (1 << receiveShift) - 1) >> receiveShift
        }
        field = min(field, Int(UInt16.max))
        raiseAdvertisedEdge(to: rcvNxt.seqAdvanced(by: field << receiveShift))
        return UInt16(field)
    }

    private mutating func raiseAdvertisedEdge(to edge: UInt32) {
        if edge.seqGT(advertisedEdge) { advertisedEdge = edge }
    }

    private mutating func enqueueControl(_ segment: TCPSegment) {
        // Bounded: a flood of bad segments must not grow memory.
        if controlQueue.count < Self.controlQueueLimit { controlQueue.append(segment) }
    }

    /// RFC 5961 7: challenge ACKs, rate limited so an attacker cannot turn us into a reflector.
    private mutating func challengeACK(now: NIODeadline) {
        if let start = challengeWindowStart, now - start < .seconds(1) {
            guard challengeACKsInWindow < Self.challengeACKLimit else { return }
        } else {
            challengeWindowStart = now
            challengeACKsInWindow = 0
        }
        challengeACKsInWindow += 1
        counters.challengeACKs += 1
        ackNow = true
    }

    /// RFC 9293 reset generation for a segment that does not belong to a connection.
    private mutating func replyWithReset(to segment: TCPSegment) {
        guard !segment.flags.contains(.rst) else { return }
        if segment.flags.contains(.ack) {
            enqueueControl(
                TCPSegment(
                    sourcePort: localPort, destinationPort: remotePort,
                    sequenceNumber: segment.acknowledgmentNumber, flags: .rst, window: 0))
        } else {
            enqueueControl(
                TCPSegment(
                    sourcePort: localPort, destinationPort: remotePort, sequenceNumber: 0,
                    acknowledgmentNumber: segment.sequenceNumber.seqAdvanced(by: segment.sequenceLength),
                    flags: [.rst, .ack], window: 0))
        }
    }

    // MARK: - Input

    public mutating func receive(_ segment: TCPSegment, now: NIODeadline) {
        counters.segmentsReceived += 1
        guard segment.destinationPort == localPort, segment.sourcePort == remotePort else { return }
        switch state {
        case .closed, .listen:
            replyWithReset(to: segment)
        case .synSent:
            receiveInSynSent(segment, now: now)
        default:
            receiveSynchronized(segment, now: now)
        }
        if state != .closed { updatePersistTimer(now: now) }
    }

    /// Options of the peer's SYN: its MSS caps our segments; window scaling, SACK and
    /// timestamps only if both sides offer them.
    private mutating func learnPeerSYN(_ syn: TCPSegment) {
        irs = syn.sequenceNumber
        rcvNxt = irs &+ 1
        lastACKSent = rcvNxt
        let peerMSS = syn.options.maximumSegmentSize.map(Int.init) ?? Self.defaultPeerMSS
        if offersWindowScale, let shift = syn.options.windowScale {
            sendShift = Int(min(shift, 14))
            receiveShift = Int(configuration.receiveWindowShift)
        } else {
            sendShift = 0
            receiveShift = 0
        }
        sackEnabled = configuration.selectiveAcknowledgments && syn.options.sackPermitted
        if configuration.timestamps, let timestamps = syn.options.timestamps {
            timestampsEnabled = true
            timestampRecent = timestamps.value
        } else {
            timestampsEnabled = false
        }
        segmentSpace = max(1, min(configuration.advertisedMSS, peerMSS))
        // Timestamps ride on every segment, so they come out of the payload (RFC 7323 / 6691).
        let optionBytes = timestampsEnabled ? Self.timestampsOptionLength : 0
        sendMSS = max(1, segmentSpace - optionBytes)
        congestion = AnyCongestionController(
            configuration.congestionControl, mss: sendMSS, initialWindow: Self.initialWindow(mss: sendMSS))
        sndWnd = Int(syn.window)
        maxSndWnd = sndWnd
        sndWl1 = syn.sequenceNumber
        advertisedEdge = rcvNxt
    }

    private mutating func receiveInSynSent(_ segment: TCPSegment, now: NIODeadline) {
        let flags = segment.flags
        let ack = segment.acknowledgmentNumber
        if flags.contains(.ack), ack.seqLE(iss) || ack.seqGT(sndMax) {
            replyWithReset(to: segment)
            return
        }
        if flags.contains(.rst) {
            if flags.contains(.ack) { close(.reset) }
            return
        }
        guard flags.contains(.syn) else { return }
        learnPeerSYN(segment)
        lastHeardAt = now
        raiseAdvertisedEdge(to: rcvNxt.seqAdvanced(by: min(offerableReceiveSpace, Int(UInt16.max))))
        if flags.contains(.ack) {
            sndWl2 = ack
            acknowledge(upTo: ack, segment: segment, now: now)
            ackNow = true
            enterEstablished()
        } else {
            // Simultaneous open (RFC 9293 figure 8): answer with a SYN-ACK.
            state = .synReceived
            synPending = true
        }
    }

    private mutating func enterEstablished() {
        state = finQueued ? .finWait1 : .established
        events.append(.connected)
    }

    private mutating func receiveSynchronized(_ segment: TCPSegment, now: NIODeadline) {
        let flags = segment.flags
        let sequence = segment.sequenceNumber
        let length = segment.sequenceLength

        if state == .synReceived, flags.contains(.syn), sequence == irs {
            if flags.contains(.ack), segment.acknowledgmentNumber.seqGT(sndUna),
                segment.acknowledgmentNumber.seqLE(sndMax)
            {
                // Simultaneous open: the peer's SYN-ACK answers our SYN.
                sndWnd = Int(segment.window) << sendShift
                maxSndWnd = max(maxSndWnd, sndWnd)
                sndWl1 = sequence
                sndWl2 = segment.acknowledgmentNumber
                acknowledge(upTo: segment.acknowledgmentNumber, segment: segment, now: now)
                ackNow = true
                enterEstablished()
            } else if !flags.contains(.ack) {
                // Our SYN-ACK was lost and the peer sent its SYN again.
                synPending = true
            }
            return
        }

        // PAWS (RFC 7323 5.3): an older timestamp than the last in-order one is an old duplicate.
        if timestampsEnabled, !flags.contains(.rst), let timestamps = segment.options.timestamps,
            timestamps.value.seqLT(timestampRecent)
        {
            counters.pawsRejected += 1
            ackNow = true
            return
        }

        guard isAcceptable(segment) else {
            if !flags.contains(.rst) {
                ackNow = true
                if sackEnabled, segment.payload.readableBytes > 0,
                    sequence.seqAdvanced(by: segment.payload.readableBytes).seqLE(rcvNxt)
                {
                    // A duplicate: tell the sender with a D-SACK (RFC 2883).
                    pendingDSACK = TCPSACKBlock(
                        left: sequence, right: sequence.seqAdvanced(by: segment.payload.readableBytes))
                    sackInfoPending = true
                }
                if state == .timeWait, flags.contains(.fin) {
                    // A retransmitted FIN: re-ACK it and restart 2*MSL (RFC 9293).
                    timeWaitDeadline = now + configuration.timeWaitDuration
                }
            }
            return
        }
        lastHeardAt = now
        keepAliveProbesSent = 0
        if timestampsEnabled, let timestamps = segment.options.timestamps, sequence.seqLE(lastACKSent),
            timestamps.value.seqGE(timestampRecent)
        {
            timestampRecent = timestamps.value
        }

        if flags.contains(.rst) {
            // RFC 1337: in TIME-WAIT both directions have finished; a RST (say, a peer that already
            // closed answering our re-ACK) must not turn that clean close into an error.
            if state == .timeWait { return }
            // RFC 5961 3: only an exact RST resets; one merely in the window earns a challenge ACK.
            guard sequence == rcvNxt else {
                challengeACK(now: now)
                return
            }
            // RFC 9293 3.10.7.4: in CLOSING and LAST-ACK a RST ends the connection without an error
            // report. Only when nothing but our FIN is unacknowledged, though: the peer then holds
            // all our data, and otherwise the application must hear that some was lost.
            let finishing = state == .closing || state == .lastAck
            close(finishing && sndUna.seqAdvanced(by: 1) == sndMax ? .normal : .reset)
            return
        }
        if flags.contains(.syn) {
            challengeACK(now: now)  // RFC 5961 4
            return
        }
        guard flags.contains(.ack) else { return }
        let ack = segment.acknowledgmentNumber

        if state == .synReceived {
            guard ack.seqGT(sndUna), ack.seqLE(sndMax) else {
                replyWithReset(to: segment)
                return
            }
            sndWnd = Int(segment.window) << sendShift
            maxSndWnd = max(maxSndWnd, sndWnd)
            sndWl1 = sequence
            sndWl2 = ack
            enterEstablished()
        }

        // RFC 5961 5.2: an ACK for data never sent, or older than any window could explain,
        // is answered with a challenge ACK and the segment dropped.
        if ack.seqGT(sndMax) || ack.seqLT(sndUna.seqAdvanced(by: -max(maxSndWnd, 1))) {
            challengeACK(now: now)
            return
        }
        if ack.seqGE(sndUna) {
            processACK(segment, ack: ack, now: now)
            if state == .closed { return }
        }

        if length > 0 {
            switch state {
            case .established, .finWait1, .finWait2:
                processData(segment, now: now)
            default:
                break  // the peer's FIN already arrived: nothing more may follow it
            }
        }
    }

    /// RFC 9293 3.10.7.4 acceptability, against the window we advertised.
    private func isAcceptable(_ segment: TCPSegment) -> Bool {
        let sequence = segment.sequenceNumber
        let length = segment.sequenceLength
        let window = currentReceiveWindow
        func inWindow(_ value: UInt32) -> Bool {
            value.seqGE(rcvNxt) && value.seqLT(rcvNxt.seqAdvanced(by: window))
        }
        if length == 0 {
            return window == 0 ? sequence == rcvNxt : inWindow(sequence)
        }
        if window == 0 {
            // A bare FIN needs no buffer space; take it even into a closed window.
            return sequence == rcvNxt && segment.payload.readableBytes == 0
                && segment.flags.contains(.fin)
        }
        return inWindow(sequence) || inWindow(sequence.seqAdvanced(by: length - 1))
    }

    private mutating func processACK(_ segment: TCPSegment, ack: UInt32, now: NIODeadline) {
        let sequence = segment.sequenceNumber
        var windowChanged = false
        if sndWl1.seqLT(sequence) || (sndWl1 == sequence && sndWl2.seqLE(ack)) {
            let window = Int(segment.window) << sendShift
            windowChanged = window != sndWnd
            sndWnd = window
            maxSndWnd = max(maxSndWnd, window)
            sndWl1 = sequence
            sndWl2 = ack
        }
        unansweredProbes = 0
        if sndWnd > 0 {
            persistBackoff = 0
            persistDeadline = nil
        }
        let advanced = ack.seqGT(sndUna)
        if advanced {
            acknowledge(upTo: ack, segment: segment, now: now)
            if state == .closed { return }
        }
        var sacked = 0
        if sackEnabled, !segment.options.sackBlocks.isEmpty {
            sacked = processSACKBlocks(segment.options.sackBlocks, ack: ack, now: now)
        }
        if sackEnabled {
            if sacked > 0 || advanced || inRecovery { detectLosses(now: now) }
            if advanced || sacked > 0 { armTailLossProbe(now: now) }
            return
        }
        if advanced { return }
        // RFC 5681 duplicate ACK: nothing new, no data, same window, data outstanding.
        guard segment.payload.readableBytes == 0, !segment.flags.contains(.fin), !windowChanged,
            flightSize > 0, sndWnd > 0
        else { return }
        duplicateACKs += 1
        if inRecovery {
            inflation += sendMSS
        } else if duplicateACKs < 3 {
            // RFC 3042 limited transmit: a new segment for each of the first two.
            inflation = duplicateACKs * sendMSS
        } else if duplicateACKs == 3, ack.seqGE(recoveryPoint) {
            inflation = 0
            scoreboard.markLost(at: 0)
            enterRecovery(now: now)
            inflation = 3 * sendMSS
        }
    }

    /// Applies SACK blocks to the scoreboard; returns bytes newly SACKed.
    private mutating func processSACKBlocks(_ blocks: [TCPSACKBlock], ack: UInt32, now: NIODeadline) -> Int {
        counters.sackBlocksReceived += blocks.count
        var newly = 0
        for (index, block) in blocks.enumerated() {
            guard block.left.seqLT(block.right) else { continue }
            if index == 0 {
                let belowACK = block.right.seqLE(ack)
                let insideSecond = blocks.count > 1 && block.left.seqGE(blocks[1].left)
                    && block.right.seqLE(blocks[1].right)
                if belowACK || insideSecond {
                    receivedDSACK(block, now: now)
                    continue
                }
            }
            // Only blocks about data in flight mean anything; anything else is ignored.
            guard block.left.seqGE(sndUna), block.right.seqLE(sndMax) else { continue }
            newly += scoreboard.applySACK(left: block.left, right: block.right, now: now, minimumRTT: minimumRTT)
        }
        return newly
    }

    /// A D-SACK: the peer got something twice. Inside a recovery episode that means one of our
    /// retransmissions was unnecessary; once all of them are, the reduction is undone (RFC 3708).
    private mutating func receivedDSACK(_ block: TCPSACKBlock, now: NIODeadline) {
        reorderingMultiplier = min(reorderingMultiplier + 1, 8)
        guard undoController != nil, episodeRetransmissions > 0, block.left.seqGE(episodeStart),
            block.right.seqLE(episodeEnd)
        else { return }
        episodeDSACKs += 1
        counters.spuriousRetransmissions += 1
        if episodeDSACKs >= episodeRetransmissions { undoReduction(countRetransmissions: false) }
    }

    /// RACK (RFC 8985 6.2): marks what is lost, arms the reordering timer, starts recovery.
    private mutating func detectLosses(now: NIODeadline) {
        guard sackEnabled, !scoreboard.isEmpty else {
            reorderDeadline = nil
            return
        }
        let (newlyLost, timeout) = scoreboard.detectLosses(now: now, reorderingWindow: reorderingWindow)
        reorderDeadline = timeout
        if newlyLost > 0, !inRecovery, sndUna.seqGE(recoveryPoint) || consecutiveTimeouts == 0 {
            enterRecovery(now: now)
        }
    }

    private var reorderingWindow: TimeAmount {
        if !scoreboard.reorderingSeen, inRecovery || scoreboard.sackedSegments >= 3 { return .zero }
        guard let minimumRTT else { return .zero }
        let window = TimeAmount.nanoseconds(minimumRTT.nanoseconds / 4 * Int64(reorderingMultiplier))
        return min(window, rtt.smoothed ?? window)
    }

    private mutating func enterRecovery(now: NIODeadline) {
        beginEpisode()
        inRecovery = true
        recoveryPoint = sndMax
        congestion.onCongestionEvent(now: now, bytesInFlight: flightSize)
        counters.fastRetransmits += 1
        forceRetransmit = true
        probeDeadline = nil
        probePending = false
        probeEnd = nil
        probeTimestamp = nil
    }

    private mutating func beginEpisode() {
        undoController = congestion
        undoRetransmitTimestamp = nil
        eifelPending = timestampsEnabled
        episodeRetransmissions = 0
        episodeDSACKs = 0
        episodeStart = sndUna
        episodeEnd = sndMax
    }

    /// The last reduction was for nothing: restore the window it cut and stop resending.
    private mutating func undoReduction(countRetransmissions: Bool) {
        guard let previous = undoController else { return }
        if previous.congestionWindow > congestion.congestionWindow { congestion = previous }
        if countRetransmissions { counters.spuriousRetransmissions += episodeRetransmissions }
        counters.recoveryUndos += 1
        undoController = nil
        eifelPending = false
        inRecovery = false
        inflation = 0
        scoreboard.clearLost()
        scoreboard.noteReordering()
    }

    /// New data (or our SYN or FIN) acknowledged up to `ack`.
    private mutating func acknowledge(upTo ack: UInt32, segment: TCPSegment, now: NIODeadline) {
        let synAcknowledged = sndUna == iss
        // The SYN's sequence number carries no data and does not grow the congestion window.
        let acked = ack.seqDistance(from: sndUna) - (synAcknowledged ? 1 : 0)
        let dataAcked = min(max(0, ack.seqDistance(from: sendBufferSequence)), sendBuffer.count)
        if dataAcked > 0 {
            sendBuffer.removeFirst(dataAcked)
            sendBufferSequence = sendBufferSequence.seqAdvanced(by: dataAcked)
        }
        let flightBefore = flightSize
        let (_, newest) = scoreboard.acknowledge(upTo: ack, now: now, minimumRTT: minimumRTT)
        sndUna = ack

        // RTT: from the newest segment this ACK covers, unless it was retransmitted (Karn);
        // then the timestamp echo, which names the transmission that was answered.
        var sample: TimeAmount?
        if synAcknowledged {
            if synRetransmissions == 0, let sentAt = synSentAt { sample = now - sentAt }
        } else if let newest, !newest.retransmitted {
            sample = now - newest.sentAt
        }
        if sample == nil, timestampsEnabled, let echo = segment.options.timestamps?.echoReply, echo != 0 {
            // An echo from the future or from before the connection is not a measurement.
            let milliseconds = Int64(Int32(bitPattern: timestampNow(now) &- echo))
            let age = (now - createdAt).nanoseconds / 1_000_000
            if milliseconds >= 0, milliseconds <= age { sample = .milliseconds(milliseconds) }
        }
        if let sample {
            rtt.sample(sample)
            minimumRTT = min(minimumRTT ?? sample, sample)
        }
        rtt.resetBackoff()
        consecutiveTimeouts = 0
        rtoDeadline = scoreboard.isEmpty ? nil : now + rtt.rto
        var probeRepairedLoss = false
        if let end = probeEnd, ack.seqGE(end) {
            // RFC 8985 7.4: if the probe's own copy was what arrived (the echo names it), the
            // original was lost and the probe repaired it: respond as to any loss (below).
            if let probed = probeTimestamp, let echo = segment.options.timestamps?.echoReply, echo.seqGE(probed) {
                probeRepairedLoss = !inRecovery
            }
            probeEnd = nil
            probeTimestamp = nil
        }

        // Eifel (RFC 3522): the first ACK past the episode's start echoes the original
        // transmission's timestamp if the retransmission was unnecessary.
        if eifelPending, let retransmitted = undoRetransmitTimestamp, ack.seqGE(undoRetransmitEnd) {
            eifelPending = false
            if let echo = segment.options.timestamps?.echoReply, echo != 0, echo.seqLT(retransmitted) {
                undoReduction(countRetransmissions: true)
            }
        }

        if inRecovery {
            if ack.seqGE(recoveryPoint) {
                inRecovery = false
                inflation = 0
                congestion.onRecoveryExit(now: now, bytesInFlight: flightSize)
            } else if !sackEnabled {
                // RFC 6582 partial ACK: resend the next hole, deflate by what was acked.
                if !scoreboard.isEmpty {
                    scoreboard.markLost(at: 0)
                    forceRetransmit = true
                }
                inflation = max(0, inflation - acked) + (acked >= sendMSS ? sendMSS : 0)
            }
        } else if acked > 0 {
            inflation = 0
            let limited = congestion.isInSlowStart
                ? 2 * flightBefore < congestion.congestionWindow
                : flightBefore + 3 * sendMSS < congestion.congestionWindow
            congestion.onAcknowledged(
                CongestionAckSample(
                    ackedBytes: acked, bytesInFlight: flightBefore, rttSample: sample,
                    smoothedRTT: rtt.smoothed, minimumRTT: minimumRTT, acknowledgment: ack,
                    highestSent: sndMax, applicationLimited: limited, paced: currentPacingRate != nil,
                    now: now))
        }
        duplicateACKs = 0
        if probeRepairedLoss {
            congestion.onCongestionEvent(now: now, bytesInFlight: flightBefore)
            congestion.onRecoveryExit(now: now, bytesInFlight: flightSize)
        }

        if writeBlocked, sendBufferFreeSpace >= writableThreshold {
            writeBlocked = false
            if !writableEventPending {
                writableEventPending = true
                events.append(.writable)
            }
        }
        if finAcknowledged {
            switch state {
            case .finWait1: state = .finWait2
            case .closing: enterTimeWait(now: now)
            case .lastAck: close(.normal)
            default: break
            }
        }
    }

    /// Wake a blocked writer only once there is room worth writing into.
    private var writableThreshold: Int {
        max(1, min(configuration.sendBufferSize / 2, 64 * 1024))
    }

    private mutating func processData(_ segment: TCPSegment, now: NIODeadline) {
        var sequence = segment.sequenceNumber
        var payload = segment.payload
        var fin = segment.flags.contains(.fin)
        // Trim what we already have.
        let duplicate = rcvNxt.seqDistance(from: sequence)
        if duplicate > 0 {
            let drop = min(duplicate, payload.readableBytes)
            if sackEnabled, drop > 0 {
                pendingDSACK = TCPSACKBlock(left: sequence, right: sequence.seqAdvanced(by: drop))
                sackInfoPending = true
                ackNow = true
            }
            payload.moveReaderIndex(forwardBy: drop)
            sequence = sequence.seqAdvanced(by: drop)
            if duplicate > drop { fin = false }  // the FIN itself is old too
        }
        // Trim what lies beyond the window; a FIN after dropped bytes is dropped with them.
        let room = max(0, advertisedEdge.seqDistance(from: sequence))
        if payload.readableBytes > room {
            payload = payload.getSlice(at: payload.readerIndex, length: room) ?? ByteBuffer()
            fin = false
        }
        if fin { pendingPeerFin = sequence.seqAdvanced(by: payload.readableBytes) }

        if sequence == rcvNxt {
            if payload.readableBytes > 0 {
                receiveBuffer.appendInOrder(payload)
                rcvNxt = rcvNxt.seqAdvanced(by: payload.readableBytes)
                var delivered = payload.readableBytes
                if receiveBuffer.hasOutOfOrderData {
                    let before = rcvNxt
                    let drained = receiveBuffer.drainOutOfOrder(next: rcvNxt)
                    rcvNxt = drained.next
                    // RFC 2883: it repeated held data (a D-SACK for its old part, if any, comes first).
                    if sackEnabled, duplicate <= 0, let overlap = drained.duplicate { pendingDSACK = overlap }
                    delivered += rcvNxt.seqDistance(from: before)
                    ackNow = true  // a hole was filled: tell the sender at once (RFC 5681 4.2)
                    if sackEnabled { sackInfoPending = true }
                }
                counters.bytesReceived += delivered
                signalReadable()
                autotuneReceiveBuffer(now: now)
                segmentsSinceACK += 1
                if segmentsSinceACK >= 2 {
                    ackNow = true
                } else if delayedACKDeadline == nil {
                    delayedACKDeadline = now + configuration.delayedACKTimeout
                }
            }
        } else if payload.readableBytes > 0 {
            let stored = receiveBuffer.insertOutOfOrder(
                sequence: sequence, bytes: payload, next: rcvNxt, bufferSize: receiveBufferLimit)
            if sackEnabled {
                if stored.pruned { sackHistory = receiveBuffer.sackBlocksStillHeld(sackHistory) }
                // RFC 2883 4.2: the duplicated range first, then the block holding it.
                if let overlap = stored.duplicate { pendingDSACK = overlap }
                if let block = receiveBuffer.sackBlock(containing: sequence, next: rcvNxt) { rememberSACKBlock(block) }
                sackInfoPending = true
            }
            ackNow = true  // out of order: a duplicate ACK drives the sender's fast retransmit
        } else {
            ackNow = true
        }

        if let finAt = pendingPeerFin, finAt == rcvNxt {
            pendingPeerFin = nil
            rcvNxt = rcvNxt &+ 1
            receiveBuffer.discardOutOfOrder()
            sackHistory.removeAll()
            ackNow = true
            events.append(.peerFinished)
            switch state {
            case .established: state = .closeWait
            case .finWait1: state = .closing
            case .finWait2: enterTimeWait(now: now)
            default: break
            }
        }
    }

    /// The block holding the latest arrival goes first; blocks it absorbed are dropped.
    private mutating func rememberSACKBlock(_ block: TCPSACKBlock) {
        sackHistory.removeAll { $0.left.seqGE(block.left) && $0.right.seqLE(block.right) }
        sackHistory.insert(block, at: 0)
        if sackHistory.count > 4 { sackHistory.removeLast(sackHistory.count - 4) }
    }

    /// Receive-window auto-tuning (like Linux's DRS): once per RTT, let the buffer hold four
    /// times what arrived in that RTT (twice the BDP, with room to double), within the cap.
    private mutating func autotuneReceiveBuffer(now: NIODeadline) {
        let cap = configuration.effectiveMaximumReceiveBufferSize
        guard receiveBufferLimit < cap, let srtt = rtt.smoothed else { return }
        guard let start = autotuneStart else {
            autotuneStart = now
            autotuneMark = counters.bytesReceived
            return
        }
        guard now - start >= max(srtt, .milliseconds(1)) else { return }
        let delivered = counters.bytesReceived - autotuneMark
        let target = min(cap, 4 * delivered)
        if target > receiveBufferLimit { receiveBufferLimit = target }
        autotuneStart = now
        autotuneMark = counters.bytesReceived
    }

    private mutating func signalReadable() {
        guard !readableEventPending else { return }
        readableEventPending = true
        events.append(.readable)
    }

    private mutating func enterTimeWait(now: NIODeadline) {
        state = .timeWait
        timeWaitDeadline = now + configuration.timeWaitDuration
        clearRetransmissionTimers()
        delayedACKDeadline = nil
    }

    private mutating func clearRetransmissionTimers() {
        rtoDeadline = nil
        persistDeadline = nil
        probeDeadline = nil
        probePending = false
        reorderDeadline = nil
        pacingDeadline = nil
        forceRetransmit = false
    }

    private mutating func close(_ reason: TCPCloseReason) {
        state = .closed
        clearRetransmissionTimers()
        delayedACKDeadline = nil
        timeWaitDeadline = nil
        ackNow = false
        sendBuffer = TCPSendBuffer()
        scoreboard = TCPScoreboard()
        receiveBuffer.discardOutOfOrder()
        events.append(.closed(reason))
    }
}
