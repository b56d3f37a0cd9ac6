import Foundation
import NIOCore
import TCPEngine
import TCPSimulator

/// One bulk transfer over a bottleneck: warm up until the sender leaves slow start, then
/// measure over a fixed span of virtual time.
struct GoodputBenchmark {
    var bandwidth: Int
    var rtt: TimeAmount
    var queueBDP: Double
    var loss: Double
    var lossOnACKs: Bool
    var mss: Int
    var congestion: CongestionChoice
    var duration: TimeAmount
    var warmupLimit: TimeAmount
    /// Extra time after slow start ends before measuring, so the recovery from slow start's
    /// overshoot of the queue is not counted against steady state.
    var settle: TimeAmount
    var seed: UInt64
    /// Segments of trace to print to stderr (for investigating a run); 0 for none.
    var traceLines = 0

    struct Outcome: Codable {
        var algorithm: String
        var loss: Double
        var goodputBitsPerSecond: Double
        var shareOfCapacity: Double
        var mathisBitsPerSecond: Double?
        var cubicBitsPerSecond: Double?
        var retransmissionsPerMB: Double
        var rtoExpiries: Int
        var dataSegmentsLost: Int
        var rtoPerThousandLost: Double?
        var queueDrops: Int
        var randomDrops: Int
        var warmupSeconds: Double
        var averageSmoothedRTTMilliseconds: Double?
        var bytesVerified: Bool
    }

    /// Payload of a full segment: the MSS less the timestamp option every data segment carries
    /// when timestamps are on, as they are by default.
    var payloadPerSegment: Int { TCPConfiguration(maximumSegmentSize: mss).fullSegmentPayload }

    /// What a full segment's packet occupies on the bottleneck: payload, TCP header and options,
    /// and the link's per-packet IP header.
    var packetBytes: Int { mss + 20 + LinkConfiguration().perPacketOverhead }

    /// The most goodput the headers allow.
    var ceilingShareOfCapacity: Double { Double(payloadPerSegment) / Double(packetBytes) }

    func run() -> Outcome? {
        var tcp = TCPConfiguration(maximumSegmentSize: mss)
        guard congestion.apply(to: &tcp) else { return nil }
        let bdp = Int(Double(bandwidth) / 8 * Double(rtt.nanoseconds) / 1e9)
        let oneWay = TimeAmount.nanoseconds(rtt.nanoseconds / 2)
        let forward = LinkConfiguration(
            delay: oneWay, loss: loss, bandwidth: bandwidth, queueLimit: .bytes(max(Int(Double(bdp) * queueBDP), 3000)))
        let reverse = LinkConfiguration(
            delay: oneWay, loss: lossOnACKs ? loss : 0, bandwidth: bandwidth, queueLimit: .bytes(max(bdp, 3000)))
        let configuration = SimulationConfiguration(
            forward: forward, reverse: reverse, client: tcp, server: tcp, clientBytes: nil, serverBytes: 0)
        var simulation = Simulation(configuration: configuration, seed: seed)
        simulation.recordsTrace = traceLines > 0
        defer {
            if traceLines > 0 {
                FileHandle.standardError.write(Data((simulation.trace.prefix(traceLines).joined(separator: "\n") + "\n").utf8))
            }
        }

        // Slow start is over once ssthresh has been set from a congestion signal.
        var before = simulation.run(until: .milliseconds(100))
        while (before.client.stats?.slowStartThreshold ?? Int.max) >= 1 << 30, before.elapsed < warmupLimit,
            !simulation.isFinished
        {
            before = simulation.run(until: before.elapsed + .milliseconds(100))
        }
        before = simulation.run(until: before.elapsed + settle)
        // Sample srtt once per 100 ms across the measured span.
        var rttSum = 0.0
        var rttSamples = 0
        var after = before
        let end = before.elapsed + duration
        while after.elapsed < end, !simulation.isFinished {
            after = simulation.run(until: min(end, after.elapsed + .milliseconds(100)))
            if let srtt = after.client.stats?.smoothedRTT {
                rttSum += Double(srtt.nanoseconds) / 1e6
                rttSamples += 1
            }
        }

        let seconds = Double((after.elapsed - before.elapsed).nanoseconds) / 1e9
        let bytes = after.server.bytesReceived - before.server.bytesReceived
        let goodput = seconds > 0 ? Double(bytes) * 8 / seconds : 0
        let retransmissions = (after.client.stats?.retransmissions ?? 0) - (before.client.stats?.retransmissions ?? 0)
        let rtos = (after.client.stats?.rtoExpiries ?? 0) - (before.client.stats?.rtoExpiries ?? 0)
        let lost = after.forwardLink.dataSegmentsDropped - before.forwardLink.dataSegmentsDropped
        let rttSeconds = Double(rtt.nanoseconds) / 1e9
        return Outcome(
            algorithm: congestion.rawValue, loss: loss, goodputBitsPerSecond: goodput,
            shareOfCapacity: goodput / Double(bandwidth),
            mathisBitsPerSecond: ResponseFunctions.mathis(payload: payloadPerSegment, rtt: rttSeconds, loss: loss),
            cubicBitsPerSecond: ResponseFunctions.cubic(payload: payloadPerSegment, rtt: rttSeconds, loss: loss),
            retransmissionsPerMB: bytes > 0 ? Double(retransmissions) / (Double(bytes) / 1e6) : 0,
            rtoExpiries: rtos, dataSegmentsLost: lost,
            rtoPerThousandLost: lost > 0 ? Double(rtos) * 1000 / Double(lost) : nil,
            queueDrops: after.forwardLink.queueDrops - before.forwardLink.queueDrops,
            randomDrops: after.forwardLink.randomDrops - before.forwardLink.randomDrops,
            warmupSeconds: Double(before.elapsed.nanoseconds) / 1e9,
            averageSmoothedRTTMilliseconds: rttSamples > 0 ? rttSum / Double(rttSamples) : nil,
            bytesVerified: after.server.firstMismatchOffset == nil)
    }
}
