import ArgumentParser
import Foundation
import NIOCore

/// `toudtls-netsim loss-episode`: CPU time of one loss episode per engine, beside the same
/// flight without the loss. A table goes to stderr and one JSON object to stdout.
struct LossEpisodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loss-episode",
        abstract: "CPU time of one loss episode in the sender and the receiver, at large windows.")

    @Option(help: "Comma-separated segments in flight when the first of them is lost.")
    var segments: String = "4000,16000"

    @Option(help: "Comma-separated congestion controllers: newreno, cubic.")
    var algorithms: String = "cubic"

    @Option(help: "Round-trip propagation delay in milliseconds.")
    var rttMilliseconds: Int = 20

    @Option(help: "Maximum segment size in bytes.")
    var mss: Int = 1399

    @Option(help: "Replays of the recorded episode per engine; the fastest counts.")
    var replays: Int = 5

    func run() throws {
        let counts = try segments.split(separator: ",").map { text -> Int in
            guard let value = Int(text.trimmingCharacters(in: .whitespaces)), value >= 4 else {
                throw ValidationError("segment count \"\(text)\" is not a number of at least 4")
            }
            return value
        }
        let choices = try CongestionChoice.list(algorithms)
        standardError("RTT \(rttMilliseconds) ms, MSS \(mss), fastest of \(replays) replays, thread CPU time\n")
        standardError(
            pad("cc", 8) + pad("segments", 9) + pad("loss", 6) + pad("peak", 7) + pad("sender", 11)
                + pad("receiver", 11) + pad("retx", 6) + pad("fast", 5) + "rto\n")
        var outcomes: [LossEpisodeBenchmark.Outcome] = []
        for choice in choices {
            for count in counts {
                for loses in [false, true] {
                    let benchmark = LossEpisodeBenchmark(
                        segments: count, congestion: choice, rtt: .milliseconds(Int64(rttMilliseconds)), mss: mss,
                        loses: loses, replays: replays)
                    guard let outcome = benchmark.run() else {
                        standardError("\(choice.rawValue) \(count): the flight never completed\n")
                        continue
                    }
                    outcomes.append(outcome)
                    standardError(
                        pad(outcome.algorithm, 8) + pad("\(count)", 9) + pad(loses ? "1" : "0", 6)
                            + pad("\(outcome.peakSegmentsInFlight)", 7)
                            + pad(String(format: "%.2fms", outcome.senderMilliseconds), 11)
                            + pad(String(format: "%.2fms", outcome.receiverMilliseconds), 11)
                            + pad("\(outcome.retransmissions)", 6) + pad("\(outcome.fastRetransmits)", 5)
                            + "\(outcome.rtoExpiries)" + (outcome.replaysMatched ? "" : "  REPLAY DIVERGED") + "\n")
                }
            }
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        FileHandle.standardOutput.write(try encoder.encode(outcomes))
        FileHandle.standardOutput.write(Data("\n".utf8))
    }
}
