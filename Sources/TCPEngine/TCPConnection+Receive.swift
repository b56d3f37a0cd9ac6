import NIOCore
import TOUWire

// The receiver: in-order and out-of-order data, the SACK blocks that report it, the window
// we offer, and receive-buffer auto-tuning.
extension TCPConnection {
    mutating func processData(_ segment: TCPSegment, now: NIODeadline) {
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
                } else if timers[.delayedACK] == nil {
                    timers[.delayedACK] = now + configuration.delayedACKTimeout
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
            events.append(.peerFinished)
            switch state {
            case .established:
                // The ACK waits as a delayed one (as Linux's does): an application that closes at
                // the end of the stream sends its FIN in it, one segment instead of two.
                if timers[.delayedACK] == nil, !ackNow {
                    timers[.delayedACK] = now + configuration.delayedACKTimeout
                }
                state = .closeWait
            case .finWait1:
                ackNow = true
                state = .closing
            case .finWait2:
                ackNow = true
                enterTimeWait(now: now)
            default: ackNow = true
            }
        }
    }

    /// The block holding the latest arrival goes first; blocks it absorbed are dropped.
    private mutating func rememberSACKBlock(_ block: TCPSACKBlock) {
        sackHistory.removeAll { $0.left.seqGE(block.left) && $0.right.seqLE(block.right) }
        sackHistory.insert(block, at: 0)
        if sackHistory.count > 4 { sackHistory.removeLast(sackHistory.count - 4) }
    }

    /// RFC 2018 4: a D-SACK first, then the block holding the latest arrival, then the others
    /// most recent first, as many as fit beside the payload.
    mutating func addSACKBlocks(to options: inout TCPOptions, payloadLength: Int) {
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

    /// Receive-window auto-tuning (like Linux's DRS): once per RTT, let the buffer hold four
    /// times what the application read in that RTT (twice the BDP, with room to double), within
    /// the cap. What it read, not what arrived (Linux counts copied bytes too): a reader that
    /// stalls must not grow its buffer to the cap while data keeps arriving.
    private mutating func autotuneReceiveBuffer(now: NIODeadline) {
        let cap = configuration.effectiveMaximumReceiveBufferSize
        guard receiveBufferLimit < cap, let srtt = rtt.smoothed else { return }
        guard let start = autotuneStart else {
            autotuneStart = now
            autotuneMark = bytesConsumed
            return
        }
        guard now - start >= max(srtt, .milliseconds(1)) else { return }
        let consumed = bytesConsumed - autotuneMark
        let target = min(cap, 4 * consumed)
        if target > receiveBufferLimit { receiveBufferLimit = target }
        autotuneStart = now
        autotuneMark = bytesConsumed
    }

    mutating func signalReadable() {
        guard !readableEventPending else { return }
        readableEventPending = true
        events.append(.readable)
    }

    // MARK: The window we offer

    private var availableReceiveSpace: Int { max(0, receiveBufferLimit - receiveBuffer.readableBytes) }

    /// What the next window may offer: buffer space, within the shared cap. Inlined: called from
    /// `read`, the getter made every read copy the whole connection.
    @inline(__always) var offerableReceiveSpace: Int {
        min(availableReceiveSpace, max(receiveWindowCap, configuration.advertisedMSS))
    }

    /// The window currently offered: from RCV.NXT to the advertised right edge.
    var currentReceiveWindow: Int { max(0, advertisedEdge.seqDistance(from: rcvNxt)) }

    mutating func windowField(forSYN: Bool) -> UInt16 {
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

    mutating func raiseAdvertisedEdge(to edge: UInt32) {
        if edge.seqGT(advertisedEdge) { advertisedEdge = edge }
    }
}
