import DequeModule
import NIOCore

/// One segment sent and not yet cumulatively acknowledged. Retransmissions resend the same
/// range, so an entry keeps its boundaries for life (only a partial ACK trims its front).
struct SentSegment {
    var start: UInt32
    /// One past the last sequence number, the FIN included.
    var end: UInt32
    var sentAt: NIODeadline
    var fin: Bool
    var sacked = false
    /// Deemed lost and not yet retransmitted.
    var lost = false
    var retransmitted = false
    /// For a SACKed entry: the serial of a later entry with only SACKed entries between (a
    /// union-find link, so SACKed runs are crossed in a step or two).
    var sackedThrough = 0
    /// The in-flight list in send order (serials, `TCPScoreboard.none` at the ends).
    var sentBefore = TCPScoreboard.none
    var sentAfter = TCPScoreboard.none

    var length: Int { end.seqDistance(from: start) }
    var payloadLength: Int { length - (fin ? 1 : 0) }
    /// RFC 6675 pipe: counts unless SACKed or lost-and-not-yet-resent.
    var inPipe: Bool { !sacked && !lost }
}

/// The sender's scoreboard (RFC 6675) plus RACK's per-connection state (RFC 8985): which sent
/// segments the peer holds (SACK), which are lost, and when each was last sent.
/// Bounded by the send buffer: one entry per segment in flight.
///
/// Per-ACK work follows what the ACK changes, not the window (a 16,000-segment flight with a
/// hole at its head made every ACK walk the SACKed run twice): SACKed runs are crossed by
/// union-find links, and RACK keeps the entries in the pipe in the order they were sent
/// (Linux's tsorted list), where it looks only at the expired head and at what the RACK segment
/// has newly passed.
struct TCPScoreboard {
    private(set) var segments: Deque<SentSegment> = []
    /// Entries are numbered in the order they were sent; `segments[i]` has serial `firstSerial + i`.
    private var firstSerial = 0
    /// The in-pipe entries in send order (retransmissions move to the back).
    private var oldestSent = TCPScoreboard.none
    private var newestSent = TCPScoreboard.none
    /// The last entry of that list sent before the RACK segment (`none`: none known). The RACK
    /// segment only moves later, so everything up to it stays so; RACK resumes from here.
    private var sentBeforeRACK = TCPScoreboard.none
    static let none = -1

    /// Bytes in flight per RFC 6675's pipe.
    private(set) var pipe = 0
    private(set) var sackedBytes = 0
    private(set) var lostSegments = 0
    private(set) var sackedSegments = 0
    /// Entries resent and neither SACKed nor acknowledged since (Linux's retrans_out, with the
    /// lost ones): while any is, a reduction cannot be shown spurious.
    private(set) var retransmissionsOutstanding = 0
    /// Entries looked at by SACK processing, loss detection and the search for lost segments
    /// (for tests: per-ACK work must follow what the ACK changes).
    private(set) var entriesVisited = 0

    // MARK: RACK (RFC 8985 section 6)
    /// Send time and end of the most recently sent segment known delivered.
    private(set) var rackSentAt: NIODeadline?
    private(set) var rackEnd: UInt32 = 0
    private(set) var rackRTT: TimeAmount = .zero
    /// Highest end delivered so far (RACK.fack); a delivery below it was reordered.
    private var deliveredEnd: UInt32?
    private(set) var reorderingSeen = false
    /// No entry before this sequence number is marked lost (where retransmission looks first).
    private var lostHint: UInt32?

    var isEmpty: Bool { segments.isEmpty }
    var last: SentSegment? { segments.last }

    mutating func recordTransmission(start: UInt32, end: UInt32, fin: Bool, now: NIODeadline) {
        segments.append(SentSegment(start: start, end: end, sentAt: now, fin: fin))
        pipe += end.seqDistance(from: start)
        appendToSent(segments.count - 1)
    }

    /// Index of the first entry whose end lies after `sequence`.
    func firstIndex(endingAfter sequence: UInt32) -> Int {
        var low = 0
        var high = segments.count
        while low < high {
            let middle = (low + high) / 2
            if segments[middle].end.seqLE(sequence) { low = middle + 1 } else { high = middle }
        }
        return low
    }

    mutating func recordRetransmission(at index: Int, now: NIODeadline) {
        guard segments.indices.contains(index) else { return }
        if segments[index].lost {
            segments[index].lost = false
            lostSegments -= 1
            pipe += segments[index].length
        } else if segments[index].inPipe {
            // A probe resending something still in flight leaves the pipe as it is: counting the
            // copy too (RFC 6675 would) could never be undone when one ACK covers both.
            removeFromSent(index)
        }
        if !segments[index].retransmitted { retransmissionsOutstanding += 1 }
        segments[index].retransmitted = true
        segments[index].sentAt = now
        // In flight again, newest: RACK must watch it (a retransmission can be lost too).
        if segments[index].inPipe { appendToSent(index) }
    }

    mutating func markLost(at index: Int) {
        guard segments.indices.contains(index), segments[index].inPipe else { return }
        removeFromSent(index)
        segments[index].lost = true
        lostSegments += 1
        pipe -= segments[index].length
        lower(&lostHint, to: segments[index].start)
    }

    /// RTO (RFC 6675 5.1, RFC 8985 6.3): everything not SACKed is presumed lost. With
    /// `forgettingSACKs` the SACKed entries are too: the receiver may have dropped them (RFC 2018 8).
    mutating func markAllLost(forgettingSACKs: Bool) {
        for index in segments.indices {
            if segments[index].inPipe {
                markLost(at: index)
            } else if forgettingSACKs, segments[index].sacked {
                segments[index].sacked = false
                sackedSegments -= 1
                sackedBytes -= segments[index].length
                if segments[index].retransmitted { retransmissionsOutstanding += 1 }
                segments[index].lost = true
                lostSegments += 1
                lower(&lostHint, to: segments[index].start)
            }
        }
    }

    /// Clears every loss mark (a spurious timeout or recovery was undone).
    mutating func clearLost() {
        for index in segments.indices where segments[index].lost {
            segments[index].lost = false
            lostSegments -= 1
            pipe += segments[index].length
        }
        rebuildSentOrder()
    }

    /// The first entry deemed lost and not yet resent.
    mutating func nextLostIndex() -> Int? {
        guard lostSegments > 0 else { return nil }
        var index = lostHint.map { firstIndex(endingAfter: $0) } ?? 0
        while index < segments.count {
            index = skipSACKed(from: index)
            guard index < segments.count else { break }
            entriesVisited += 1
            if segments[index].lost {
                lostHint = segments[index].start
                return index
            }
            index += 1
        }
        return nil
    }

    /// The highest entry the peer does not hold (what a tail loss probe resends).
    func lastUnsackedIndex() -> Int? {
        var index = segments.count - 1
        while index >= 0 {
            if !segments[index].sacked { return index }
            index -= 1
        }
        return nil
    }

    /// Removes what `ack` covers. Returns bytes newly delivered (not previously SACKed) and the
    /// newest entry this ACK delivered (for RTT sampling: one SACKed earlier would overstate it).
    mutating func acknowledge(upTo ack: UInt32, now: NIODeadline, minimumRTT: TimeAmount?)
        -> (delivered: Int, newest: SentSegment?)
    {
        var delivered = 0
        var newest: SentSegment?
        while let first = segments.first, first.start.seqLT(ack) {
            if first.end.seqLE(ack) {
                if first.inPipe { removeFromSent(0) }
                if first.retransmitted, !first.sacked { retransmissionsOutstanding -= 1 }
                segments.removeFirst()
                firstSerial += 1
                if first.sacked {
                    sackedBytes -= first.length
                    sackedSegments -= 1
                } else {
                    delivered += first.length
                    if first.lost { lostSegments -= 1 } else { pipe -= first.length }
                    rackUpdate(first, now: now, minimumRTT: minimumRTT)
                    newest = first
                }
            } else {
                // Partial ACK inside a segment (a probe or a shrunken MSS): trim its front.
                let covered = ack.seqDistance(from: first.start)
                delivered += first.sacked ? 0 : covered
                if first.sacked { sackedBytes -= covered } else if !first.lost { pipe -= covered }
                segments[segments.startIndex].start = ack
                break
            }
        }
        return (delivered, newest)
    }

    /// Marks entries fully inside `[left, right)` as SACKed; returns bytes newly SACKed. Runs
    /// already SACKed are crossed by their links, so the cost follows the entries newly marked.
    mutating func applySACK(left: UInt32, right: UInt32, now: NIODeadline, minimumRTT: TimeAmount?) -> Int {
        var index = firstIndex(endingAfter: left)
        var newly = 0
        while index < segments.count {
            index = skipSACKed(from: index)
            guard index < segments.count, segments[index].start.seqLT(right) else { break }
            entriesVisited += 1
            let entry = segments[index]
            if entry.start.seqGE(left), entry.end.seqLE(right) {
                if entry.inPipe { removeFromSent(index) }
                if entry.retransmitted { retransmissionsOutstanding -= 1 }
                segments[index].sacked = true
                segments[index].sackedThrough = firstSerial + index + 1
                sackedSegments += 1
                sackedBytes += entry.length
                newly += entry.length
                if entry.lost { lostSegments -= 1 } else { pipe -= entry.length }
                segments[index].lost = false
                rackUpdate(entry, now: now, minimumRTT: minimumRTT)
            }
            index += 1
        }
        return newly
    }

    /// RFC 8985 6.2 step 2: remember the most recently sent delivered segment.
    private mutating func rackUpdate(_ entry: SentSegment, now: NIODeadline, minimumRTT: TimeAmount?) {
        let rtt = now - entry.sentAt
        // A retransmission ACKed faster than any RTT seen: the original was delivered, not it.
        if entry.retransmitted, let minimumRTT, rtt < minimumRTT { return }
        if let sentAt = rackSentAt {
            if entry.sentAt > sentAt || (entry.sentAt == sentAt && entry.end.seqGT(rackEnd)) {
                rackSentAt = entry.sentAt
                rackEnd = entry.end
                rackRTT = rtt
            }
        } else {
            rackSentAt = entry.sentAt
            rackEnd = entry.end
            rackRTT = rtt
        }
        if let fack = deliveredEnd, entry.end.seqLT(fack) {
            if !entry.retransmitted { reorderingSeen = true }
        } else {
            deliveredEnd = entry.end
        }
    }

    /// RFC 8985 6.2 step 5: every entry sent before the RACK segment and not delivered within
    /// RACK.rtt + reorderingWindow is lost. Returns how many were newly marked, and when the
    /// last entry still waiting would time out (the reordering timer, the latest as RFC 8985
    /// has it). Send times, and so deadlines, grow along the send-order list: the expired
    /// entries are its head, and the one waiting longest is the last sent before the RACK
    /// segment. So the work is the entries marked plus those the RACK segment newly passed,
    /// not every entry waiting (a burst lost inside the reordering window made each ACK walk
    /// all of it).
    mutating func detectLosses(now: NIODeadline, reorderingWindow: TimeAmount)
        -> (newlyLost: Int, timeout: NIODeadline?)
    {
        guard let rackSentAt else { return (0, nil) }
        var next = sentBeforeRACK == Self.none ? oldestSent : segments[sentBeforeRACK - firstSerial].sentAfter
        while next != Self.none {
            let entry = segments[next - firstSerial]
            entriesVisited += 1
            guard entry.sentAt < rackSentAt || (entry.sentAt == rackSentAt && entry.end.seqLT(rackEnd)) else { break }
            sentBeforeRACK = next
            next = entry.sentAfter
        }
        guard sentBeforeRACK != Self.none else { return (0, nil) }
        let latest = segments[sentBeforeRACK - firstSerial].sentAt + rackRTT + reorderingWindow
        var newlyLost = 0
        while oldestSent != Self.none {
            let index = oldestSent - firstSerial
            entriesVisited += 1
            guard segments[index].sentAt + rackRTT + reorderingWindow <= now else { return (newlyLost, latest) }
            let wasLast = oldestSent == sentBeforeRACK
            markLost(at: index)
            newlyLost += 1
            if wasLast { break }
        }
        return (newlyLost, nil)
    }

    mutating func noteReordering() { reorderingSeen = true }

    /// A nil hint already means "from the first entry"; only a set hint moves down.
    private func lower(_ hint: inout UInt32?, to sequence: UInt32) {
        if let current = hint, current.seqGT(sequence) { hint = sequence }
    }

    // MARK: SACKed runs

    /// The first entry at or after `index` that is not SACKed (union-find with path compression).
    private mutating func skipSACKed(from index: Int) -> Int {
        var found = index
        while found < segments.count, segments[found].sacked {
            entriesVisited += 1
            found = segments[found].sackedThrough - firstSerial
        }
        var step = index
        while step < found, segments[step].sacked {
            let next = segments[step].sackedThrough - firstSerial
            segments[step].sackedThrough = firstSerial + found
            step = next
        }
        return found
    }

    // MARK: Send order

    private mutating func appendToSent(_ index: Int) {
        let serial = firstSerial + index
        segments[index].sentBefore = newestSent
        segments[index].sentAfter = Self.none
        if newestSent == Self.none {
            oldestSent = serial
        } else {
            segments[newestSent - firstSerial].sentAfter = serial
        }
        newestSent = serial
    }

    private mutating func removeFromSent(_ index: Int) {
        let before = segments[index].sentBefore
        let after = segments[index].sentAfter
        if sentBeforeRACK == firstSerial + index { sentBeforeRACK = before }
        if before == Self.none { oldestSent = after } else { segments[before - firstSerial].sentAfter = after }
        if after == Self.none { newestSent = before } else { segments[after - firstSerial].sentBefore = before }
        segments[index].sentBefore = Self.none
        segments[index].sentAfter = Self.none
    }

    /// Relinks the in-pipe entries by send time (after loss marks were cleared: rare).
    private mutating func rebuildSentOrder() {
        oldestSent = Self.none
        newestSent = Self.none
        sentBeforeRACK = Self.none
        let order = segments.indices.filter { segments[$0].inPipe }.sorted {
            segments[$0].sentAt < segments[$1].sentAt || (segments[$0].sentAt == segments[$1].sentAt && $0 < $1)
        }
        for index in order { appendToSent(index) }
    }

    /// Recomputes the counters from the entries; the entries must tile `[start, end)` exactly
    /// (the SYN is not in the scoreboard, so `start` may precede the first entry by one), and the
    /// send-order list must hold exactly the entries in the pipe, oldest first.
    func invariantViolation(from start: UInt32, to end: UInt32) -> String? {
        var pipe = 0
        var sacked = 0
        var sackedCount = 0
        var lost = 0
        var inPipe = 0
        var retransmitted = 0
        var cursor = segments.first?.start ?? end
        if cursor != start && cursor != start &+ 1 { return "first entry \(cursor) is not at SND.UNA \(start)" }
        for (index, entry) in segments.enumerated() {
            if entry.start != cursor { return "gap or overlap at \(entry.start)" }
            if entry.length <= 0 { return "empty entry at \(entry.start)" }
            if entry.sacked && entry.lost { return "entry both SACKed and lost" }
            if entry.sacked, entry.sackedThrough <= firstSerial + index { return "SACK link points back at \(entry.start)" }
            if entry.inPipe {
                pipe += entry.length
                inPipe += 1
            }
            if entry.sacked {
                sacked += entry.length
                sackedCount += 1
            }
            if entry.lost { lost += 1 }
            if entry.retransmitted, !entry.sacked { retransmitted += 1 }
            cursor = entry.end
        }
        if !segments.isEmpty, cursor != end { return "entries end at \(cursor), SND.MAX is \(end)" }
        if pipe != self.pipe { return "pipe \(self.pipe) != \(pipe)" }
        if sacked != sackedBytes || sackedCount != sackedSegments { return "SACKed bytes or count off" }
        if lost != lostSegments { return "lost count \(lostSegments) != \(lost)" }
        if retransmitted != retransmissionsOutstanding { return "retransmissions outstanding off" }
        var listed = 0
        var serial = oldestSent
        var previous: NIODeadline?
        while serial != Self.none {
            let index = serial - firstSerial
            guard segments.indices.contains(index), segments[index].inPipe else { return "send order lists \(serial)" }
            if let previous, segments[index].sentAt < previous { return "send order out of time order" }
            previous = segments[index].sentAt
            listed += 1
            if listed > segments.count { return "send order has a cycle" }
            serial = segments[index].sentAfter
        }
        if listed != inPipe { return "send order lists \(listed) of \(inPipe) entries in the pipe" }
        return nil
    }
}
