import DequeModule
import NIOCore
import TOUWire

/// A sans-IO TCP connection (RFC 9293): segments and instants in, segments, events and the next
/// deadline out. It knows nothing of DTLS, GUE, sockets or clocks.
///
/// Congestion control is RFC 5681 slow start and congestion avoidance with an RFC 6928 initial
/// window and RFC 6582 NewReno fast recovery; retransmission timing is RFC 6298 with Karn's rule.
/// SACK and timestamps are not negotiated (so SACK-permitted is never sent).
public struct TCPConnection {
    public private(set) var state: TCPState
    public let localPort: UInt16
    public let remotePort: UInt16
    private let configuration: TCPConfiguration

    // MARK: Send sequence space (RFC 9293 3.3.1)
    private let iss: UInt32
    private var sndUna: UInt32
    /// Next sequence number to send; rewound to SND.UNA after an RTO (go-back-N).
    private var sndNxt: UInt32
    /// Highest sequence number ever sent, plus one.
    private var sndMax: UInt32
    /// The peer's window, scaled, in bytes.
    private var sndWnd = 0
    private var sndWl1: UInt32 = 0
    private var sndWl2: UInt32 = 0
    private var sendShift = 0
    /// Payload cap of our segments: min(our MSS, the peer's MSS).
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
    private var receiveBuffer = TCPReceiveBuffer()
    /// A FIN that arrived ahead of a hole.
    private var pendingPeerFin: UInt32?
    private var offersWindowScale: Bool

    // MARK: Acknowledgment
    private var ackNow = false
    private var delayedACKDeadline: NIODeadline?
    private var segmentsSinceACK = 0

    // MARK: Timers
    private var rtt: RTTEstimator
    private var rtoDeadline: NIODeadline?
    private var persistDeadline: NIODeadline?
    private var persistBackoff = 0
    private var unansweredProbes = 0
    private var timeWaitDeadline: NIODeadline?
    private var consecutiveTimeouts = 0
    private var synRetransmissions = 0
    /// The one segment being timed (Karn: never a retransmitted one).
    private var timedSequence: UInt32?
    private var timedSentAt: NIODeadline?

    // MARK: Congestion control
    private var congestionWindow: Int
    private var slowStartThreshold = Int(UInt32.max)
    private var bytesAckedInAvoidance = 0
    private var duplicateACKs = 0
    private var inRecovery = false
    private var recover: UInt32
    private var retransmitFirstPending = false

    private var controlQueue: Deque<TCPSegment> = []
    private var events: Deque<TCPEvent> = []
    private var readableEventPending = false
    private var writableEventPending = false
    private var counters = TCPStats()

    private static let defaultPeerMSS = 536
    private static let controlQueueLimit = 8
    private static let congestionWindowCap = 1 << 30

    private init(
        state: TCPState, localPort: UInt16, remotePort: UInt16, configuration: TCPConfiguration,
        iss: UInt32, offersWindowScale: Bool
    ) {
        self.state = state
        self.localPort = localPort
        self.remotePort = remotePort
        self.configuration = configuration
        self.iss = iss
        self.sndUna = iss
        self.sndNxt = iss
        self.sndMax = iss
        self.recover = iss
        self.sendBufferSequence = iss &+ 1
        self.sendMSS = configuration.advertisedMSS
        self.offersWindowScale = offersWindowScale
        self.receiveShift = offersWindowScale ? Int(configuration.receiveWindowShift) : 0
        self.rtt = RTTEstimator(
            initial: configuration.initialRTO, minimum: configuration.minimumRTO,
            maximum: configuration.maximumRTO)
        self.congestionWindow = Self.initialWindow(mss: configuration.advertisedMSS)
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
            configuration: configuration, iss: initialSequenceNumber, offersWindowScale: true)
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
            offersWindowScale: syn.options.windowScale != nil)
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
            let growth = availableReceiveSpace - currentReceiveWindow
            if growth >= min(receiveBufferSize / 2, 2 * configuration.advertisedMSS) { ackNow = true }
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
        result.rto = rtt.rto
        result.congestionWindow = congestionWindow
        result.slowStartThreshold = slowStartThreshold
        result.sendWindow = sndWnd
        return result
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
        return earlier(earlier(rtoDeadline, persistDeadline), earlier(delayedACKDeadline, timeWaitDeadline))
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
        if let deadline = rtoDeadline, deadline <= now {
            rtoDeadline = nil
            retransmissionTimerExpired()
        }
        if let deadline = persistDeadline, deadline <= now {
            persistDeadline = nil
            persistTimerExpired(now: now)
        }
    }

    private mutating func retransmissionTimerExpired() {
        counters.rtoExpiries += 1
        rtt.backOff()
        timedSequence = nil
        switch state {
        case .synSent, .synReceived:
            synRetransmissions += 1
            if synRetransmissions > configuration.synRetries {
                close(.timedOut)
            } else {
                sndNxt = iss
            }
            return
        case .closed, .listen, .timeWait, .finWait2:
            return
        default:
            break
        }
        consecutiveTimeouts += 1
        if consecutiveTimeouts > configuration.maximumRetransmissions {
            close(.timedOut)
            return
        }
        // RFC 5681 (4): loss window of one segment; RFC 6582: no fast recovery for losses
        // from before the timeout.
        slowStartThreshold = max(flightSize / 2, 2 * sendMSS)
        congestionWindow = sendMSS
        bytesAckedInAvoidance = 0
        inRecovery = false
        recover = sndMax
        duplicateACKs = 0
        retransmitFirstPending = false
        sndNxt = sndUna
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
        enqueueControl(makeSegment(sequence: sndUna &- 1, flags: .ack))
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
            waitingForWindow = sndWnd == 0 && sndNxt == sndUna && sndNxt.seqLT(sendLimit)
        default:
            waitingForWindow = false
        }
        if waitingForWindow {
            if persistDeadline == nil { persistDeadline = now + persistInterval }
        } else {
            persistDeadline = nil
        }
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
            return sndNxt == iss ? sendSYN(now: now) : nil
        case .synReceived:
            if sndNxt == iss { return sendSYN(now: now) }
            return ackNow ? makeSegment(sequence: sndMax, flags: .ack) : nil
        case .timeWait, .finWait2:
            // Nothing left to send but acknowledgments (a retransmitted FIN in TIME-WAIT).
            return ackNow ? makeSegment(sequence: sndMax, flags: .ack) : nil
        default:
            break
        }
        if retransmitFirstPending {
            retransmitFirstPending = false
            if let segment = retransmitFirstUnacknowledged(now: now) { return segment }
        }
        if let segment = sendData(now: now) { return segment }
        if ackNow { return makeSegment(sequence: sndMax, flags: .ack) }
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

    private mutating func sendSYN(now: NIODeadline) -> TCPSegment {
        let isRetransmission = sndMax != iss
        if isRetransmission {
            counters.retransmissions += 1
            timedSequence = nil
        } else {
            timedSequence = iss &+ 1
            timedSentAt = now
        }
        var options = TCPOptions(maximumSegmentSize: UInt16(configuration.advertisedMSS))
        if offersWindowScale { options.windowScale = UInt8(receiveShift) }
        let flags: TCPFlags = state == .synSent ? .syn : [.syn, .ack]
        let segment = makeSegment(sequence: iss, flags: flags, options: options)
        sndNxt = iss &+ 1
        sndMax = iss &+ 1
        if rtoDeadline == nil { rtoDeadline = now + rtt.rto }
        return segment
    }

    private mutating func sendData(now: NIODeadline) -> TCPSegment? {
        let dataEnd = sendBufferSequence.seqAdvanced(by: sendBuffer.count)
        guard sndNxt.seqLT(sendLimit) else { return nil }
        let unsent = max(0, dataEnd.seqDistance(from: sndNxt))
        let inFlight = sndNxt.seqDistance(from: sndUna)
        let usable = min(sndWnd, congestionWindow) - inFlight
        var length = min(sendMSS, unsent)
        if length > usable {
            // Sender-side silly window avoidance: wait for a full segment's room while data is in
            // flight; with nothing in flight a small window is all there is, so use it.
            guard inFlight == 0, usable > 0 else { return nil }
            length = usable
        }
        let fin = finQueued && length == unsent && usable > length
        guard length > 0 || fin else { return nil }

        let payload = sendBuffer.slice(
            offset: sndNxt.seqDistance(from: sendBufferSequence), length: length)
        var flags: TCPFlags = .ack
        if fin { flags.insert(.fin) }
        if length > 0, length == unsent { flags.insert(.psh) }
        let end = sndNxt.seqAdvanced(by: length + (fin ? 1 : 0))
        if sndNxt.seqLT(sndMax) {
            counters.retransmissions += 1
            // Only the part past the highest byte ever sent counts as first transmission.
            counters.bytesSent += max(0, sndNxt.seqAdvanced(by: length).seqDistance(from: sndMax))
        } else {
            counters.bytesSent += length
            if timedSequence == nil {
                timedSequence = end
                timedSentAt = now
            }
        }
        let segment = makeSegment(sequence: sndNxt, flags: flags, payload: payload)
        sndNxt = end
        if end.seqGT(sndMax) { sndMax = end }
        if rtoDeadline == nil { rtoDeadline = now + rtt.rto }
        persistDeadline = nil
        return segment
    }

    /// Fast retransmit and NewReno partial ACKs resend the first unacknowledged segment.
    private mutating func retransmitFirstUnacknowledged(now: NIODeadline) -> TCPSegment? {
        guard flightSize > 0 else { return nil }
        let dataEnd = sendBufferSequence.seqAdvanced(by: sendBuffer.count)
        let available = max(0, min(dataEnd, sndMax).seqDistance(from: sndUna))
        let length = min(sendMSS, available)
        let fin = finQueued && sndMax.seqGT(finSequence) && length == available
            && sndUna.seqAdvanced(by: length) == finSequence
        guard length > 0 || fin else { return nil }
        let payload = sendBuffer.slice(
            offset: sndUna.seqDistance(from: sendBufferSequence), length: length)
        var flags: TCPFlags = .ack
        if fin { flags.insert(.fin) }
        counters.retransmissions += 1
        timedSequence = nil
        let end = sndUna.seqAdvanced(by: length + (fin ? 1 : 0))
        if sndNxt.seqLT(end) { sndNxt = end }
        if rtoDeadline == nil { rtoDeadline = now + rtt.rto }
        return makeSegment(sequence: sndUna, flags: flags, payload: payload)
    }

    /// Builds a segment from this connection, filling in ACK and window; sending an ACK settles
    /// any pending acknowledgment.
    private mutating func makeSegment(
        sequence: UInt32, flags: TCPFlags, options: TCPOptions = TCPOptions(),
        payload: ByteBuffer = ByteBuffer()
    ) -> TCPSegment {
        let window = windowField(forSYN: flags.contains(.syn))
        if flags.contains(.ack) {
            ackNow = false
            delayedACKDeadline = nil
            segmentsSinceACK = 0
        }
        return TCPSegment(
            sourcePort: localPort, destinationPort: remotePort, sequenceNumber: sequence,
            acknowledgmentNumber: flags.contains(.ack) ? rcvNxt : 0, flags: flags,
            window: window, options: options, payload: payload)
    }

    private var receiveBufferSize: Int { configuration.effectiveReceiveBufferSize }

    private var availableReceiveSpace: Int { max(0, receiveBufferSize - receiveBuffer.readableBytes) }

    /// The window currently offered: from RCV.NXT to the advertised right edge.
    private var currentReceiveWindow: Int { max(0, advertisedEdge.seqDistance(from: rcvNxt)) }

    private mutating func windowField(forSYN: Bool) -> UInt16 {
        if forSYN {
            // RFC 7323: the window in a SYN is never scaled.
            let window = min(availableReceiveSpace, Int(UInt16.max))
            if state != .synSent { raiseAdvertisedEdge(to: rcvNxt.seqAdvanced(by: window)) }
            return UInt16(window)
        }
        let current = currentReceiveWindow
        var window = min(availableReceiveSpace, Int(UInt16.max) << receiveShift)
        // Receiver silly window avoidance: only move the edge right by a useful amount.
        if window > current, window - current < min(receiveBufferSize / 2, configuration.advertisedMSS) {
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

    /// Options of the peer's SYN: its MSS caps our segments, window scaling only if both offer it.
    private mutating func learnPeerSYN(_ syn: TCPSegment) {
        irs = syn.sequenceNumber
        rcvNxt = irs &+ 1
        let peerMSS = syn.options.maximumSegmentSize.map(Int.init) ?? Self.defaultPeerMSS
        sendMSS = max(1, min(configuration.advertisedMSS, peerMSS))
        congestionWindow = Self.initialWindow(mss: sendMSS)
        if offersWindowScale, let shift = syn.options.windowScale {
            sendShift = Int(min(shift, 14))
            receiveShift = Int(configuration.receiveWindowShift)
        } else {
            sendShift = 0
            receiveShift = 0
        }
        sndWnd = Int(syn.window)
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
        raiseAdvertisedEdge(to: rcvNxt.seqAdvanced(by: min(availableReceiveSpace, Int(UInt16.max))))
        if flags.contains(.ack) {
            sndWl2 = ack
            acknowledge(upTo: ack, now: now)
            ackNow = true
            enterEstablished()
        } else {
            // Simultaneous open: answer with a SYN-ACK.
            state = .synReceived
            sndNxt = iss
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

        // Our SYN-ACK was lost and the peer sent its SYN again.
        if state == .synReceived, flags.contains(.syn), !flags.contains(.ack), sequence == irs {
            sndNxt = iss
            return
        }

        guard isAcceptable(segment) else {
            if !flags.contains(.rst) {
                ackNow = true
                if state == .timeWait, flags.contains(.fin) {
                    // A retransmitted FIN: re-ACK it and restart 2*MSL (RFC 9293).
                    timeWaitDeadline = now + configuration.timeWaitDuration
                }
            }
            return
        }

        if flags.contains(.rst) {
            // RFC 5961: only an exact RST resets; one merely in the window earns a challenge ACK.
            if sequence == rcvNxt { close(.reset) } else { ackNow = true }
            return
        }
        if flags.contains(.syn) {
            ackNow = true  // RFC 5961 challenge ACK
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
            sndWl1 = sequence
            sndWl2 = ack
            enterEstablished()
        }

        if ack.seqGT(sndMax) {
            ackNow = true  // acknowledges something never sent
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
            sndWl1 = sequence
            sndWl2 = ack
        }
        unansweredProbes = 0
        if sndWnd > 0 {
            persistBackoff = 0
            persistDeadline = nil
        }
        if ack.seqGT(sndUna) {
            acknowledge(upTo: ack, now: now)
            return
        }
        // RFC 5681 duplicate ACK: nothing new, no data, same window, data outstanding.
        guard segment.payload.readableBytes == 0, !segment.flags.contains(.fin), !windowChanged,
            flightSize > 0, sndWnd > 0
        else { return }
        duplicateACKs += 1
        if inRecovery {
            congestionWindow = min(congestionWindow + sendMSS, Self.congestionWindowCap)
        } else if duplicateACKs == 3, ack.seqGT(recover) {
            slowStartThreshold = max(flightSize / 2, 2 * sendMSS)
            congestionWindow = slowStartThreshold + 3 * sendMSS
            recover = sndMax
            inRecovery = true
            retransmitFirstPending = true
            counters.fastRetransmits += 1
            timedSequence = nil
        }
    }

    /// New data (or our SYN or FIN) acknowledged up to `ack`.
    private mutating func acknowledge(upTo ack: UInt32, now: NIODeadline) {
        // The SYN's sequence number carries no data and does not grow the congestion window.
        let acked = ack.seqDistance(from: sndUna) - (sndUna == iss ? 1 : 0)
        let dataAcked = min(max(0, ack.seqDistance(from: sendBufferSequence)), sendBuffer.count)
        if dataAcked > 0 {
            sendBuffer.removeFirst(dataAcked)
            sendBufferSequence = sendBufferSequence.seqAdvanced(by: dataAcked)
        }
        sndUna = ack
        if sndNxt.seqLT(sndUna) { sndNxt = sndUna }
        if let timed = timedSequence, let sentAt = timedSentAt, ack.seqGE(timed) {
            rtt.sample(now - sentAt)
            timedSequence = nil
        }
        rtt.resetBackoff()
        consecutiveTimeouts = 0
        rtoDeadline = sndNxt == sndUna ? nil : now + rtt.rto

        if inRecovery {
            if ack.seqGE(recover) {
                inRecovery = false
                congestionWindow = min(slowStartThreshold, max(flightSize, sendMSS) + sendMSS)
            } else {
                // RFC 6582 partial ACK: resend the next hole, deflate by what was acked.
                retransmitFirstPending = true
                congestionWindow = max(congestionWindow - acked + (acked >= sendMSS ? sendMSS : 0), sendMSS)
            }
        } else if congestionWindow < slowStartThreshold {
            // RFC 3465 appropriate byte counting with L = 2 (the peer delays ACKs).
            congestionWindow += min(acked, 2 * sendMSS)
        } else {
            bytesAckedInAvoidance += acked
            if bytesAckedInAvoidance >= congestionWindow {
                bytesAckedInAvoidance -= congestionWindow
                congestionWindow += sendMSS
            }
        }
        congestionWindow = min(congestionWindow, Self.congestionWindowCap)
        duplicateACKs = 0

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
                    rcvNxt = receiveBuffer.drainOutOfOrder(next: rcvNxt)
                    delivered += rcvNxt.seqDistance(from: before)
                    ackNow = true  // a hole was filled: tell the sender at once (RFC 5681 4.2)
                }
                counters.bytesReceived += delivered
                signalReadable()
                segmentsSinceACK += 1
                if segmentsSinceACK >= 2 {
                    ackNow = true
                } else if delayedACKDeadline == nil {
                    delayedACKDeadline = now + configuration.delayedACKTimeout
                }
            }
        } else if payload.readableBytes > 0 {
            receiveBuffer.insertOutOfOrder(sequence: sequence, bytes: payload, next: rcvNxt)
            ackNow = true  // out of order: a duplicate ACK drives the sender's fast retransmit
        } else {
            ackNow = true
        }

        if let finAt = pendingPeerFin, finAt == rcvNxt {
            pendingPeerFin = nil
            rcvNxt = rcvNxt &+ 1
            receiveBuffer.discardOutOfOrder()
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

    private mutating func signalReadable() {
        guard !readableEventPending else { return }
        readableEventPending = true
        events.append(.readable)
    }

    private mutating func enterTimeWait(now: NIODeadline) {
        state = .timeWait
        timeWaitDeadline = now + configuration.timeWaitDuration
        rtoDeadline = nil
        persistDeadline = nil
        delayedACKDeadline = nil
        retransmitFirstPending = false
    }

    private mutating func close(_ reason: TCPCloseReason) {
        state = .closed
        rtoDeadline = nil
        persistDeadline = nil
        delayedACKDeadline = nil
        timeWaitDeadline = nil
        ackNow = false
        retransmitFirstPending = false
        sendBuffer = TCPSendBuffer()
        receiveBuffer.discardOutOfOrder()
        events.append(.closed(reason))
    }
}
