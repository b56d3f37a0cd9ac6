import Foundation
import NIOCore
import TCPEngine
import TOUWire
import Testing

@testable import TCPSimulator

/// A scenario drawn from a seed: everything about the run follows from the seed, so a failure
/// is reproduced by rerunning `SimulatorScenario(seed:)`.
struct SimulatorScenario: CustomStringConvertible {
    let seed: UInt64
    var configuration: SimulationConfiguration

    init(seed: UInt64) {
        self.seed = seed
        var random = SimulationRandom(seed: seed ^ 0x5EED_5CE2_A210)
        func uniform(_ range: ClosedRange<Double>) -> Double {
            range.lowerBound + Double(random.next() >> 11) * 0x1.0p-53 * (range.upperBound - range.lowerBound)
        }
        func integer(_ range: ClosedRange<Int>) -> Int {
            range.lowerBound + Int(random.next() % UInt64(range.upperBound - range.lowerBound + 1))
        }
        func link() -> LinkConfiguration {
            var link = LinkConfiguration()
            // Delay 1-300 ms, log-uniform so short and long paths are both common.
            link.delay = .microseconds(Int64(1000 * pow2(uniform(0...8.2))))
            if random.chance(0.4) { link.jitter = .microseconds(Int64(uniform(0...20_000))) }
            switch integer(0...9) {
            case 0...2: link.loss = 0
            case 3...6: link.loss = uniform(0...0.05)
            case 7: link.loss = uniform(0.05...0.20)
            default:
                // Per-packet Gilbert-Elliott keeps a sparse sender (one RTO probe at a time) in
                // the bad state for many packets; these bounds keep 13 losses in a row (the
                // engine's give-up point, which a real connection would not survive either) rare.
                link.burstLoss = BurstLoss(
                    goodToBad: uniform(0.001...0.03), badToGood: uniform(0.3...0.7),
                    lossInGood: uniform(0...0.01), lossInBad: uniform(0.3...0.7))
            }
            if random.chance(0.4) {
                link.reordering = uniform(0...0.1)
                link.reorderDelay = .microseconds(Int64(uniform(500...30_000)))
            }
            if random.chance(0.3) { link.duplication = uniform(0...0.05) }
            if random.chance(0.5) {
                link.bandwidth = Int(uniform(1...100) * 1_000_000)
                link.queueLimit = random.chance(0.5) ? .packets(integer(4...200)) : .bytes(integer(6_000...400_000))
            }
            return link
        }
        var tcp = TCPConfiguration(maximumSegmentSize: random.chance(0.3) ? integer(536...1399) : 1399)
        if random.chance(0.3) { tcp.receiveBufferSize = integer(8_192...262_144) }
        if random.chance(0.2) { tcp.sendBufferSize = integer(4_096...131_072) }
        configuration = SimulationConfiguration(
            forward: link(), reverse: link(), client: tcp, server: tcp,
            clientBytes: integer(64 * 1024...256 * 1024), serverBytes: integer(64 * 1024...256 * 1024))
        configuration.writeChunk = integer(1_000...70_000)
        configuration.readChunk = integer(1_000...300_000)
    }

    var description: String {
        let c = configuration
        return """
            seed \(seed): client \(c.clientBytes ?? -1) B, server \(c.serverBytes ?? -1) B, \
            MSS \(c.client.maximumSegmentSize), rcvbuf \(c.client.receiveBufferSize), sndbuf \(c.client.sendBufferSize), \
            write \(c.writeChunk), read \(c.readChunk)
              forward: \(c.forward)
              reverse: \(c.reverse)
            """
    }
}

private func pow2(_ x: Double) -> Double {
    var result = 1.0
    var remaining = x
    while remaining >= 1 { result *= 2; remaining -= 1 }
    // 2^r for r in [0, 1) by a short series is close enough for drawing delays.
    return result * (1 + remaining * (0.6931 + remaining * (0.2402 + remaining * 0.0555)))
}

func summary(_ result: SimulationResult) -> String {
    func side(_ name: String, _ e: EndpointResult) -> String {
        let stats = e.stats
        return "\(name): sent \(e.bytesWritten)/\(e.bytesToSend ?? -1) received \(e.bytesReceived) "
            + "mismatch@\(e.firstMismatchOffset.map(String.init) ?? "-") peerFIN \(e.peerFinished) "
            + "closed \(e.closeReason.map { "\($0)" } ?? "-") state \(e.state.map { "\($0)" } ?? "-") "
            + "retx \(stats?.retransmissions ?? 0) rto \(stats?.rtoExpiries ?? 0)"
    }
    return """
        \(side("client", result.client))
        \(side("server", result.server))
        links: fwd drops \(result.forwardLink.totalDrops) rev drops \(result.reverseLink.totalDrops) \
        codec errors \(result.forwardLink.codecErrors + result.reverseLink.codecErrors); \
        elapsed \(result.elapsed.nanoseconds / 1_000_000) ms; stall: \(result.stallReason ?? "none")
        """
}

@Suite struct SimulatorTests {
    /// Shards of the seeded sweep; Swift Testing runs them in parallel.
    static let shards = 8
    // 1,280 runs: about 50 s of CPU in a debug build with the SACK/RACK engine (2,000 took 95 s).
    static let runsPerShard = 160

    @Test(arguments: 0..<shards)
    func seededSweepDeliversByteExactBothWaysAndCloses(shard: Int) {
        var failures = 0
        for index in 0..<Self.runsPerShard {
            let scenario = SimulatorScenario(seed: UInt64(shard * Self.runsPerShard + index))
            var simulation = Simulation(configuration: scenario.configuration, seed: scenario.seed)
            let result = simulation.run(until: .seconds(7200))
            if !result.succeeded {
                failures += 1
                if failures <= 5 {
                    Issue.record("\(scenario)\n\(summary(result))\n(trace it: SIM_SEED=\(scenario.seed) swift test --filter replaySeedWithTrace)")
                }
            }
        }
        #expect(failures == 0, "\(failures) of \(Self.runsPerShard) runs in shard \(shard) failed")
    }

    /// Replays one seed of the sweep with a segment trace, for investigating a failure.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["SIM_SEED"] != nil, "set SIM_SEED to replay a seed"))
    func replaySeedWithTrace() throws {
        let seed = try #require(ProcessInfo.processInfo.environment["SIM_SEED"].flatMap { UInt64($0) })
        let scenario = SimulatorScenario(seed: seed)
        var simulation = Simulation(configuration: scenario.configuration, seed: seed)
        simulation.recordsTrace = true
        let result = simulation.run(until: .seconds(7200))
        print("\(scenario)\n\(summary(result))\n" + simulation.trace.suffix(200).joined(separator: "\n"))
        #expect(result.succeeded)
    }

    @Test(arguments: [
        ("clean 3 MB", LinkConfiguration(delay: .milliseconds(20), bandwidth: 50_000_000, queueLimit: .packets(100))),
        ("5% loss", LinkConfiguration(delay: .milliseconds(30), loss: 0.05)),
        ("bursty", LinkConfiguration(delay: .milliseconds(25), burstLoss: BurstLoss(goodToBad: 0.01, badToGood: 0.3))),
        ("300 ms", LinkConfiguration(delay: .milliseconds(300), jitter: .milliseconds(10), loss: 0.01)),
        ("reorder+dup", LinkConfiguration(delay: .milliseconds(10), reordering: 0.1, reorderDelay: .milliseconds(8), duplication: 0.05)),
        ("everything", LinkConfiguration(
            delay: .milliseconds(40), jitter: .milliseconds(5), loss: 0.02,
            burstLoss: BurstLoss(goodToBad: 0.005, badToGood: 0.5), reordering: 0.03, duplication: 0.01,
            bandwidth: 20_000_000, queueLimit: .bytes(100_000))),
    ])
    func largerTransfers(name: String, link: LinkConfiguration) {
        let bytes = 3 << 20
        let configuration = SimulationConfiguration(link: link, clientBytes: bytes, serverBytes: bytes)
        var simulation = Simulation(configuration: configuration, seed: 42)
        let result = simulation.run(until: .seconds(7200))
        #expect(result.succeeded, "\(name): \(link)\n\(summary(result))")
    }

    @Test func sameSeedSameRun() {
        let scenario = SimulatorScenario(seed: 7)
        var first = Simulation(configuration: scenario.configuration, seed: 7)
        var second = Simulation(configuration: scenario.configuration, seed: 7)
        let a = first.run(until: .seconds(7200))
        let b = second.run(until: .seconds(7200))
        #expect(a.elapsed == b.elapsed)
        #expect(a.client.stats == b.client.stats)
        #expect(a.server.stats == b.server.stats)
        #expect(a.forwardLink == b.forwardLink)
        var third = Simulation(configuration: scenario.configuration, seed: 8)
        let c = third.run(until: .seconds(7200))
        #expect(c.forwardLink != a.forwardLink || c.elapsed != a.elapsed)
    }

    @Test func bottleneckCarriesItsRateAndDropsAtTheTail() {
        // A bulk sender through 10 Mbit/s: after slow start the link runs full, the short queue
        // overflows, and goodput sits just under capacity.
        var link = LinkConfiguration(delay: .milliseconds(10), bandwidth: 10_000_000, queueLimit: .packets(20))
        link.perPacketOverhead = 0
        let configuration = SimulationConfiguration(
            forward: link, reverse: LinkConfiguration(delay: .milliseconds(10)), clientBytes: nil, serverBytes: 0)
        var simulation = Simulation(configuration: configuration, seed: 1)
        let early = simulation.run(until: .seconds(5))
        let late = simulation.run(until: .seconds(15))
        let bits = Double(late.server.bytesReceived - early.server.bytesReceived) * 8
        let rate = bits / 10
        #expect(rate > 0.8 * 10_000_000 && rate <= 10_000_000, "goodput \(rate) bit/s")
        #expect(late.forwardLink.queueDrops > 0)
        #expect(late.forwardLink.peakQueueBytes <= 20 * 1500)
        #expect(late.forwardLink.randomDrops == 0)
    }

    @Test func lossModelsDropTheirShare() {
        var random = SimulationRandom(seed: 3)
        let start = NIODeadline.uptimeNanoseconds(0)
        let segment = TCPEngineTestSegment.data
        var bernoulli = OneWayLink(configuration: LinkConfiguration(loss: 0.1), start: start)
        let burst = BurstLoss(goodToBad: 0.02, badToGood: 0.25, lossInGood: 0, lossInBad: 0.9)
        var gilbert = OneWayLink(configuration: LinkConfiguration(burstLoss: burst), start: start)
        for _ in 0..<50_000 {
            bernoulli.send(segment, now: start, random: &random)
            gilbert.send(segment, now: start, random: &random)
        }
        #expect(abs(Double(bernoulli.statistics.randomDrops) / 50_000 - 0.1) < 0.01)
        #expect(abs(Double(gilbert.statistics.burstDrops) / 50_000 - burst.averageLoss) < 0.015)
        #expect(bernoulli.statistics.dataSegmentsDropped == bernoulli.statistics.randomDrops)
    }

    @Test func reorderingAndDuplicationReachTheReceiver() {
        var random = SimulationRandom(seed: 4)
        let start = NIODeadline.uptimeNanoseconds(0)
        var link = OneWayLink(
            configuration: LinkConfiguration(
                delay: .milliseconds(5), reordering: 0.2, reorderDelay: .milliseconds(3), duplication: 0.1),
            start: start)
        for index in 0..<1000 {
            var segment = TCPEngineTestSegment.data
            segment.sequenceNumber = UInt32(index)
            link.send(segment, now: start + .microseconds(Int64(index * 100)), random: &random)
        }
        var sequence: [UInt32] = []
        while let segment = link.popDue(now: start + .seconds(1)) { sequence.append(segment.sequenceNumber) }
        #expect(sequence.count == 1000 + link.statistics.duplicated)
        #expect(Set(sequence).count == 1000)
        let inversions = zip(sequence, sequence.dropFirst()).filter { $0 > $1 }.count
        #expect(inversions > 50)
        #expect(link.statistics.codecErrors == 0)
    }
}

enum TCPEngineTestSegment {
    static let data = TCPSegment(
        sourcePort: 1, destinationPort: 2, sequenceNumber: 0, acknowledgmentNumber: 0, flags: [.ack], window: 1000,
        payload: ByteBuffer(repeating: 0xAB, count: 1000))
}
