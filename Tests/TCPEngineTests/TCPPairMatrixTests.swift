import NIOCore
import Testing
import TOUWire

@testable import TCPEngine

/// The pair tests again across the feature matrix: SACK on and off, NewReno and CUBIC.
@Suite struct TCPPairMatrixTests {
    struct Variant: CustomTestStringConvertible, Sendable {
        var sack: Bool
        var algorithm: TCPCongestionControlAlgorithm
        var loss: Double
        var seed: UInt64
        var testDescription: String { "sack=\(sack) \(algorithm) loss=\(loss) seed=\(seed)" }
    }

    static let variants: [Variant] = [
        Variant(sack: true, algorithm: .cubic, loss: 0.02, seed: 11),
        Variant(sack: true, algorithm: .newReno, loss: 0.02, seed: 12),
        Variant(sack: false, algorithm: .cubic, loss: 0.02, seed: 13),
        Variant(sack: false, algorithm: .newReno, loss: 0.02, seed: 14),
        Variant(sack: true, algorithm: .cubic, loss: 0.15, seed: 15),
        Variant(sack: false, algorithm: .newReno, loss: 0.15, seed: 16),
    ]

    @Test(arguments: variants)
    func bulkTransferAcrossTheMatrix(_ variant: Variant) {
        var configuration = TCPConfiguration()
        configuration.selectiveAcknowledgments = variant.sack
        configuration.congestionControl = variant.algorithm
        var impairments = SimulatedLink.Impairments()
        impairments.loss = variant.loss
        impairments.jitter = .milliseconds(3)
        impairments.duplication = 0.01
        let size = variant.loss > 0.1 ? 300_000 : 1 << 20
        let outcome = runPair(
            clientBytes: size, serverBytes: size / 3, impairments: impairments, seed: variant.seed,
            configuration: configuration)
        #expect(!outcome.stalled)
        #expect(outcome.server.received == outcome.client.outgoing)
        #expect(outcome.client.received == outcome.server.outgoing)
        #expect(outcome.client.closeReason == .normal && outcome.server.closeReason == .normal)
        let stats = outcome.client.connection.stats
        #expect(stats.selectiveAcknowledgmentsEnabled == variant.sack)
        #expect(stats.timestampsEnabled)
        #expect(stats.retransmissions > 0)
        if variant.sack {
            #expect(stats.sackBlocksReceived > 0)
            #expect(outcome.server.connection.stats.sackBlocksSent > 0)
        } else {
            #expect(stats.sackBlocksReceived == 0)
        }
    }

    /// A 10 Mbit/s, 40 ms RTT bottleneck with a one-BDP drop-tail queue: the only losses are
    /// the controller's own overshoot. Recovery must repair them without timeouts and keep the
    /// link busy.
    @Test(arguments: [TCPCongestionControlAlgorithm.newReno, .cubic], [true, false])
    func bottleneckWithDropTailQueue(_ algorithm: TCPCongestionControlAlgorithm, sack: Bool) {
        var configuration = TCPConfiguration()
        configuration.congestionControl = algorithm
        configuration.selectiveAcknowledgments = sack
        var impairments = SimulatedLink.Impairments()
        impairments.bandwidth = 1_250_000
        impairments.delay = .milliseconds(20)
        impairments.queueLimit = 50_000
        let size = 3_000_000
        let outcome = runPair(
            clientBytes: size, serverBytes: 0, impairments: impairments, seed: 21, configuration: configuration)
        #expect(!outcome.stalled)
        #expect(outcome.server.received == outcome.client.outgoing)
        let stats = outcome.client.connection.stats
        let delivered = outcome.server.peerFinishedAt ?? outcome.finishedAt
        let seconds = Double((delivered - NIODeadline.uptimeNanoseconds(1_000_000_000)).nanoseconds) / 1e9
        let goodput = Double(size) / seconds
        // Payload share of the wire (60 bytes of headers per segment in the link model).
        let capacity = 1_250_000.0 * 1387.0 / 1447.0
        if sack {
            // Slow start overshoots the queue by dozens of segments; SACK recovery repairs
            // them all in about a round trip.
            #expect(goodput > 0.9 * capacity, "goodput \(goodput) of \(capacity), \(stats)")
            #expect(stats.rtoExpiries == 0, "\(stats)")
        } else {
            // NewReno repairs one hole per round trip (RFC 6582): slower, but no timeouts.
            #expect(goodput > 0.4 * capacity, "goodput \(goodput) of \(capacity), \(stats)")
            #expect(stats.rtoExpiries <= 1, "\(stats)")
        }
        #expect(stats.fastRetransmits >= 1)
    }

    @Test func pacedTransferKeepsTheQueueShort() {
        // With pacing, the initial window does not arrive as one burst, so a small queue
        // in front of a fast link loses nothing at the start.
        var impairments = SimulatedLink.Impairments()
        impairments.bandwidth = 12_500_000
        impairments.delay = .milliseconds(20)
        impairments.queueLimit = 8 * 1447
        var paced = TCPConfiguration()
        paced.pacing = true
        var unpaced = paced
        unpaced.pacing = false
        let withPacing = runPair(clientBytes: 14 * 1387, serverBytes: 0, impairments: impairments, seed: 3, configuration: paced)
        let without = runPair(clientBytes: 14 * 1387, serverBytes: 0, impairments: impairments, seed: 3, configuration: unpaced)
        #expect(withPacing.server.received == withPacing.client.outgoing)
        #expect(without.server.received == without.client.outgoing)
        #expect(withPacing.client.connection.stats.retransmissions == 0)
        #expect(without.client.connection.stats.retransmissions > 0)
    }
}
