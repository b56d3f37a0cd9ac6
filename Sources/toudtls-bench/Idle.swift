import ArgumentParser
import CommandLineSupport
import Foundation
import TOUDTLS

/// Opens N connections and holds them silent until standard input closes, so a harness can measure
/// the server's memory per idle connection.
struct Idle: AsyncParsableCommand, ArgumentChecking {
    static let configuration = CommandConfiguration(
        abstract: "Open N connections, print {\"ready\":N}, hold them idle until stdin EOF, then close them."
    )

    @OptionGroup var options: CommonOptions

    @Option(help: "Connections to open and hold.")
    var connections: Int = 1000

    @Option(help: "Handshakes in flight at once.")
    var connectConcurrency: Int = 64

    func checkArguments() throws {
        try options.requirePort()
        guard connections > 0 else { throw ValidationError("--connections must be positive") }
    }

    func run() async throws {
        raiseFileLimit()
        let tally = Tally()
        let watchdog = Watchdog(stallSeconds: options.stallSeconds, status: { tally.summary }) { message in
            Output.log("idle \(message)")
            terminate(3)
        }
        watchdog.enter("opening \(connections) connections")
        let start = nowNanos()
        let opened = await openConnections(connections, concurrency: connectConcurrency, options: options,
                                           tally: tally, watchdog: watchdog)
        Output.log("idle: \(opened.count) of \(connections) connections open after \(round2(elapsedSeconds(since: start))) s; holding until stdin EOF")
        Output.json([("ready", .int(opened.count))])

        watchdog.enter("holding", armed: false)
        await waitForStandardInputEOF()

        watchdog.enter("closing \(opened.count) connections")
        let closed = await withTaskGroup(of: Bool.self) { group in
            for connection in opened {
                group.addTask {
                    defer { watchdog.progress() }
                    do {
                        try await connection.close()
                        return true
                    } catch {
                        tally.add("close failures")
                        if tally["close failures"] <= 5 { Output.log("idle: close failed: \(error)") }
                        return false
                    }
                }
            }
            var closed = 0
            for await ok in group where ok { closed += 1 }
            return closed
        }
        watchdog.stop()
        Output.json([("test", .string("idle")), ("connections", .int(connections)), ("closed", .int(closed))])
        if closed != connections { throw ExitCode(1) }
    }
}
