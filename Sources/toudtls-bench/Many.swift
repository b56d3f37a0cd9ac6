import ArgumentParser
import CommandLineSupport
import Foundation
import NIOCore
import TOUDTLS

/// Many concurrent transfers: each connection sends M MiB of its own pattern through the echo server
/// and checks every byte that comes back.
struct Many: AsyncParsableCommand, ArgumentChecking {
    static let configuration = CommandConfiguration(
        abstract: "N concurrent connections each echoing M MiB through `serve`, every byte verified."
    )

    @OptionGroup var options: CommonOptions

    @Option(help: "Concurrent connections.")
    var connections: Int = 1000

    @Option(help: "MiB each connection sends (and receives back).")
    var megabytes: Int = 1

    @Option(help: "Handshakes in flight at once.")
    var connectConcurrency: Int = 64

    @Option(help: "Bytes per write.")
    var chunkSize: Int = 64 << 10

    func checkArguments() throws {
        try options.requirePort()
        guard connections > 0, megabytes > 0, chunkSize > 0 else {
            throw ValidationError("--connections, --megabytes and --chunk-size must be positive")
        }
    }

    struct Outcome: Sendable {
        var sent = 0
        var received = 0
        var intact = true
        var completed = false
        var finished: UInt64 = 0
    }

    func run() async throws {
        raiseFileLimit()
        let tally = Tally()
        let connections = self.connections
        let megabytes = self.megabytes
        let start = nowNanos()
        let watchdog = Watchdog(stallSeconds: options.stallSeconds, status: { tally.summary }) { message in
            Output.log("many \(message)")
            // Still one result line, so the harness records how far the run got.
            Output.json(Self.result(connections: connections, completed: tally["completed"], intact: false,
                                    megabytes: megabytes, seconds: elapsedSeconds(since: start),
                                    bytes: tally["bytes sent"] + tally["bytes verified"])
                        + [("error", .string(message))])
            terminate(3)
        }
        watchdog.enter("opening and transferring")
        let gate = ConnectGate(permits: connectConcurrency)
        let options = self.options
        let configuration = options.clientConfiguration
        let total = megabytes << 20
        let chunkSize = self.chunkSize
        let outcomes = await withTaskGroup(of: Outcome.self) { group in
            for index in 0..<connections {
                group.addTask {
                    guard let connection = await connectThroughGate(gate, options: options, configuration: configuration,
                                                                    tally: tally, watchdog: watchdog) else {
                        return Outcome()
                    }
                    if tally["connected"] == connections {
                        Output.log("many: all \(connections) connected after \(round2(elapsedSeconds(since: start))) s")
                    }
                    return await Self.transfer(on: connection, index: index, total: total, chunkSize: chunkSize,
                                               tally: tally, watchdog: watchdog)
                }
            }
            var outcomes: [Outcome] = []
            for await outcome in group { outcomes.append(outcome) }
            return outcomes
        }
        watchdog.stop()
        let completed = outcomes.filter { $0.completed && $0.intact }.count
        let intact = completed == connections
        let finished = outcomes.map(\.finished).max() ?? start
        let bytes = outcomes.reduce(0) { $0 + $1.sent + $1.received }
        Output.log("many: \(tally.summary)")
        // Beyond the contract: client-side loss recovery, which explains a slow run.
        Output.json(Self.result(connections: connections, completed: completed, intact: intact, megabytes: megabytes,
                                seconds: elapsedSeconds(since: start, until: max(finished, start)), bytes: bytes)
                    + [("retransmissions", .int(tally["retransmissions"])),
                       ("retransmission_timeouts", .int(tally["retransmission timeouts"])),
                       ("connect_failures", .int(tally["connect failures"]))])
        if !intact {
            Output.log("many: \(connections - completed) of \(connections) connections did not complete intact (\(tally.summary))")
            throw ExitCode(1)
        }
    }

    static func result(connections: Int, completed: Int, intact: Bool, megabytes: Int, seconds: Double,
                       bytes: Int) -> [(String, JSONValue)] {
        [
            ("test", .string("many")),
            ("connections", .int(connections)),
            ("completed", .int(completed)),
            ("intact", .bool(intact)),
            ("megabytes_each_way", .int(megabytes)),
            ("seconds", .double(seconds)),
            ("aggregate_MBps", .double(Double(bytes) / seconds / 1e6)),
        ]
    }

    /// Writes `total` pattern bytes while reading the echo back; then closes.
    static func transfer(on connection: TOUConnection, index: Int, total: Int, chunkSize: Int,
                         tally: Tally, watchdog: Watchdog) async -> Outcome {
        var outcome = Outcome()
        do {
            outcome = try await withThrowingTaskGroup(of: Outcome.self) { group in
                group.addTask {
                    var pattern = EchoPattern(connection: index)
                    var sent = 0
                    while sent < total {
                        let count = min(chunkSize, total - sent)
                        var chunk = ByteBufferAllocator().buffer(capacity: count)
                        pattern.append(count, to: &chunk)
                        try await connection.write(chunk)
                        sent += count
                        tally.add("bytes sent", count)
                        watchdog.progress()
                    }
                    try await connection.finishWriting()
                    return Outcome(sent: sent)
                }
                group.addTask {
                    var pattern = EchoPattern(connection: index)
                    var outcome = Outcome()
                    for try await chunk in connection.inbound {
                        if !pattern.matches(chunk) { outcome.intact = false }
                        outcome.received += chunk.readableBytes
                        tally.add("bytes verified", chunk.readableBytes)
                        watchdog.progress()
                        if outcome.received == total { outcome.finished = nowNanos() }
                    }
                    return outcome
                }
                var merged = Outcome()
                for try await part in group {
                    merged.sent += part.sent
                    merged.received += part.received
                    merged.intact = merged.intact && part.intact
                    merged.finished = max(merged.finished, part.finished)
                }
                return merged
            }
            let stats = await connection.stats
            tally.add("retransmissions", stats.retransmissions)
            tally.add("retransmission timeouts", stats.retransmissionTimeouts)
            tally.add("tail loss probes", stats.tailLossProbes)
            try await connection.close()
            outcome.completed = outcome.sent == total && outcome.received == total
            if !outcome.intact { tally.add("corrupted") }
            if outcome.completed && outcome.intact { tally.add("completed") } else if !outcome.completed { tally.add("short") }
        } catch {
            tally.add("transfer failures")
            if tally["transfer failures"] <= 5 {
                Output.log("many: connection \(index) failed after \(outcome.received) bytes: \(error)")
            }
            await connection.abort()
        }
        return outcome
    }
}
