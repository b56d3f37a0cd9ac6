import ArgumentParser
import CommandLineSupport
import Foundation
import NIOCore
import TOUDTLS

/// Connection setup rate and latency: connect, one echoed byte, orderly close, again and again.
struct Handshakes: AsyncParsableCommand, ArgumentChecking {
    static let configuration = CommandConfiguration(
        abstract: "Repeated connect + 1-byte echo + close against `serve`: setup rate and latency."
    )

    @OptionGroup var options: CommonOptions

    @Option(help: "Seconds of repeated handshakes.")
    var seconds: Double = 5

    @Option(help: "Handshake loops running in parallel.")
    var concurrency: Int = 1

    @Option(help: "1-byte round trips measured on one connection first, for rtt_us.")
    var rttSamples: Int = 500

    func checkArguments() throws {
        try options.requirePort()
        guard seconds > 0, concurrency > 0, rttSamples > 0 else {
            throw ValidationError("--seconds, --concurrency and --rtt-samples must be positive")
        }
    }

    struct Sample: Sendable {
        var connect: UInt64
        var firstByte: UInt64
    }

    func run() async throws {
        raiseFileLimit()
        let tally = Tally()
        let watchdog = Watchdog(stallSeconds: options.stallSeconds, status: { tally.summary }) { message in
            Output.log("handshakes \(message)")
            terminate(3)
        }
        let options = self.options
        let configuration = options.clientConfiguration

        watchdog.enter("measuring the round-trip time on one connection")
        let (rtt, datagrams) = try await Self.roundTrip(options: options, configuration: configuration,
                                                        samples: rttSamples, watchdog: watchdog)
        Output.log("handshakes: rtt \(round2(Double(rtt) / 1e3)) us, \(datagrams) datagrams per connect")

        watchdog.enter("repeating handshakes")
        let start = nowNanos()
        let until = start + UInt64(seconds * 1e9)
        let samples = await withTaskGroup(of: [Sample].self) { group in
            for _ in 0..<concurrency {
                group.addTask {
                    var samples: [Sample] = []
                    while nowNanos() < until {
                        do {
                            samples.append(try await Self.once(options: options, configuration: configuration,
                                                               watchdog: watchdog))
                        } catch {
                            tally.add("failures")
                            if tally["failures"] <= 5 { Output.log("handshakes: a connection failed: \(error)") }
                        }
                    }
                    return samples
                }
            }
            var all: [Sample] = []
            for await some in group { all.append(contentsOf: some) }
            return all
        }
        let elapsed = elapsedSeconds(since: start)
        watchdog.stop()

        let connect = samples.map { Double($0.connect) / 1e6 }.sorted()
        let firstByte = samples.map { Double($0.firstByte) / 1e6 }.sorted()
        let rttMilliseconds = Double(rtt) / 1e6
        let connectP50 = percentile(connect, 0.5)
        let firstByteP50 = percentile(firstByte, 0.5)
        let failures = tally["failures"]
        var fields: [(String, JSONValue)] = [
            ("test", .string("handshakes")),
            ("handshakes", .int(samples.count)),
            ("handshakes_per_s", .double(Double(samples.count) / elapsed)),
            ("connect_ms_p50", .double(connectP50)),
            ("connect_ms_p99", .double(percentile(connect, 0.99))),
            ("first_byte_ms_p50", .double(firstByteP50)),
            ("first_byte_ms_p99", .double(percentile(firstByte, 0.99))),
            ("rtt_us", .double(Double(rtt) / 1e3)),
            ("connect_rtts", .double(connectP50 / rttMilliseconds)),
            ("first_byte_rtts", .double(firstByteP50 / rttMilliseconds)),
            ("datagrams_per_connect", .int(datagrams)),
            ("concurrency", .int(concurrency)),
        ]
        if failures > 0 { fields.append(("failures", .int(failures))) }
        Output.json(fields)
        if failures > 0 || samples.isEmpty { throw ExitCode(1) }
    }

    /// One iteration: connect, one byte there and back, half-close, drain, close.
    static func once(options: CommonOptions, configuration: TOUConfiguration, watchdog: Watchdog) async throws -> Sample {
        let t0 = nowNanos()
        let connection = try await TOUConnection.connect(host: options.host, port: options.port,
                                                         configuration: configuration)
        let t1 = nowNanos()
        do {
            var inbound = connection.inbound.makeAsyncIterator()
            try await OnConnectionLoop.exchangeOneByte(connection, inbound: &inbound)
            let t2 = nowNanos()
            watchdog.progress(at: t2)
            try await connection.finishWriting()
            while try await inbound.next() != nil {}
            try await connection.close()
            watchdog.progress()
            return Sample(connect: t1 - t0, firstByte: t2 - t0)
        } catch {
            await connection.abort()
            throw error
        }
    }

    /// The median 1-byte round trip on one established connection (nanoseconds), and the datagrams its
    /// endpoint had sent and received when connect returned.
    static func roundTrip(options: CommonOptions, configuration: TOUConfiguration, samples: Int,
                          watchdog: Watchdog) async throws -> (rtt: UInt64, datagrams: Int) {
        let connection = try await TOUConnection.connect(host: options.host, port: options.port,
                                                         configuration: configuration)
        let counters = await connection.endpointCounters
        let datagrams = counters.datagramsSent + counters.datagramsReceived
        var inbound = connection.inbound.makeAsyncIterator()
        var times: [UInt64] = []
        let warmup = min(50, samples)
        for round in 0..<(warmup + samples) {
            let t0 = nowNanos()
            try await OnConnectionLoop.exchangeOneByte(connection, inbound: &inbound)
            let t1 = nowNanos()
            watchdog.progress(at: t1)
            if round >= warmup { times.append(t1 - t0) }
        }
        try await connection.finishWriting()
        while try await inbound.next() != nil {}
        try await connection.close()
        times.sort()
        return (times[times.count / 2], datagrams)
    }
}
