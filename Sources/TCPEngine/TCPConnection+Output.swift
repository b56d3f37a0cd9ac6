import NIOCore
import TOUWire

// The sender's output: which segment goes next (control, SYN, probe, retransmission, new data,
// ACK), pacing, and how a segment is filled in (window, timestamps, SACK blocks).
extension TCPConnection {
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
            // Fast open: the answer may follow the SYN-ACK before the handshake's last ACK.
            if configuration.fastOpen, synSentAt != nil, let segment = sendNewData(now: now, probe: false) {
                return segment
            }
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
    var sendLimit: UInt32 {
        let dataEnd = sendBufferSequence.seqAdvanced(by: sendBuffer.count)
        return finQueued ? dataEnd &+ 1 : dataEnd
    }

    var flightSize: Int { sndMax.seqDistance(from: sndUna) }

    var finAcknowledged: Bool { finQueued && sndUna.seqGT(finSequence) }

    /// The window the pipe may fill: cwnd plus NewReno's inflation.
    var sendableWindow: Int { congestion.congestionWindow + inflation }

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
        // Fast open: what the application has written rides on the SYN, and a resent SYN carries
        // it again (it is unacknowledged until the SYN-ACK covers it).
        var payload = ByteBuffer()
        if state == .synSent, configuration.fastOpen, !sendBuffer.isEmpty {
            let room = max(0, configuration.advertisedMSS - options.encodedLength)
            payload = sendBuffer.slice(offset: 0, length: min(room, sendBuffer.count))
        }
        let segment = makeSegment(sequence: iss, flags: flags, options: options, payload: payload, now: now)
        // A resent SYN-ACK leaves alone what was sent after it (fast open, SYN-RECEIVED).
        let end = iss &+ 1 &+ UInt32(payload.readableBytes)
        if sndMax.seqLT(end) { sndMax = end }
        if timers[.retransmission] == nil { timers[.retransmission] = now + rtt.rto }
        return segment
    }

    mutating func sendNewData(now: NIODeadline, probe: Bool) -> TCPSegment? {
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
        // Nagle: one small segment in flight at a time, unless a FIN follows it anyway. Our SYN
        // is no data: a fast-open answer in SYN-RECEIVED does not wait for it to be acknowledged.
        let dataOutstanding = synWasAcknowledged ? outstanding : max(0, outstanding - 1)
        if !configuration.noDelay, !probe, length < sendMSS, length == unsent, dataOutstanding > 0,
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
        if scoreboard.isEmpty, let last = lastDataSentAt {
            congestion.onSendResumed(now: now, idle: now - last, retransmissionTimeout: rtt.rto)
        }
        lastDataSentAt = now
        counters.bytesSent += length
        scoreboard.recordTransmission(start: start, end: end, fin: fin, now: now)
        consumePacing(length)
        let segment = makeSegment(sequence: start, flags: flags, payload: payload, now: now)
        sndMax = end
        if timers[.retransmission] == nil { timers[.retransmission] = now + rtt.rto }
        if let userTimeout = configuration.userTimeout, timers[.userTimeout] == nil {
            timers[.userTimeout] = now + userTimeout
        }
        timers[.persist] = nil
        // A probe clamped to the RTO may come sooner now that more than one segment is out.
        if timers[.tailLossProbe] == nil || timers[.tailLossProbe] == timers[.retransmission] {
            armTailLossProbe(now: now)
        }
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

    mutating func retransmit(at index: Int, now: NIODeadline) -> TCPSegment {
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
        lastDataSentAt = now
        counters.retransmissions += 1
        noteEpisodeRetransmission(end: entry.end, now: now)
        if timers[.retransmission] == nil { timers[.retransmission] = now + rtt.rto }
        return makeSegment(sequence: entry.start, flags: flags, payload: payload, now: now)
    }

    // MARK: Pacing

    var currentPacingRate: Double? {
        guard configuration.pacing, let srtt = rtt.smoothed else { return nil }
        return congestion.pacingRate(smoothedRTT: srtt)
    }

    /// Whether the pacer lets a segment go now; if not, its wakeup is armed.
    private mutating func pacingAllows(now: NIODeadline) -> Bool {
        guard let wakeup = pacer.delay(now: now, rate: currentPacingRate, segmentSpace: segmentSpace) else {
            return true
        }
        timers[.pacing] = wakeup
        return false
    }

    private mutating func consumePacing(_ bytes: Int) {
        pacer.onTransmit(bytes, paced: currentPacingRate != nil)
    }

    // MARK: Building segments

    /// Builds a segment from this connection, filling in ACK, window, timestamps and SACK
    /// blocks; sending an ACK settles any pending acknowledgment.
    mutating func makeSegment(
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
            timers[.delayedACK] = nil
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

    /// The RFC 7323 timestamp clock: milliseconds since the connection began, plus an offset.
    func timestampNow(_ now: NIODeadline) -> UInt32 {
        let milliseconds = max(0, (now - createdAt).nanoseconds / 1_000_000)
        return timestampOffset &+ UInt32(truncatingIfNeeded: milliseconds)
    }

    /// The timestamp value a segment sent at `now` carries (for tests).
    func timestampValue(at now: NIODeadline) -> UInt32 { timestampNow(now) }

    mutating func enqueueControl(_ segment: TCPSegment) {
        // Bounded: a flood of bad segments must not grow memory.
        if controlQueue.count < Self.controlQueueLimit { controlQueue.append(segment) }
    }

    /// RFC 5961 7: challenge ACKs, rate limited so an attacker cannot turn us into a reflector.
    mutating func challengeACK(now: NIODeadline) {
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
    mutating func replyWithReset(to segment: TCPSegment) {
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
}
