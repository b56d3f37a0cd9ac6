import NIOCore
import Testing

@testable import TCPEngine
import TOUWire

/// Two engines over simulated links with a virtual clock.
struct PairOutcome {
    var client: SimulatedEndpoint
    var server: SimulatedEndpoint
    var finishedAt: NIODeadline
    var stalled: Bool
}

func runPair(
    clientBytes: Int, serverBytes: Int, impairments: SimulatedLink.Impairments, seed: UInt64,
    configuration: TCPConfiguration = TCPConfiguration(), writeChunk: Int = 50_000,
    virtualTimeLimit: TimeAmount = .seconds(3600)
) -> PairOutcome {
    var rng = SplitMix64(seed: seed)
    var now = NIODeadline.uptimeNanoseconds(1_000_000_000)
    let start = now
    var toServer = SimulatedLink(impairments)
    var toClient = SimulatedLink(impairments)
    var clientConnection = TCPConnection.connect(
        localPort: 40000, remotePort: 6080, configuration: configuration,
        initialSequenceNumber: UInt32(truncatingIfNeeded: rng.next()), now: now)
    // The listener: accept the first SYN to arrive.
    var server: SimulatedEndpoint?
    var client = SimulatedEndpoint(
        connection: clientConnection, outgoing: patternBuffer(length: clientBytes, seed: seed &+ 1),
        writeChunk: writeChunk)
    clientConnection = client.connection
    let serverOutgoing = patternBuffer(length: serverBytes, seed: seed &+ 2)
    var stalled = false

    var iterations = 0
    while true {
        iterations += 1
        if iterations % 256 == 0 {
            // The scoreboard's counters must match its entries all along, not just at the end.
            if let problem = client.connection.invariantViolation { Issue.record("client: \(problem)") }
            if let problem = server?.connection.invariantViolation { Issue.record("server: \(problem)") }
        }
        client.runApplication(now: now)
        while let segment = client.connection.pollTransmit(now: now) {
            toServer.send(segment, now: now, rng: &rng)
        }
        if server != nil {
            server!.runApplication(now: now)
            while let segment = server!.connection.pollTransmit(now: now) {
                toClient.send(segment, now: now, rng: &rng)
            }
        }
        if client.closeReason != nil, server?.closeReason != nil { break }
        var next: NIODeadline? = nil
        for candidate in [
            toServer.nextDelivery, toClient.nextDelivery, client.connection.nextDeadline,
            server?.connection.nextDeadline,
        ] {
            if let candidate, next.map({ candidate < $0 }) ?? true { next = candidate }
        }
        guard let next, next - start < virtualTimeLimit else {
            stalled = true
            break
        }
        now = max(now, next)
        while let segment = toServer.popDue(now: now) {
            if server == nil {
                if let accepted = TCPConnection.accept(
                    syn: segment, configuration: configuration,
                    initialSequenceNumber: UInt32(truncatingIfNeeded: rng.next()), now: now)
                {
                    server = SimulatedEndpoint(
                        connection: accepted, outgoing: serverOutgoing, writeChunk: writeChunk)
                }
            } else {
                server!.connection.receive(segment, now: now)
            }
        }
        while let segment = toClient.popDue(now: now) {
            client.connection.receive(segment, now: now)
        }
        if let deadline = client.connection.nextDeadline, deadline <= now {
            client.connection.handleTimeout(now: now)
        }
        if let deadline = server?.connection.nextDeadline, deadline <= now {
            server!.connection.handleTimeout(now: now)
        }
    }
    let placeholder = SimulatedEndpoint(
        connection: clientConnection, outgoing: ByteBuffer(), writeChunk: 1)
    return PairOutcome(client: client, server: server ?? placeholder, finishedAt: now, stalled: stalled)
}

@Suite struct TCPPairTests {
    static let lossCases: [(Double, UInt64)] = [
        (0, 1), (0.01, 2), (0.01, 3), (0.05, 4), (0.05, 5), (0.10, 6), (0.10, 7),
    ]

    @Test(arguments: lossCases)
    func bulkBothWaysSurvivesLossAndReordering(loss: Double, seed: UInt64) {
        var impairments = SimulatedLink.Impairments()
        impairments.loss = loss
        impairments.jitter = .milliseconds(3)  // reorders segments sent close together
        impairments.duplication = loss / 2
        let size = loss >= 0.1 ? 1 << 20 : 2 << 20
        let outcome = runPair(
            clientBytes: size, serverBytes: size / 2 + 12_345, impairments: impairments, seed: seed)
        #expect(!outcome.stalled)
        #expect(outcome.client.closeReason == .normal)
        #expect(outcome.server.closeReason == .normal)
        #expect(outcome.server.received == outcome.client.outgoing)
        #expect(outcome.client.received == outcome.server.outgoing)
        #expect(outcome.client.sawPeerFinish && outcome.server.sawPeerFinish)
        #expect(outcome.client.connection.stats.bytesSent == size)
        #expect(outcome.server.connection.stats.bytesReceived == size)
        let stats = outcome.client.connection.stats
        if loss > 0 {
            #expect(stats.retransmissions > 0)
        } else {
            // Jitter reorders segments, which may trigger fast retransmits, never a timeout.
            #expect(stats.rtoExpiries == 0)
        }
    }

    @Test func bottleneckAndCodecRoundTrip() {
        var impairments = SimulatedLink.Impairments()
        impairments.loss = 0.02
        impairments.bandwidth = 10_000_000
        impairments.delay = .milliseconds(20)
        impairments.throughCodec = true
        let outcome = runPair(clientBytes: 1 << 20, serverBytes: 300_000, impairments: impairments, seed: 99)
        #expect(!outcome.stalled)
        #expect(outcome.server.received == outcome.client.outgoing)
        #expect(outcome.client.received == outcome.server.outgoing)
        #expect(outcome.client.closeReason == .normal && outcome.server.closeReason == .normal)
        let stats = outcome.client.connection.stats
        #expect(stats.fastRetransmits > 0)
        #expect(stats.smoothedRTT.map { $0 >= .milliseconds(40) } == true)
    }

    @Test func smallBuffersExerciseFlowControl() {
        var configuration = TCPConfiguration(maximumSegmentSize: 536)
        configuration.receiveBufferSize = 8_000
        configuration.sendBufferSize = 5_000
        var impairments = SimulatedLink.Impairments()
        impairments.loss = 0.03
        impairments.jitter = .milliseconds(2)
        let outcome = runPair(
            clientBytes: 300_000, serverBytes: 200_000, impairments: impairments, seed: 5,
            configuration: configuration, writeChunk: 700)
        #expect(!outcome.stalled)
        #expect(outcome.server.received == outcome.client.outgoing)
        #expect(outcome.client.received == outcome.server.outgoing)
        #expect(outcome.client.events.contains(.writable))
    }
}
