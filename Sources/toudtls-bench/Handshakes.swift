import ArgumentParser
import CommandLineSupport
import Foundation
import NIOCore
import TOUDTLS

/// Connection setup rate, latency and cost: connect, one echoed byte, orderly close, again and again.
/// Full handshakes by default (no session cache); with --resume every connect resumes a session.
struct Handshakes: AsyncParsableCommand, ArgumentChecking {
    static let configuration = CommandConfiguration(
        abstract: "Repeated connect + 1-byte echo + close against `serve`: setup rate, latency and CPU.",
        discussion: """
            Each iteration is connect (the byte to echo given to it, so it rides on the SYN as a request
            written at once does; --write-after-connect writes it afterwards), the echo, half-close, drain,
            close. CPU per handshake is
            this process's (getrusage) over the timed window divided by the handshakes in it, and with
            --server-pid the server's too (/proc/PID/stat). After the window, --counter-samples more
            connections read the library's endpoint counters: datagrams per set-up and per connection.
            """
    )

    @OptionGroup var options: CommonOptions

    @Option(help: "Seconds of repeated handshakes.")
    var seconds: Double = 5

    @Option(help: "Handshake loops running in parallel.")
    var concurrency: Int = 1

    @Option(help: "1-byte round trips measured on one connection first, for rtt_us.")
    var rttSamples: Int = 500

    @Flag(help: "Resume every handshake from a session saved by the first connection (default: full handshakes, no session cache).")
    var resume = false

    @Option(help: "The server's process id: also report its CPU per handshake over the timed window (Linux /proc).")
    var serverPid: Int32?

    @Option(help: "Connections after the timed window whose endpoint counters give datagrams per set-up.")
    var counterSamples: Int = 20

    @Flag(help: "Write the byte after connect returns, instead of handing it to connect to ride on the SYN.")
    var writeAfterConnect = false

    func checkArguments() throws {
        try options.requirePort()
        guard seconds > 0, concurrency > 0, rttSamples > 0, counterSamples > 0 else {
            throw ValidationError("--seconds, --concurrency, --rtt-samples and --counter-samples must be positive")
        }
    }

    struct Sample: Sendable {
        var connect: UInt64
        var firstByte: UInt64
        var resumed: Bool
    }

    /// What the client's own endpoint had sent and received when connect returned, and at the end.
    struct DatagramSample: Sendable {
        var setupSent: Int
        var setupReceived: Int
        var totalSent: Int
        var totalReceived: Int
    }

    func run() async throws {
        raiseFileLimit()
        let tally = Tally()
        let watchdog = Watchdog(stallSeconds: options.stallSeconds, status: { tally.summary }) { message in
            Output.log("handshakes \(message)")
            terminate(3)
        }
        let options = self.options
        var resumable = options.clientConfiguration
        // One cache for all loops: the round-trip connection below fills it, every later connect resumes.
        if resume { resumable.sessionCache = TOUSessionCache() }
        let configuration = resumable
        let early = !writeAfterConnect

        watchdog.enter("measuring the round-trip time on one connection")
        let rtt = try await Self.roundTrip(options: options, configuration: configuration,
                                           samples: rttSamples, watchdog: watchdog)
        Output.log("handshakes: rtt \(round2(Double(rtt) / 1e3)) us")
        if resume, configuration.sessionCache?.count == 0 {
            throw BenchError.failed("the server issued no session ticket: nothing to resume")
        }

        watchdog.enter("repeating handshakes")
        let serverPid = self.serverPid
        let serverBefore = serverPid.flatMap(CPUTime.ofProcess)
        let clientBefore = CPUTime.ofThisProcess()
        let start = nowNanos()
        let until = start + UInt64(seconds * 1e9)
        let samples = await withTaskGroup(of: [Sample].self) { group in
            for _ in 0..<concurrency {
                // Each loop of connections stays on one event loop's executor, as a client that
                // connects repeatedly would: its connections live on that loop, with no thread switch
                // per connect, read or write (s_time, the baseline, is one single-threaded process).
                group.addTask(executorPreference: TOUConnection.nextTaskExecutor(datagramIO: options.io)) {
                    var samples: [Sample] = []
                    while nowNanos() < until {
                        do {
                            samples.append(try await Self.once(options: options, configuration: configuration,
                                                               early: early, watchdog: watchdog))
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
        let clientCPU = CPUTime.ofThisProcess() - clientBefore
        let serverCPU = serverPid.flatMap(CPUTime.ofProcess).flatMap { after in serverBefore.map { after - $0 } }

        watchdog.enter("reading endpoint counters of \(counterSamples) more connections")
        var datagrams: [DatagramSample] = []
        for _ in 0..<counterSamples {
            datagrams.append(try await Self.countDatagrams(options: options, configuration: configuration,
                                                           early: early))
            watchdog.progress()
        }
        watchdog.stop()

        let connect = samples.map { Double($0.connect) / 1e6 }.sorted()
        let firstByte = samples.map { Double($0.firstByte) / 1e6 }.sorted()
        let rttMilliseconds = Double(rtt) / 1e6
        let connectP50 = percentile(connect, 0.5)
        let firstByteP50 = percentile(firstByte, 0.5)
        let failures = tally["failures"]
        let count = Double(max(samples.count, 1))
        func mean(_ value: (DatagramSample) -> Int) -> Double {
            Double(datagrams.map(value).reduce(0, +)) / Double(max(datagrams.count, 1))
        }
        let setupSent = mean(\.setupSent)
        let setupReceived = mean(\.setupReceived)
        var fields: [(String, JSONValue)] = [
            ("test", .string("handshakes")),
            ("mode", .string(resume ? "resumed" : "full")),
            ("handshakes", .int(samples.count)),
            ("resumed_handshakes", .int(samples.filter(\.resumed).count)),
            ("handshakes_per_s", .double(Double(samples.count) / elapsed)),
            ("connect_ms_p50", .double(connectP50)),
            ("connect_ms_p99", .double(percentile(connect, 0.99))),
            ("first_byte_ms_p50", .double(firstByteP50)),
            ("first_byte_ms_p99", .double(percentile(firstByte, 0.99))),
            ("rtt_us", .double(Double(rtt) / 1e3)),
            ("connect_rtts", .double(connectP50 / rttMilliseconds)),
            ("first_byte_rtts", .double(firstByteP50 / rttMilliseconds)),
            ("client_cpu_us_per_handshake", .double(clientCPU.totalMicroseconds / count)),
            ("client_user_us_per_handshake", .double(clientCPU.userMicroseconds / count)),
            ("client_sys_us_per_handshake", .double(clientCPU.systemMicroseconds / count)),
        ]
        if let serverCPU {
            fields += [
                ("server_cpu_us_per_handshake", .double(serverCPU.totalMicroseconds / count)),
                ("server_user_us_per_handshake", .double(serverCPU.userMicroseconds / count)),
                ("server_sys_us_per_handshake", .double(serverCPU.systemMicroseconds / count)),
            ]
        }
        fields += [
            ("setup_datagrams_sent", .double(setupSent)),
            ("setup_datagrams_received", .double(setupReceived)),
            ("datagrams_per_connect", .double(setupSent + setupReceived)),
            ("connection_datagrams_sent", .double(mean(\.totalSent))),
            ("connection_datagrams_received", .double(mean(\.totalReceived))),
            ("counter_samples", .int(datagrams.count)),
            ("concurrency", .int(concurrency)),
            ("byte_on_syn", .bool(early)),
        ]
        if failures > 0 { fields.append(("failures", .int(failures))) }
        Output.json(fields)
        if failures > 0 || samples.isEmpty { throw ExitCode(1) }
    }

    /// One iteration: connect, one byte there and back, half-close, drain, close.
    static func once(options: CommonOptions, configuration: TOUConfiguration, early: Bool,
                     watchdog: Watchdog) async throws -> Sample {
        let t0 = nowNanos()
        let connection = try await TOUConnection.connect(host: options.host, port: options.port,
                                                         configuration: configuration,
                                                         initialData: early ? oneByte : nil)
        let t1 = nowNanos()
        let t2 = try await exchangeAndClose(connection, written: early)
        watchdog.progress()
        return Sample(connect: t1 - t0, firstByte: t2 - t0, resumed: connection.isResumed)
    }

    /// An iteration as in `once`, reading the client endpoint's counters when connect returns and
    /// after the close (each client connection has an endpoint of its own).
    static func countDatagrams(options: CommonOptions, configuration: TOUConfiguration,
                               early: Bool) async throws -> DatagramSample {
        let connection = try await TOUConnection.connect(host: options.host, port: options.port,
                                                         configuration: configuration,
                                                         initialData: early ? oneByte : nil)
        let setup = await connection.endpointCounters
        _ = try await exchangeAndClose(connection, written: early)
        let total = await connection.endpointCounters
        return DatagramSample(setupSent: setup.datagramsSent, setupReceived: setup.datagramsReceived,
                              totalSent: total.datagramsSent, totalReceived: total.datagramsReceived)
    }

    static var oneByte: ByteBuffer { ByteBuffer(bytes: [42]) }

    /// One byte there (unless connect already sent it) and back, half-close, drain, close (abort on
    /// failure); returns when the echo arrived.
    static func exchangeAndClose(_ connection: TOUConnection, written: Bool) async throws -> UInt64 {
        do {
            var inbound = connection.inbound.makeAsyncIterator()
            if written {
                guard try await inbound.next() != nil else {
                    throw BenchError.failed("the server closed a connection before echoing")
                }
            } else {
                try await OnConnectionLoop.exchangeOneByte(connection, inbound: &inbound)
            }
            let echoed = nowNanos()
            try await connection.finishWriting()
            while try await inbound.next() != nil {}
            try await connection.close()
            return echoed
        } catch {
            await connection.abort()
            throw error
        }
    }

    /// The median 1-byte round trip on one established connection (nanoseconds).
    static func roundTrip(options: CommonOptions, configuration: TOUConfiguration, samples: Int,
                          watchdog: Watchdog) async throws -> UInt64 {
        let connection = try await TOUConnection.connect(host: options.host, port: options.port,
                                                         configuration: configuration)
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
        return times[times.count / 2]
    }
}
