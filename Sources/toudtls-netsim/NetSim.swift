import ArgumentParser
import CommandLineSupport
import Foundation
import NIOCore

/// Benchmarks of the TCP engine on the simulator; `goodput` (the default) and `loss-episode`.
@main
struct NetSim: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "toudtls-netsim",
        abstract: "Benchmarks of the TCP engine over simulated links.",
        version: toudtlsVersion,
        subcommands: [Goodput.self, LossEpisodeCommand.self],
        defaultSubcommand: Goodput.self)

    /// Usage errors exit 2 and name what is wrong; help and --version exit 0.
    static func main() async {
        await CommandLineTool.run(CommandLineTool.parse(NetSim.self), root: NetSim.self)
    }
}

/// The goodput benchmark on the simulator: a bulk sender over a bottleneck with a
/// drop-tail queue, at several random loss rates, per congestion controller. A table goes to
/// stderr and one JSON object to stdout.
struct Goodput: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Goodput over a simulated bottleneck, beside loss-based predictions.")

    @Option(help: "Seconds of virtual time measured after slow start.")
    var duration: Double = 60

    @Option(help: "Longest warm-up (virtual seconds) while waiting for slow start to end.")
    var warmupLimit: Double = 20

    @Option(help: "Virtual seconds after slow start ends before measuring (lets its overshoot recover).")
    var settle: Double = 2

    @Option(help: "Seed of the simulation's random generator.")
    var seed: UInt64 = 1

    @Option(help: "Maximum segment size in bytes.")
    var mss: Int = 1399

    @Option(help: "Bottleneck rate in Mbit/s.")
    var megabits: Double = 100

    @Option(help: "Round-trip propagation delay in milliseconds.")
    var rttMilliseconds: Int = 40

    @Option(help: "Drop-tail queue size in bandwidth-delay products.")
    var queueBDP: Double = 1

    @Option(help: "Comma-separated random loss rates (fractions).")
    var losses: String = "0,0.001,0.01,0.05"

    @Option(help: "Comma-separated congestion controllers: newreno, cubic.")
    var algorithms: String = "newreno,cubic"

    @Option(help: ArgumentHelp("Print this many lines of segment trace per run.", visibility: .hidden))
    var trace = 0

    @Flag(name: .customLong("loss-on-acks"), help: "Apply the random loss to the ACK direction too.")
    var lossOnACKs = false

    func run() throws {
        let lossRates = try losses.split(separator: ",").map { text -> Double in
            guard let value = Double(text.trimmingCharacters(in: .whitespaces)), (0..<1).contains(value) else {
                throw ValidationError("loss rate \"\(text)\" is not a fraction in [0, 1)")
            }
            return value
        }
        let choices = try CongestionChoice.list(algorithms)
        var outcomes: [GoodputBenchmark.Outcome] = []
        var unavailable: [String] = []
        let bandwidth = Int(megabits * 1_000_000)
        // Every run is this one with its own controller and loss rate.
        let shape = GoodputBenchmark(
            bandwidth: bandwidth, rtt: .milliseconds(Int64(rttMilliseconds)), queueBDP: queueBDP, loss: 0,
            lossOnACKs: lossOnACKs, mss: mss, congestion: .newReno,
            duration: .nanoseconds(Int64(duration * 1e9)), warmupLimit: .nanoseconds(Int64(warmupLimit * 1e9)),
            settle: .nanoseconds(Int64(settle * 1e9)), seed: seed, traceLines: trace)
        printTableHeader(shape)
        for choice in choices {
            for loss in lossRates {
                var benchmark = shape
                benchmark.congestion = choice
                benchmark.loss = loss
                guard let outcome = benchmark.run() else {
                    if !unavailable.contains(choice.rawValue) { unavailable.append(choice.rawValue) }
                    continue
                }
                printRow(outcome)
                outcomes.append(outcome)
            }
        }
        for name in unavailable { standardError("\(name): not available in this engine build, skipped\n") }

        struct Report: Codable {
            var bandwidthBitsPerSecond: Int
            var rttMilliseconds: Int
            var queueBDP: Double
            var mss: Int
            var payloadPerSegment: Int
            var ceilingShareOfCapacity: Double
            var durationSeconds: Double
            var seed: UInt64
            var lossOnACKs: Bool
            var unavailableAlgorithms: [String]
            var results: [GoodputBenchmark.Outcome]
        }
        let report = Report(
            bandwidthBitsPerSecond: bandwidth, rttMilliseconds: rttMilliseconds, queueBDP: queueBDP, mss: mss,
            payloadPerSegment: shape.payloadPerSegment, ceilingShareOfCapacity: shape.ceilingShareOfCapacity,
            durationSeconds: duration, seed: seed, lossOnACKs: lossOnACKs, unavailableAlgorithms: unavailable,
            results: outcomes)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let json = try encoder.encode(report)
        FileHandle.standardOutput.write(json)
        FileHandle.standardOutput.write(Data("\n".utf8))
    }

    private func printTableHeader(_ shape: GoodputBenchmark) {
        standardError(
            "\(megabits) Mbit/s, RTT \(rttMilliseconds) ms, queue \(queueBDP) BDP, MSS \(mss), "
                + "\(duration) s measured from \(settle) s after slow start, seed \(seed)\n")
        standardError(
            "ceiling \(String(format: "%.2f%%", shape.ceilingShareOfCapacity * 100)) (\(shape.payloadPerSegment)-byte "
                + "payloads in \(shape.packetBytes)-byte packets); predictions for \(shape.payloadPerSegment)-byte "
                + "segments at RTT \(rttMilliseconds) ms, Mathis with C = sqrt(3/2) = 1.22\n")
        standardError(
            pad("cc", 8) + pad("loss", 7) + pad("goodput", 11) + pad("share", 7) + pad("Mathis", 11)
                + pad("CUBIC9438", 11) + pad("retx/MB", 9) + pad("RTO/1kLost", 11)
                + pad("lost", 7) + "srtt\n")
    }

    private func printRow(_ o: GoodputBenchmark.Outcome) {
        func mbit(_ value: Double?) -> String {
            guard let value else { return "-" }
            return String(format: "%.2fM", min(value, megabits * 1e6) / 1e6)
        }
        standardError(
            pad(o.algorithm, 8) + pad(String(format: "%.3g%%", o.loss * 100), 7) + pad(mbit(o.goodputBitsPerSecond), 11)
                + pad(String(format: "%.1f%%", o.shareOfCapacity * 100), 7) + pad(mbit(o.mathisBitsPerSecond), 11)
                + pad(mbit(o.cubicBitsPerSecond), 11)
                + pad(String(format: "%.2f", o.retransmissionsPerMB), 9)
                + pad(o.rtoPerThousandLost.map { String(format: "%.1f", $0) } ?? "-", 11) + pad("\(o.dataSegmentsLost)", 7)
                + (o.averageSmoothedRTTMilliseconds.map { String(format: "%.1fms", $0) } ?? "-")
                + (o.bytesVerified ? "" : "  DATA MISMATCH") + "\n")
    }
}

/// Left-aligns `text` in a column of `width` characters (at least one space after it).
func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
}

func standardError(_ text: String) {
    FileHandle.standardError.write(Data(text.utf8))
}
