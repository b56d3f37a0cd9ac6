import NIOCore
import TOUWire

/// How losses are found (gVisor's recovery strategies): chosen once, from SACK-permitted, when
/// the peer's SYN arrives.
enum LossRecovery {
    /// RFC 6582 NewReno with RFC 3042 limited transmit: duplicate ACKs, one hole per round trip.
    case newReno
    /// RFC 8985 RACK-TLP over the SACK scoreboard (RFC 6675 pipe).
    case rack
}

/// Where the sender is in loss recovery (Linux's Open, Recovery and Loss states).
enum RecoveryPhase {
    case open
    /// Fast recovery (RFC 6675, RFC 6582) until SND.UNA reaches `recover`.
    case fast
    /// After an RTO until SND.UNA reaches `recover`: losses found meanwhile belong to the same
    /// congestion event and start no fast recovery (RFC 6582 3.2, RFC 6675 5.1).
    case timeout
}

/// Undo state of one window reduction (a fast recovery, or the first RTO of an episode): what
/// restores the window if the retransmissions prove unnecessary (Eifel RFC 3522, D-SACK RFC 3708).
struct RecoveryEpisode {
    /// The congestion controller before the reduction.
    var controllerBefore: AnyCongestionController
    /// Timestamp of the episode's first retransmission (Eifel), and its end: only an ACK
    /// covering it can judge it.
    var firstRetransmitTimestamp: UInt32?
    var firstRetransmitEnd: UInt32 = 0
    /// The Eifel judgement is still to be made.
    var eifelPending: Bool
    var retransmissions = 0
    var dsacks = 0
    /// SND.UNA and SND.NXT when it began: D-SACKs inside judge its retransmissions.
    var start: UInt32
    var end: UInt32
}

// Loss recovery: detection (RACK or duplicate ACKs), the tail loss probe, the response to
// losses and timeouts, and undoing a reduction that proves spurious.
extension TCPConnection {
    // MARK: Per-ACK detection

    /// RACK-TLP's share of an acceptable ACK: apply SACK blocks, judge an outstanding probe,
    /// look for losses, re-arm the probe.
    mutating func rackProcessACK(
        _ segment: TCPSegment, ack: UInt32, advanced: Bool, windowChanged: Bool, flightBefore: Int,
        now: NIODeadline
    ) {
        var sacked = 0
        var dsack: TCPSACKBlock?
        if !segment.options.sackBlocks.isEmpty {
            (sacked, dsack) = processSACKBlocks(segment.options.sackBlocks, ack: ack, now: now)
        }
        // A D-SACK of the tail loss probe says only that the probe was early, not that RACK was
        // hasty: it judges the probe but leaves the reordering window alone.
        let probeDSACK = probeRetransmitted && dsack != nil && dsack?.right == probeEnd
        adaptReorderingWindow(dsackSeen: dsack != nil && !probeDSACK)
        if probeEnd != nil {
            let pureDuplicate = !advanced && sacked == 0 && !windowChanged && segment.sequenceLength == 0
            judgeTailLossProbe(ack: ack, dsack: dsack, pureDuplicate: pureDuplicate, flightBefore: flightBefore, now: now)
        }
        if sacked > 0 || advanced || inRecovery { detectLosses(now: now) }
        if advanced || sacked > 0 { armTailLossProbe(now: now) }
    }

    /// RFC 5681 duplicate ACK (nothing new, no data, same window, data outstanding) for NewReno.
    mutating func newRenoDuplicateACK(_ segment: TCPSegment, ack: UInt32, windowChanged: Bool, now: NIODeadline) {
        guard segment.payload.readableBytes == 0, !segment.flags.contains(.fin), !windowChanged,
            flightSize > 0, sndWnd > 0
        else { return }
        duplicateACKs += 1
        if inRecovery {
            inflation += sendMSS
        } else if duplicateACKs < 3 {
            // RFC 3042 limited transmit: a new segment for each of the first two.
            inflation = duplicateACKs * sendMSS
        } else if duplicateACKs == 3, recoveryPhase == .open {
            inflation = 0
            scoreboard.markLost(at: 0)
            enterRecovery(now: now)
            inflation = 3 * sendMSS
        }
    }

    /// Applies SACK blocks to the scoreboard; returns bytes newly SACKed and the D-SACK block, if
    /// it may tell of one of our retransmissions. The blocks go lowest first (RFC 8985 6.2 step 3):
    /// the receiver lists its latest arrival first, and applied in that order a lower block
    /// would look delivered out of order.
    private mutating func processSACKBlocks(
        _ blocks: [TCPSACKBlock], ack: UInt32, now: NIODeadline
    ) -> (newly: Int, dsack: TCPSACKBlock?) {
        counters.sackBlocksReceived += blocks.count
        var newly = 0
        var dsack: TCPSACKBlock?
        var first = 0
        if let block = blocks.first, block.left.seqLT(block.right) {
            let belowACK = block.right.seqLE(ack)
            let insideSecond = blocks.count > 1 && block.left.seqGE(blocks[1].left) && block.right.seqLE(blocks[1].right)
            if belowACK || insideSecond {
                first = 1
                if receivedDSACK(block, now: now) { dsack = block }
            }
        }
        // At most four blocks fit in the options: ordering them by selection allocates nothing.
        var previous: Int?
        for _ in first..<blocks.count {
            var next: Int?
            for index in first..<blocks.count where Self.precedes(blocks, previous, index, from: sndUna) {
                if let candidate = next, !Self.precedes(blocks, index, candidate, from: sndUna) { continue }
                next = index
            }
            guard let index = next else { break }
            previous = index
            let block = blocks[index]
            // Only blocks about data in flight mean anything; anything else is ignored.
            guard block.left.seqLT(block.right), block.left.seqGE(sndUna), block.right.seqLE(sndMax) else { continue }
            newly += scoreboard.applySACK(left: block.left, right: block.right, now: now, minimumRTT: minimumRTT)
        }
        return (newly, dsack)
    }

    /// Whether block `a` comes before block `b` (by left edge from `base`, then by position);
    /// nil comes before everything.
    private static func precedes(_ blocks: [TCPSACKBlock], _ a: Int?, _ b: Int, from base: UInt32) -> Bool {
        guard let a else { return true }
        let left = blocks[a].left.seqDistance(from: base)
        let right = blocks[b].left.seqDistance(from: base)
        return left < right || (left == right && a < b)
    }

    /// A D-SACK: the peer got something twice. Inside a recovery episode that means one of our
    /// retransmissions was unnecessary; once all of them are, the reduction is undone (RFC 3708).
    /// Returns whether it may tell of one of our retransmissions: as Linux, one larger than any
    /// window is bogus, and more D-SACKed segments than we ever resent mean the network
    /// duplicated some.
    private mutating func receivedDSACK(_ block: TCPSACKBlock, now: NIODeadline) -> Bool {
        let length = block.right.seqDistance(from: block.left)
        guard length <= max(maxSndWnd, sendMSS) else { return false }
        dsackedSegments += max(1, (length + sendMSS - 1) / sendMSS)
        guard dsackedSegments <= counters.retransmissions else { return false }
        guard var current = episode, current.retransmissions > 0, block.left.seqGE(current.start),
            block.right.seqLE(current.end)
        else { return true }
        current.dsacks += 1
        episode = current
        counters.spuriousRetransmissions += 1
        if current.dsacks >= current.retransmissions, scoreboard.retransmissionsOutstanding == 0 {
            undoReduction(countRetransmissions: false)
        }
        return true
    }

    /// RFC 8985 6.2 step 4: the reordering window grows by a step for each round trip that
    /// brings a D-SACK, and returns to one step after 16 recoveries without one.
    private mutating func adaptReorderingWindow(dsackSeen: Bool) {
        if let round = dsackRound, sndUna.seqGE(round) { dsackRound = nil }
        guard dsackSeen, dsackRound == nil else { return }
        dsackRound = sndMax
        reorderingMultiplier = min(reorderingMultiplier + 1, Self.maximumReorderingMultiplier)
        reorderingPersistence = Self.reorderingPersistence
    }

    /// Fast or timeout recovery is over (SND.UNA reached `recover`).
    mutating func recoveryEnded() {
        recoveryPhase = .open
        reorderingPersistence = max(0, reorderingPersistence - 1)
        if reorderingPersistence == 0 { reorderingMultiplier = 1 }
    }

    /// RACK (RFC 8985 6.2): marks what is lost, arms the reordering timer, starts recovery.
    mutating func detectLosses(now: NIODeadline) {
        guard lossRecovery == .rack, !scoreboard.isEmpty else {
            timers[.reordering] = nil
            return
        }
        let (newlyLost, timeout) = scoreboard.detectLosses(now: now, reorderingWindow: reorderingWindow)
        timers[.reordering] = timeout
        if newlyLost > 0, recoveryPhase == .open { enterRecovery(now: now) }
    }

    private var reorderingWindow: TimeAmount {
        if !scoreboard.reorderingSeen, inRecovery || scoreboard.sackedSegments >= 3 { return .zero }
        guard let minimumRTT else { return .zero }
        let window = TimeAmount.nanoseconds(minimumRTT.nanoseconds / 4 * Int64(reorderingMultiplier))
        return min(window, rtt.smoothed ?? window)
    }

    // MARK: Responses

    private mutating func enterRecovery(now: NIODeadline) {
        beginEpisode()
        recoveryPhase = .fast
        recoveryPoint = sndMax
        congestion.onCongestionEvent(now: now, bytesInFlight: flightSize)
        counters.fastRetransmits += 1
        forceRetransmit = true
        cancelTailLossProbe()
    }

    /// The RTO fired with data outstanding (and the retry limit not reached).
    mutating func enterTimeoutRecovery(now: NIODeadline) {
        // A new congestion event unless this RTO extends one already answered: fast recovery's,
        // or an earlier RTO's with no progress since (RFC 5681 4.2 holds ssthresh then, as Linux).
        // Only a new event's reduction can be undone if it proves spurious.
        let newEvent = recoveryPhase == .open || (recoveryPhase == .timeout && consecutiveTimeouts == 1)
        if newEvent { beginEpisode() }
        // RFC 5681 (4) / RFC 8985 6.3: loss window of one segment, everything unSACKed is lost,
        // and (RFC 6582) no fast recovery for losses from before the timeout.
        congestion.onRetransmissionTimeout(now: now, bytesInFlight: flightSize, newCongestionEvent: newEvent)
        // The segment at SND.UNA SACKed yet never acknowledged: the receiver reneged on what it
        // SACKed, so none of it can be trusted and everything goes again (RFC 2018 8, as Linux).
        scoreboard.markAllLost(forgettingSACKs: scoreboard.segments.first?.sacked == true)
        recoveryPhase = .timeout
        recoveryPoint = sndMax
        duplicateACKs = 0
        inflation = 0
        forceRetransmit = true
        cancelTailLossProbe()
        timers[.reordering] = nil
    }

    /// Fast recovery's share of an ACK that advanced SND.UNA: its end, or NewReno's partial ACK.
    mutating func fastRecoveryAcknowledged(ack: UInt32, acked: Int, now: NIODeadline) {
        if ack.seqGE(recoveryPoint) {
            recoveryEnded()
            inflation = 0
            congestion.onRecoveryExit(now: now, bytesInFlight: flightSize)
        } else if lossRecovery == .newReno {
            // RFC 6582 partial ACK: resend the next hole, deflate by what was acked.
            if !scoreboard.isEmpty {
                scoreboard.markLost(at: 0)
                forceRetransmit = true
            }
            inflation = max(0, inflation - acked) + (acked >= sendMSS ? sendMSS : 0)
        }
    }

    // MARK: Undo

    private mutating func beginEpisode() {
        episode = RecoveryEpisode(
            controllerBefore: congestion, eifelPending: timestampsEnabled, start: sndUna, end: sndMax)
    }

    /// Counts a retransmission toward the episode (the first one is what Eifel judges).
    mutating func noteEpisodeRetransmission(end: UInt32, now: NIODeadline) {
        guard var current = episode else { return }
        current.retransmissions += 1
        if current.firstRetransmitTimestamp == nil {
            current.firstRetransmitTimestamp = timestampNow(now)
            current.firstRetransmitEnd = end
        }
        episode = current
    }

    /// Eifel (RFC 3522): the first ACK past the episode's first retransmission echoes the original
    /// transmission's timestamp if the retransmission was unnecessary. Only with none of the
    /// episode's retransmissions outstanding is the reduction undone (as Linux): another may have
    /// repaired a real loss. Until then each ACK is judged the same way.
    mutating func judgeByTimestamp(ack: UInt32, segment: TCPSegment) {
        guard var current = episode, current.eifelPending, let retransmitted = current.firstRetransmitTimestamp,
            ack.seqGE(current.firstRetransmitEnd)
        else { return }
        guard let echo = segment.options.timestamps?.echoReply, echo != 0, echo.seqLT(retransmitted) else {
            current.eifelPending = false
            episode = current
            return
        }
        if scoreboard.retransmissionsOutstanding == 0 { undoReduction(countRetransmissions: true) }
    }

    /// The last reduction was for nothing: restore the window it cut and stop resending.
    private mutating func undoReduction(countRetransmissions: Bool) {
        guard let current = episode else { return }
        let previous = current.controllerBefore
        if previous.congestionWindow > congestion.congestionWindow { congestion = previous }
        if countRetransmissions { counters.spuriousRetransmissions += current.retransmissions }
        counters.recoveryUndos += 1
        episode = nil
        recoveryPhase = .open
        inflation = 0
        scoreboard.clearLost()
        scoreboard.noteReordering()
    }

    // MARK: Tail loss probe (RFC 8985 7)

    /// RFC 8985 7.3: send one new segment if the window allows, else resend the last one, so
    /// that a loss at the tail shows up as a SACK instead of waiting for the RTO.
    mutating func probeTimerExpired(now: NIODeadline) {
        guard !scoreboard.isEmpty, !inRecovery, probeEnd == nil else { return }
        probePending = true
        timers[.retransmission] = now + rtt.rto
    }

    mutating func armTailLossProbe(now: NIODeadline) {
        guard lossRecovery == .rack, !inRecovery, probeEnd == nil, consecutiveTimeouts == 0,
            let srtt = rtt.smoothed, let last = scoreboard.last
        else {
            timers[.tailLossProbe] = nil
            return
        }
        switch state {
        case .established, .closeWait, .finWait1, .closing, .lastAck: break
        default:
            timers[.tailLossProbe] = nil
            return
        }
        var timeout = srtt + srtt
        if scoreboard.segments.count == 1 || last.start == sndUna { timeout = timeout + Self.worstCaseDelayedACK }
        timeout = max(timeout, Self.minimumProbeTimeout)
        // A probe due after the RTO goes at the RTO's time instead (RFC 8985 7.2, as Linux), and
        // fires first (see TCPTimer): a lone segment's tail loss then costs a probe, not a timeout.
        let deadline = now + timeout
        if let rto = timers[.retransmission], deadline > rto {
            timers[.tailLossProbe] = rto
        } else {
            timers[.tailLossProbe] = deadline
        }
    }

    mutating func sendProbe(now: NIODeadline) -> TCPSegment? {
        probePending = false
        guard !scoreboard.isEmpty else { return nil }
        let segment: TCPSegment?
        if let fresh = sendNewData(now: now, probe: true) {
            segment = fresh
        } else if let index = scoreboard.lastUnsackedIndex() {
            segment = retransmit(at: index, now: now)
            probeRetransmitted = true
        } else {
            segment = nil
        }
        if segment != nil {
            counters.tailLossProbes += 1
            probeEnd = sndMax
            timers[.tailLossProbe] = nil
        }
        return segment
    }

    private mutating func cancelTailLossProbe() {
        timers[.tailLossProbe] = nil
        probePending = false
        probeEnd = nil
        probeRetransmitted = false
    }

    /// RFC 8985 7.4 (Linux's tcp_process_tlp_ack): once the ACKs reach the probe's end, a
    /// resent probe was redundant if it is D-SACKed or met by a pure duplicate ACK (both copies
    /// arrived); if the ACKs go past it with neither, its copy repaired a loss, which is answered
    /// like any other. An ACK exactly at the end may yet be followed by the D-SACK: wait.
    private mutating func judgeTailLossProbe(
        ack: UInt32, dsack: TCPSACKBlock?, pureDuplicate: Bool, flightBefore: Int, now: NIODeadline
    ) {
        guard let end = probeEnd, ack.seqGE(end) else { return }
        if !probeRetransmitted || dsack?.right == end {
            probeEnd = nil
        } else if ack.seqGT(end) {
            probeEnd = nil
            if !inRecovery { respondToProbeRepair(flightBefore: flightBefore, now: now) }
        } else if pureDuplicate {
            probeEnd = nil
        }
        if probeEnd == nil { probeRetransmitted = false }
    }

    /// A probe repaired a loss: respond as to any loss, without a recovery episode.
    private mutating func respondToProbeRepair(flightBefore: Int, now: NIODeadline) {
        congestion.onCongestionEvent(now: now, bytesInFlight: flightBefore)
        congestion.onRecoveryExit(now: now, bytesInFlight: flightSize)
    }
}
