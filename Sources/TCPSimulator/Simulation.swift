import NIOCore
import TCPEngine
import TOUWire

/// What to simulate: the path in each direction, both engines' configurations and the scripted
/// transfers.
public struct SimulationConfiguration: Sendable {
    /// Client to server.
    public var forward: LinkConfiguration
    /// Server to client.
    public var reverse: LinkConfiguration
    public var client: TCPConfiguration
    public var server: TCPConfiguration
    /// Bytes the client sends before its FIN; nil sends forever (a bulk sender for benchmarks).
    public var clientBytes: Int?
    /// Bytes the server sends before its FIN; nil sends forever.
    public var serverBytes: Int?
    public var writeChunk: Int
    public var readChunk: Int
    /// A run that makes no progress (no event, no byte read) for this long has stalled.
    public var stallTimeout: TimeAmount

    public init(
        forward: LinkConfiguration = LinkConfiguration(), reverse: LinkConfiguration = LinkConfiguration(),
        client: TCPConfiguration = TCPConfiguration(), server: TCPConfiguration = TCPConfiguration(),
        clientBytes: Int? = 0, serverBytes: Int? = 0, writeChunk: Int = 64 * 1024, readChunk: Int = 256 * 1024,
        stallTimeout: TimeAmount = .seconds(600)
    ) {
        self.forward = forward
        self.reverse = reverse
        self.client = client
        self.server = server
        self.clientBytes = clientBytes
        self.serverBytes = serverBytes
        self.writeChunk = writeChunk
        self.readChunk = readChunk
        self.stallTimeout = stallTimeout
    }

    /// The same impairments in both directions.
    public init(link: LinkConfiguration, tcp: TCPConfiguration = TCPConfiguration(), clientBytes: Int?, serverBytes: Int?) {
        self.init(forward: link, reverse: link, client: tcp, server: tcp, clientBytes: clientBytes, serverBytes: serverBytes)
    }
}

/// The outcome of a run, or a snapshot of one in progress.
public struct SimulationResult: Sendable {
    public var client: EndpointResult
    public var server: EndpointResult
    public var forwardLink: LinkStatistics
    public var reverseLink: LinkStatistics
    /// Virtual time since the start.
    public var elapsed: TimeAmount
    /// Why the run cannot go on, if it stalled: nothing left to happen, or no progress for the
    /// stall timeout, while the connection is not finished.
    public var stallReason: String?
    /// Both scripted transfers delivered in full (peer FINs included): when the later one did.
    public var transferCompletedAt: TimeAmount?

    public var stalled: Bool { stallReason != nil }

    /// Everything scripted arrived byte-exact both ways and both ends closed normally.
    public var succeeded: Bool {
        stallReason == nil && forwardLink.codecErrors == 0 && reverseLink.codecErrors == 0
            && Self.delivered(client, to: server) && Self.delivered(server, to: client)
            && client.closeReason == .normal && server.closeReason == .normal
    }

    private static func delivered(_ sender: EndpointResult, to receiver: EndpointResult) -> Bool {
        guard let total = sender.bytesToSend else { return false }
        return receiver.bytesReceived == total && receiver.firstMismatchOffset == nil && receiver.peerFinished
    }
}

/// Two TCP engines, a client and a server, joined by two one-way simulated links under a virtual
/// clock. The run is event-driven (the clock jumps to the next delivery or engine deadline) and
/// fully determined by the configuration and the seed.
public struct Simulation {
    public let configuration: SimulationConfiguration
    public let seed: UInt64
    public private(set) var now: NIODeadline
    public let start: NIODeadline

    private var random: SimulationRandom
    private var forward: OneWayLink
    private var reverse: OneWayLink
    private var client: SimulatedApplication
    private var server: SimulatedApplication
    private var lastProgress: NIODeadline
    private var stallReason: String?
    private var transferCompletedAt: TimeAmount?
    /// When set, every segment sent and delivered is described here (for investigating a seed).
    public var recordsTrace = false
    public private(set) var trace: [String] = []

    private static let clientPort: UInt16 = 40_000
    private static let serverPort: UInt16 = 6_080

    public init(configuration: SimulationConfiguration, seed: UInt64) {
        self.configuration = configuration
        self.seed = seed
        // A non-zero origin keeps "before the start" representable.
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        self.start = start
        self.now = start
        self.lastProgress = start
        var random = SimulationRandom(seed: seed)
        let clientOrigin = Int(random.next() % UInt64(PayloadPattern.period))
        let serverOrigin = Int(random.next() % UInt64(PayloadPattern.period))
        self.forward = OneWayLink(configuration: configuration.forward, start: start)
        self.reverse = OneWayLink(configuration: configuration.reverse, start: start)
        self.client = SimulatedApplication(
            bytesToSend: configuration.clientBytes, sendOrigin: clientOrigin, receiveOrigin: serverOrigin,
            writeChunk: configuration.writeChunk, readChunk: configuration.readChunk, start: start)
        self.server = SimulatedApplication(
            bytesToSend: configuration.serverBytes, sendOrigin: serverOrigin, receiveOrigin: clientOrigin,
            writeChunk: configuration.writeChunk, readChunk: configuration.readChunk, start: start)
        client.connection = TCPConnection.connect(
            localPort: Self.clientPort, remotePort: Self.serverPort, configuration: configuration.client,
            initialSequenceNumber: UInt32(truncatingIfNeeded: random.next()), now: start)
        self.random = random
    }

    /// Virtual time since the start.
    public var elapsed: TimeAmount { now - start }

    /// Both engines are closed, or the run stalled: nothing more will happen.
    public var isFinished: Bool {
        stallReason != nil || (client.result.closeReason != nil && server.result.closeReason != nil)
    }

    /// Runs until both ends are closed, the run stalls, or `limit` of virtual time has passed
    /// since the start (then it can be resumed with a later limit).
    @discardableResult
    public mutating func run(until limit: TimeAmount) -> SimulationResult {
        let end = start + limit
        while !isFinished {
            exchange()
            if isFinished { break }
            guard let next = nextEvent() else {
                stallReason = "deadlock: no segment in flight and no timer armed at \(describe(elapsed))"
                break
            }
            if next - lastProgress > configuration.stallTimeout {
                stallReason = "no progress for \(describe(configuration.stallTimeout)) since \(describe(lastProgress - start))"
                break
            }
            guard next <= end else {
                now = max(now, end)
                break
            }
            now = max(now, next)
            deliver()
            fireTimers()
        }
        return result
    }

    public var result: SimulationResult {
        SimulationResult(
            client: client.snapshot(), server: server.snapshot(), forwardLink: forward.statistics,
            reverseLink: reverse.statistics, elapsed: elapsed, stallReason: stallReason,
            transferCompletedAt: transferCompletedAt)
    }

    /// Applications move data, then engines transmit until they have nothing more.
    private mutating func exchange() {
        if client.pump(now: now) { lastProgress = now }
        if server.pump(now: now) { lastProgress = now }
        if transferCompletedAt == nil, client.result.peerFinished || configuration.serverBytes == nil,
            server.result.peerFinished || configuration.clientBytes == nil,
            configuration.clientBytes != nil || configuration.serverBytes != nil
        {
            transferCompletedAt = elapsed
        }
        // Taken out rather than borrowed in a closure, so tracing may touch `self` meanwhile.
        if var connection = client.connection.take() {
            while let segment = connection.pollTransmit(now: now) {
                if recordsTrace { record("C>", segment) }
                forward.send(segment, now: now, random: &random)
            }
            client.connection = connection
        }
        if var connection = server.connection.take() {
            while let segment = connection.pollTransmit(now: now) {
                if recordsTrace { record("S>", segment) }
                reverse.send(segment, now: now, random: &random)
            }
            server.connection = connection
        }
    }

    private func nextEvent() -> NIODeadline? {
        var next: NIODeadline?
        func consider(_ candidate: NIODeadline?) {
            guard let candidate else { return }
            if let current = next, current <= candidate { return }
            next = candidate
        }
        consider(forward.nextDelivery)
        consider(reverse.nextDelivery)
        consider(client.connection?.nextDeadline)
        consider(server.connection?.nextDeadline)
        return next
    }

    private mutating func deliver() {
        let now = self.now
        while let segment = forward.popDue(now: now) {
            if recordsTrace { record(">S", segment) }
            if server.connection != nil {
                // A closed engine is a deleted TCB: the host drops what still arrives for it
                // without answering, as a finished TOU session does.
                guard server.connection?.state != .closed else { continue }
                server.withConnection { $0.receive(segment, now: now) }
            } else if let accepted = TCPConnection.accept(
                syn: segment, configuration: configuration.server,
                initialSequenceNumber: UInt32(truncatingIfNeeded: random.next()), now: now)
            {
                // The listener: the first acceptable SYN creates the server's connection.
                server.connection = accepted
            }
        }
        while let segment = reverse.popDue(now: now) {
            if recordsTrace { record(">C", segment) }
            guard client.connection?.state != .closed else { continue }
            client.withConnection { $0.receive(segment, now: now) }
        }
    }

    private mutating func fireTimers() {
        let now = self.now
        if client.connection?.nextDeadline.map({ $0 <= now }) == true {
            client.withConnection { $0.handleTimeout(now: now) }
        }
        if server.connection?.nextDeadline.map({ $0 <= now }) == true {
            server.withConnection { $0.handleTimeout(now: now) }
        }
    }

    private mutating func record(_ direction: String, _ segment: TCPSegment) {
        trace.append(
            "\(describe(elapsed)) \(direction) seq \(segment.sequenceNumber) ack \(segment.acknowledgmentNumber) "
                + "\(segment.flags) win \(segment.window) len \(segment.payload.readableBytes)")
    }

    private func describe(_ time: TimeAmount) -> String {
        let milliseconds = time.nanoseconds / 1_000_000
        return "\(milliseconds / 1000).\(String(milliseconds % 1000).leftPadded(to: 3)) s"
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
