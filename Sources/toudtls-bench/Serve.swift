import ArgumentParser
import Foundation
import NIOCore
import TOUDTLS

/// An echo server for the client subcommands: every byte received on a connection goes back on it as
/// it arrives; at the peer's end of stream it finishes writing and closes.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Echo server (prints {\"listening\":PORT,\"pid\":PID}); runs until SIGTERM/SIGINT.",
        discussion: """
            On SIGTERM or SIGINT it prints the listener's counters as one more JSON line (sessions_accepted,
            datagrams_received, datagrams_sent, cookieless_admissions, hello_verify_requests_sent,
            largest_amplification, ...) and exits 0.
            """
    )

    @OptionGroup var options: CommonOptions

    @Flag(help: "Also exit (0) when standard input reaches end of file.")
    var untilStdinEOF = false

    @Flag(help: "Ask every new client for a cookie first (a round trip more), even when not under load.")
    var alwaysCookie = false

    @Option(help: "UDP sockets on the port (SO_REUSEPORT), each with its own event loop (default: one per core).")
    var workers = TOUListener.defaultWorkers

    @Flag(help: ArgumentHelp("Leave datagrams to the kernel's address hash (no steering by session ID).",
                             visibility: .hidden))
    var noSteering = false

    func run() async throws {
        raiseFileLimit()
        var configuration = options.serverConfiguration
        configuration.alwaysRequireCookie = alwaysCookie
        let listener = try await TOUListener.bind(host: options.host, port: options.port,
                                                  configuration: configuration, workers: workers,
                                                  steering: !noSteering)
        guard let port = listener.localAddress.port else { throw BenchError.failed("the listener has no port") }
        let signals = Self.exitOnSignals {
            let perWorker = await listener.workerCounters
            Output.json(Self.counterFields(TOUEndpointCounters.sum(perWorker)) + [
                ("workers", .int(listener.workerCount)),
                ("steers_by_session_id", .bool(listener.steersBySessionID)),
                ("worker_sessions_accepted", .ints(perWorker.map(\.sessionsAccepted))),
            ])
        }
        Output.json([("listening", .int(port)), ("pid", .int(Int(getpid())))])
        Output.log("echo server on \(listener.localAddress.ipAndPort) (\(options.plain ? "plain" : "dtls"), mtu \(options.mtu))")
        if untilStdinEOF {
            Task.detached {
                await waitForStandardInputEOF()
                Output.log("standard input closed: exiting")
                terminate(0)
            }
        }
        let failures = Tally()
        Task.detached { await Self.logCounters(of: listener) }
        // Each connection echoed on its worker's loop, from where it was accepted: no thread switch.
        await listener.serve { connection in await Self.echo(connection, failures: failures) }
        withExtendedLifetime(signals) {}
        Output.log("listener closed")
    }

    /// Every 10 s while traffic flows, the listener's counters on stderr (drops explain slow runs).
    static func logCounters(of listener: TOUListener) async {
        var last = -1
        while true {
            try? await Task.sleep(nanoseconds: 10_000_000_000)
            let counters = await listener.counters
            if counters.datagramsReceived != last {
                last = counters.datagramsReceived
                Output.log("listener: \(counters)")
            }
        }
    }

    static func echo(_ connection: TOUConnection, failures: Tally) async {
        do {
            try await OnConnectionLoop.echo(connection)
        } catch {
            failures.add("failed")
            // A benchmark may fail thousands of connections alike: report a few, then every thousandth.
            let count = failures["failed"]
            if count <= 5 || count % 1000 == 0 {
                Output.log("connection \(count) failed: \(error)")
            }
            await connection.abort()
        }
    }

    /// The listener's counters as the last JSON line (largest_amplification: the most any attempt
    /// was sent, as a multiple of what it had sent, before its address was proven).
    static func counterFields(_ counters: TOUEndpointCounters) -> [(String, JSONValue)] {
        [("sessions_accepted", .int(counters.sessionsAccepted)),
         ("datagrams_received", .int(counters.datagramsReceived)),
         ("datagrams_sent", .int(counters.datagramsSent)),
         ("cookieless_admissions", .int(counters.cookielessAdmissions)),
         ("hello_verify_requests_sent", .int(counters.helloVerifyRequestsSent)),
         ("replayed_attempts", .int(counters.replayedAttempts)),
         ("largest_amplification", .double(counters.largestAmplification)),
         ("dropped", .int(counters.totalDropped)),
         ("dropped_malformed", .int(counters.droppedMalformed)),
         ("dropped_unknown_session", .int(counters.droppedUnknownSession)),
         ("datagrams_after_end", .int(counters.datagramsAfterEnd)),
         ("dropped_bad_attempt", .int(counters.droppedBadAttempt)),
         ("dropped_over_limit", .int(counters.droppedOverLimit)),
         ("dropped_by_session", .int(counters.droppedBySession)),
         ("misrouted_datagrams", .int(counters.misroutedDatagrams))]
    }

    /// SIGTERM and SIGINT end the server with status 0 (the harness stops it that way), after
    /// `report` has run (or 2 s have passed).
    static func exitOnSignals(report: @escaping @Sendable () async -> Void) -> [DispatchSourceSignal] {
        [SIGTERM, SIGINT].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: DispatchQueue.global())
            source.setEventHandler {
                Output.log("signal \(number): exiting")
                let reported = DispatchSemaphore(value: 0)
                Task {
                    await report()
                    reported.signal()
                }
                _ = reported.wait(timeout: .now() + 2)
                terminate(0)
            }
            source.resume()
            return source
        }
    }
}
