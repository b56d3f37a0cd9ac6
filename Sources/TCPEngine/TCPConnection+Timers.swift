import NIOCore
import TOUWire

// Deadlines: the timer table, keepalive, and what each timer does when it fires (the loss
// response to an RTO and the tail loss probe live in +Recovery).
extension TCPConnection {
    /// When `handleTimeout(now:)` is next due; complete only after `pollTransmit` returned nil.
    public var nextDeadline: NIODeadline? {
        guard let keepAlive = keepAliveDeadline else { return timers.earliest }
        guard let stored = timers.earliest else { return keepAlive }
        return min(stored, keepAlive)
    }

    /// Fires every timer due at `now`, in `TCPTimer`'s expiry order, keepalive last.
    public mutating func handleTimeout(now: NIODeadline) {
        for timer in TCPTimer.expiryOrder where timers.expire(timer, now: now) {
            fire(timer, now: now)
            if state == .closed { return }
        }
        if let deadline = keepAliveDeadline, deadline <= now {
            keepAliveTimerExpired(now: now)
        }
    }

    private mutating func fire(_ timer: TCPTimer, now: NIODeadline) {
        switch timer {
        case .timeWait: close(.normal)
        case .delayedACK: ackNow = true
        case .pacing: break  // sending resumes in the next pollTransmit
        case .userTimeout: userTimeoutExpired(now: now)
        case .retransmission: retransmissionTimerExpired(now: now)
        case .tailLossProbe: probeTimerExpired(now: now)
        case .reordering: detectLosses(now: now)
        case .persist: persistTimerExpired(now: now)
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
        if sndWnd == 0 {
            // The receiver closed its window and drops what we resend: these RTOs are window
            // probes and do not count while it answers; silence for the longest RTO ends it (as
            // Linux, which waits TCP_RTO_MAX).
            if now - lastHeardAt > configuration.maximumRTO {
                close(.timedOut)
                return
            }
        } else {
            countedTimeouts += 1
            if countedTimeouts > configuration.maximumRetransmissions {
                close(.timedOut)
                return
            }
        }
        enterTimeoutRecovery(now: now)
    }

    /// Data outstanding without progress for the user timeout. Into a closed window the peer
    /// drops what we resend but answers it: only its silence counts there.
    private mutating func userTimeoutExpired(now: NIODeadline) {
        guard let userTimeout = configuration.userTimeout, !scoreboard.isEmpty else { return }
        if sndWnd == 0, now - lastHeardAt < userTimeout {
            timers[.userTimeout] = lastHeardAt + userTimeout
            return
        }
        close(.userTimeout)
    }

    /// A zero-window probe: an ACK carrying SND.UNA-1, which the peer must answer with its
    /// window without it consuming sequence space (as Linux does).
    private mutating func persistTimerExpired(now: NIODeadline) {
        if let userTimeout = configuration.userTimeout, now - lastHeardAt >= userTimeout {
            close(.userTimeout)
            return
        }
        unansweredProbes += 1
        if unansweredProbes > configuration.maximumRetransmissions {
            close(.timedOut)
            return
        }
        persistBackoff += 1
        enqueueControl(makeSegment(sequence: sndUna &- 1, flags: .ack, now: now))
    }

    /// Backed off like the RTO; with a user timeout, no longer than half of it, so a silent peer
    /// behind a closed window is noticed within 1.5 user timeouts.
    private var persistInterval: TimeAmount {
        var limit = configuration.maximumRTO
        if let userTimeout = configuration.userTimeout { limit = min(limit, max(.nanoseconds(userTimeout.nanoseconds / 2), configuration.minimumRTO)) }
        var interval = rtt.rto
        for _ in 0..<min(persistBackoff, 16) {
            interval = interval + interval
            if interval >= limit { return limit }
        }
        return min(interval, limit)
    }

    mutating func updatePersistTimer(now: NIODeadline) {
        let waitingForWindow: Bool
        switch state {
        case .established, .closeWait, .finWait1, .closing, .lastAck:
            waitingForWindow = sndWnd == 0 && sndMax == sndUna && sndMax.seqLT(sendLimit)
        default:
            waitingForWindow = false
        }
        if waitingForWindow {
            if timers[.persist] == nil { timers[.persist] = now + persistInterval }
        } else {
            timers[.persist] = nil
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
        // The first probe went at lastHeardAt + idle; unanswered since, for the user timeout.
        if keepAliveProbesSent > 0, let userTimeout = configuration.userTimeout,
            now - (lastHeardAt + keepAlive.idle) >= userTimeout
        {
            close(.userTimeout)
            return
        }
        if keepAliveProbesSent >= keepAlive.count {
            close(.timedOut)
            return
        }
        keepAliveProbesSent += 1
        lastKeepAliveAt = now
        // Like a zero-window probe: SND.UNA-1 forces an ACK without consuming sequence space.
        enqueueControl(makeSegment(sequence: sndUna &- 1, flags: .ack, now: now))
    }

    /// Disarms everything that sends: retransmission, probes, reordering, pacing (and the user
    /// timeout that watches what was sent).
    mutating func clearRetransmissionTimers() {
        timers[.retransmission] = nil
        timers[.userTimeout] = nil
        timers[.persist] = nil
        timers[.tailLossProbe] = nil
        probePending = false
        timers[.reordering] = nil
        timers[.pacing] = nil
        forceRetransmit = false
    }
}
