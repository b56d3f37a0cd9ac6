import NIOCore
import TCPEngine
import TOUWire

/// One loss episode through two real engines, recorded: a sender with `segments` full segments
/// in flight loses the first of them; the receiver holds the rest out of order and SACKs them
/// until the retransmission fills the hole. Both engines run on a virtual clock over a lossless
/// path of `rtt` without a bottleneck, warmed up by slow start until the window holds the flight.
/// Each side's calls during the measured flight are recorded with the engine as it was before
/// them, so the flight can be replayed into either engine alone (to time it, or inspect it).
public struct LossEpisode {
    /// One engine call as the recorded run made it; a replay makes the same calls in order.
    public enum Call {
        case receive(TCPSegment, NIODeadline)
        case timeout(NIODeadline)
        case transmit(NIODeadline)
        case write(ByteBuffer)
        /// Events drained and everything readable read.
        case application
    }

    /// One engine: before the measured flight, after it, and the calls in between.
    public struct Side {
        public var start: TCPConnection
        public var end: TCPConnection
        public var calls: [Call]
    }

    public var sender: Side
    public var receiver: Side
    /// Most segments in flight at once during the measured flight.
    public var peakSegmentsInFlight: Int
    /// The sender's counters before and after the measured flight.
    public var senderStatsBefore: TCPStats
    public var senderStatsAfter: TCPStats { sender.end.stats }

    /// Replays `calls` into a copy of `start` and returns it.
    public static func replay(_ calls: [Call], into start: TCPConnection) -> TCPConnection {
        var connection = start
        for call in calls {
            switch call {
            case .receive(let segment, let now): connection.receive(segment, now: now)
            case .timeout(let now): connection.handleTimeout(now: now)
            case .transmit(let now): while connection.pollTransmit(now: now) != nil {}
            case .write(let bytes): _ = connection.write(bytes)
            case .application: runApplication(&connection)
            }
        }
        return connection
    }

    private static func runApplication(_ connection: inout TCPConnection) {
        while connection.pollEvent() != nil {}
        while connection.read(maximumBytes: 1 << 20) != nil {}
    }

    private enum Phase { case warmUp, drain, measured }

    /// Runs the episode; nil if the flight did not complete within 600 s of virtual time.
    /// `configuration` applies to both engines; its buffers are raised to hold the flight.
    public static func record(
        segments: Int, configuration: TCPConfiguration, rtt: TimeAmount = .milliseconds(20),
        losesFirstSegment: Bool = true
    ) -> LossEpisode? {
        var tcp = configuration
        let payload = tcp.fullSegmentPayload
        let flightBytes = segments * payload
        tcp.sendBufferSize = max(tcp.sendBufferSize, 2 * flightBytes)
        tcp.receiveBufferSize = max(tcp.receiveBufferSize, 2 * flightBytes)
        tcp.maximumReceiveBufferSize = max(tcp.maximumReceiveBufferSize, tcp.receiveBufferSize)

        var now = NIODeadline.uptimeNanoseconds(1_000_000_000)
        let limit = now + .seconds(600)
        var sender = TCPConnection.connect(
            localPort: 40_000, remotePort: 6_080, configuration: tcp, initialSequenceNumber: 1, now: now)
        var receiver: TCPConnection?
        // The simulator's links without impairments: a fixed delay, segments through the codec.
        let path = LinkConfiguration(delay: .nanoseconds(rtt.nanoseconds / 2))
        var forward = OneWayLink(configuration: path, start: now)
        var reverse = OneWayLink(configuration: path, start: now)
        var random = SimulationRandom(seed: 0)
        let chunk = ByteBuffer(repeating: 0x61, count: 64 * 1024)

        var phase = Phase.warmUp
        var senderCalls: [Call] = []
        var receiverCalls: [Call] = []
        var senderAtStart = sender
        var receiverAtStart: TCPConnection?
        var statsBefore = TCPStats()
        var dropPending = false
        var highestSent: UInt32?
        var highestAcked: UInt32?
        var peak = 0

        while now < limit {
            // The applications: the sender keeps its buffer full while warming up, then writes
            // the measured flight once everything before it is acknowledged.
            switch phase {
            case .warmUp:
                if sender.stats.congestionWindow >= flightBytes + 2 * payload {
                    phase = .drain
                } else {
                    while sender.sendBufferFreeSpace > 0, sender.write(chunk) > 0 {}
                }
            case .drain:
                if sender.isSendQueueEmptyAndAcknowledged, let current = receiver {
                    phase = .measured
                    senderAtStart = sender
                    receiverAtStart = current
                    statsBefore = sender.stats
                    dropPending = losesFirstSegment
                    var remaining = flightBytes
                    while remaining > 0 {
                        let piece = chunk.getSlice(at: chunk.readerIndex, length: min(remaining, chunk.readableBytes)) ?? chunk
                        remaining -= sender.write(piece)
                        senderCalls.append(.write(piece))
                    }
                }
            case .measured:
                if sender.isSendQueueEmptyAndAcknowledged, let current = receiver, let start = receiverAtStart {
                    return LossEpisode(
                        sender: Side(start: senderAtStart, end: sender, calls: senderCalls),
                        receiver: Side(start: start, end: current, calls: receiverCalls),
                        peakSegmentsInFlight: peak, senderStatsBefore: statsBefore)
                }
            }
            let recording = phase == .measured
            runApplication(&sender)
            if recording { senderCalls.append(.application) }
            if var current = receiver.take() {
                runApplication(&current)
                receiver = current
                if recording { receiverCalls.append(.application) }
            }

            // Output.
            while let segment = sender.pollTransmit(now: now) {
                if segment.payload.readableBytes > 0 {
                    let end = segment.sequenceNumber &+ UInt32(segment.payload.readableBytes)
                    if highestSent.map({ after(end, $0) }) ?? true { highestSent = end }
                    if dropPending {
                        dropPending = false
                        continue
                    }
                }
                forward.send(segment, now: now, random: &random)
            }
            if recording { senderCalls.append(.transmit(now)) }
            if var current = receiver.take() {
                while let segment = current.pollTransmit(now: now) { reverse.send(segment, now: now, random: &random) }
                receiver = current
                if recording { receiverCalls.append(.transmit(now)) }
            }
            if recording, let sent = highestSent, let acked = highestAcked {
                peak = max(peak, Int(Int32(bitPattern: sent &- acked)) / payload)
            }

            // The next instant anything happens.
            var next: NIODeadline?
            for candidate in [forward.nextDelivery, reverse.nextDelivery, sender.nextDeadline, receiver?.nextDeadline] {
                if let candidate, next.map({ candidate < $0 }) ?? true { next = candidate }
            }
            guard let next else { break }
            now = max(now, next)
            while let segment = forward.popDue(now: now) {
                // Taken out so the engine's storage stays uniquely referenced (no copies).
                if var current = receiver.take() {
                    current.receive(segment, now: now)
                    receiver = current
                    if recording { receiverCalls.append(.receive(segment, now)) }
                } else {
                    receiver = TCPConnection.accept(
                        syn: segment, configuration: tcp, initialSequenceNumber: 1 << 31, now: now)
                }
            }
            while let segment = reverse.popDue(now: now) {
                sender.receive(segment, now: now)
                if recording { senderCalls.append(.receive(segment, now)) }
                if highestAcked.map({ after(segment.acknowledgmentNumber, $0) }) ?? true {
                    highestAcked = segment.acknowledgmentNumber
                }
            }
            if let deadline = sender.nextDeadline, deadline <= now {
                sender.handleTimeout(now: now)
                if recording { senderCalls.append(.timeout(now)) }
            }
            if var current = receiver.take() {
                if let deadline = current.nextDeadline, deadline <= now {
                    current.handleTimeout(now: now)
                    if recording { receiverCalls.append(.timeout(now)) }
                }
                receiver = current
            }
        }
        return nil
    }

    /// Sequence-number order (RFC 1982 serial arithmetic).
    private static func after(_ a: UInt32, _ b: UInt32) -> Bool { Int32(bitPattern: a &- b) > 0 }
}
