import NIOCore
import TOUWire

// Segments in: the handshake, RFC 9293 acceptability, PAWS and RFC 5961 checks, the send
// window, and what an acknowledgment settles (loss recovery's part is in +Recovery, the
// receiver's data path in +Receive).
extension TCPConnection {
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
    mutating func learnPeerSYN(_ syn: TCPSegment) {
        irs = syn.sequenceNumber
        rcvNxt = irs &+ 1
        lastACKSent = rcvNxt
        // A floor as Linux's (CVE-2019-11479): a tiny MSS would cut the stream into a segment,
        // a scoreboard entry and a header per byte or so.
        let peerMSS = max(syn.options.maximumSegmentSize.map(Int.init) ?? Self.defaultPeerMSS, Self.minimumPeerMSS)
        if offersWindowScale, let shift = syn.options.windowScale {
            sendShift = Int(min(shift, 14))
            receiveShift = Int(configuration.receiveWindowShift)
        } else {
            sendShift = 0
            receiveShift = 0
        }
        sackEnabled = configuration.selectiveAcknowledgments && syn.options.sackPermitted
        lossRecovery = sackEnabled ? .rack : .newReno
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
            // Data on our SYN counts as sent once the SYN-ACK covers it; what it does not cover (a
            // peer without fast open) goes again as ordinary data.
            counters.bytesSent += max(0, ack.seqDistance(from: iss &+ 1))
            if ack.seqLT(sndMax) { sndMax = ack }
            acknowledge(upTo: ack, segment: segment, now: now)
            ackNow = true
            enterEstablished()
        } else {
            // Simultaneous open (RFC 9293 figure 8): answer with a SYN-ACK. The peer, in SYN-SENT,
            // took no data from our SYN: it goes again as ordinary data after the handshake.
            state = .synReceived
            synPending = true
            sndMax = iss &+ 1
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
                // Simultaneous open: the peer's SYN-ACK answers our SYN. Its window, as in any
                // segment with SYN set, is not scaled (RFC 7323 2.2).
                sndWnd = Int(segment.window)
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
            answerUnacceptable(segment, now: now)
            return
        }

        guard Self.isAcceptable(segment, next: rcvNxt, window: currentReceiveWindow) else {
            if !flags.contains(.rst) {
                answerUnacceptable(segment, now: now)
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
                    timers[.timeWait] = now + configuration.timeWaitDuration
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

    /// An unacceptable or PAWS-rejected segment earns an ACK, but (Linux's tcp_invalid_ratelimit)
    /// a bare one at most every half second: two ends that disagree about the window would
    /// otherwise answer each other's ACKs forever. Data and FINs are answered at once: their
    /// D-SACK or re-ACK matters, and they cannot ping-pong.
    private mutating func answerUnacceptable(_ segment: TCPSegment, now: NIODeadline) {
        if segment.sequenceLength == 0 || segment.flags.contains(.syn) {
            if let last = lastUnacceptableACKAt, now - last < Self.unacceptableACKInterval { return }
            lastUnacceptableACKAt = now
        }
        ackNow = true
    }

    /// RFC 9293 3.10.7.4 acceptability, against the window we advertised (RCV.NXT `next`).
    /// Static: a method on `self` made every segment copy the whole connection to call it.
    private static func isAcceptable(_ segment: TCPSegment, next: UInt32, window: Int) -> Bool {
        let sequence = segment.sequenceNumber
        let length = segment.sequenceLength
        func inWindow(_ value: UInt32) -> Bool {
            value.seqGE(next) && value.seqLT(next.seqAdvanced(by: window))
        }
        if length == 0 {
            return window == 0 ? sequence == next : inWindow(sequence)
        }
        if window == 0 {
            // A bare FIN needs no buffer space; take it even into a closed window.
            return sequence == next && segment.payload.readableBytes == 0
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
            timers[.persist] = nil
        }
        let advanced = ack.seqGT(sndUna)
        let flightBefore = flightSize
        if advanced {
            acknowledge(upTo: ack, segment: segment, now: now)
            if state == .closed { return }
        }
        switch lossRecovery {
        case .rack:
            rackProcessACK(
                segment, ack: ack, advanced: advanced, windowChanged: windowChanged, flightBefore: flightBefore,
                now: now)
        case .newReno:
            if !advanced { newRenoDuplicateACK(segment, ack: ack, windowChanged: windowChanged, now: now) }
        }
    }

    /// New data (or our SYN or FIN) acknowledged up to `ack`.
    mutating func acknowledge(upTo ack: UInt32, segment: TCPSegment, now: NIODeadline) {
        // The first acknowledgment covers our SYN. Not "SND.UNA == ISS": after 2^32 bytes SND.UNA
        // is there again, and that ACK would time the SYN anew (an RTT of the connection's age).
        let synAcknowledged = !synWasAcknowledged
        synWasAcknowledged = true
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
        // A time from before the send (a caller's clock read too early) measures nothing; as a
        // sample it would take the minimum RTT, and RACK's reordering window with it, below zero.
        if let measured = sample, measured < .nanoseconds(0) { sample = nil }
        var coarse = false
        if sample == nil, timestampsEnabled, let echo = segment.options.timestamps?.echoReply, echo != 0 {
            // An echo from the future or from before the connection is not a measurement.
            let milliseconds = Int64(Int32(bitPattern: timestampNow(now) &- echo))
            let age = (now - createdAt).nanoseconds / 1_000_000
            if milliseconds >= 0, milliseconds <= age {
                sample = .milliseconds(milliseconds)
                coarse = true
            }
        }
        if let sample {
            rtt.sample(sample)
            // An echo counts whole milliseconds: for the minimum, less than one is one (as Linux),
            // or a fast path would measure 0 and take RACK's minimum RTT down with it.
            minimumRTTFilter.update(coarse ? max(sample, .milliseconds(1)) : sample, at: now)
        }
        rtt.resetBackoff()
        consecutiveTimeouts = 0
        countedTimeouts = 0
        timers[.retransmission] = scoreboard.isEmpty ? nil : now + rtt.rto
        // Progress: the user timeout waits anew for what is still outstanding.
        if let userTimeout = configuration.userTimeout { timers[.userTimeout] = scoreboard.isEmpty ? nil : now + userTimeout }
        judgeByTimestamp(ack: ack, segment: segment)

        if recoveryPhase == .fast {
            fastRecoveryAcknowledged(ack: ack, acked: acked, now: now)
        } else if acked > 0 {
            if recoveryPhase == .timeout, ack.seqGE(recoveryPoint) { recoveryEnded() }
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

    mutating func enterTimeWait(now: NIODeadline) {
        state = .timeWait
        timers[.timeWait] = now + configuration.timeWaitDuration
        clearRetransmissionTimers()
        timers[.delayedACK] = nil
    }

    mutating func close(_ reason: TCPCloseReason) {
        state = .closed
        clearRetransmissionTimers()
        timers[.delayedACK] = nil
        timers[.timeWait] = nil
        ackNow = false
        sendBuffer = TCPSendBuffer()
        scoreboard = TCPScoreboard()
        receiveBuffer.discardOutOfOrder()
        events.append(.closed(reason))
    }
}
