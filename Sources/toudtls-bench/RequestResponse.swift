import ArgumentParser
import CommandLineSupport
import Foundation
import NIOCore
import TOUDTLS

/// N connections at once, each in 1-byte ping-pong with the echo server; latency per transaction.
struct RequestResponse: AsyncParsableCommand, ArgumentChecking {
    static let configuration = CommandConfiguration(
        commandName: "rr",
        abstract: "1-byte request/response on N concurrent connections against `serve`."
    )

    @OptionGroup var options: CommonOptions

    @Option(help: "Concurrent connections.")
    var connections: Int = 1

    @Option(help: "Seconds measured, after the warm-up.")
    var seconds: Double = 5

    @Option(help: "Seconds of transactions before measuring.")
    var warmupSeconds: Double = 1

    @Option(help: "The server's process id: also report its CPU per transaction over the measured window (Linux /proc).")
    var serverPid: Int32?

    @Option(help: "Handshakes in flight at once while opening the connections.")
    var connectConcurrency: Int = 64

    @Option(help: "UDP sockets the connections share (TOUClientEndpoint), each on its own event loop; 0: a socket per connection.")
    var sharedSockets: Int = 0

    func checkArguments() throws {
        try options.requirePort()
        guard connections > 0, seconds > 0, warmupSeconds >= 0 else {
            throw ValidationError("--connections and --seconds must be positive, --warmup-seconds not negative")
        }
        guard sharedSockets >= 0 else { throw ValidationError("--shared-sockets must not be negative") }
    }

    func run() async throws {
        raiseFileLimit()
        let tally = Tally()
        let watchdog = Watchdog(stallSeconds: options.stallSeconds, status: { tally.summary }) { message in
            Output.log("rr \(message)")
            terminate(3)
        }
        watchdog.enter("opening \(connections) connections")
        let opened = try await openAll(tally: tally, watchdog: watchdog)
        Output.log("rr: \(opened.count) connections open; \(warmupSeconds) s warm-up, \(seconds) s measured")

        watchdog.enter("exchanging 1-byte requests")
        let start = nowNanos()
        let measureFrom = start + UInt64(warmupSeconds * 1e9)
        let measureUntil = measureFrom + UInt64(seconds * 1e9)
        // CPU of both processes over the measured window: sampled when it starts and when the
        // last connection has stopped exchanging.
        let serverPid = self.serverPid
        let cpuAtStart = Task { () -> (client: CPUTime, server: CPUTime?) in
            let wait = measureFrom > nowNanos() ? measureFrom - nowNanos() : 0
            try? await Task.sleep(nanoseconds: wait)
            return (CPUTime.ofThisProcess(), serverPid.flatMap(CPUTime.ofProcess))
        }
        let latencies = try await withThrowingTaskGroup(of: [UInt64].self) { group in
            for connection in opened {
                group.addTask {
                    try await withTaskExecutorPreference(connection.taskExecutor) {
                        try await OnConnectionLoop.pingPong(connection, from: measureFrom, until: measureUntil,
                                                            watchdog: watchdog)
                    }
                }
            }
            var all: [UInt64] = []
            for try await some in group { all.append(contentsOf: some) }
            return all
        }
        let measuredSeconds = elapsedSeconds(since: measureFrom)
        let cpuStart = await cpuAtStart.value
        let clientCPU = CPUTime.ofThisProcess() - cpuStart.client
        let serverCPU = serverPid.flatMap(CPUTime.ofProcess).flatMap { after in cpuStart.server.map { after - $0 } }

        watchdog.enter("closing")
        try await withThrowingTaskGroup(of: Void.self) { group in
            for connection in opened {
                group.addTask {
                    try await connection.finishWriting()
                    for try await _ in connection.inbound {}
                    try await connection.close()
                    watchdog.progress()
                }
            }
            try await group.waitForAll()
        }
        watchdog.stop()

        let sorted = latencies.sorted().map { Double($0) / 1e3 }
        Output.json([
            ("test", .string("rr")),
            ("connections", .int(connections)),
            ("transactions", .int(sorted.count)),
            ("transactions_per_s", .double(Double(sorted.count) / measuredSeconds)),
            ("p50_us", .double(percentile(sorted, 0.50))),
            ("p90_us", .double(percentile(sorted, 0.90))),
            ("p95_us", .double(percentile(sorted, 0.95))),
            ("p99_us", .double(percentile(sorted, 0.99))),
        ] + cpuFields(client: clientCPU, server: serverCPU, transactions: sorted.count))
    }

    private func cpuFields(client: CPUTime, server: CPUTime?, transactions: Int) -> [(String, JSONValue)] {
        let count = Double(max(1, transactions))
        var fields: [(String, JSONValue)] = [
            ("client_user_us_per_transaction", .double(client.userMicroseconds / count)),
            ("client_sys_us_per_transaction", .double(client.systemMicroseconds / count)),
        ]
        if let server {
            fields.append(("server_user_us_per_transaction", .double(server.userMicroseconds / count)))
            fields.append(("server_sys_us_per_transaction", .double(server.systemMicroseconds / count)))
        }
        return fields
    }

    func openAll(tally: Tally, watchdog: Watchdog) async throws -> [TOUConnection] {
        var endpoints: [TOUClientEndpoint] = []
        for _ in 0..<sharedSockets {
            endpoints.append(try await TOUClientEndpoint.bind(host: options.host.contains(":") ? "::" : "0.0.0.0",
                                                              configuration: options.clientConfiguration))
        }
        let opened = await openConnections(connections, concurrency: connectConcurrency, options: options,
                                           sharing: endpoints, tally: tally, watchdog: watchdog)
        guard opened.count == connections else {
            throw BenchError.failed("only \(opened.count) of \(connections) connections opened")
        }
        return opened
    }
}

/// One connection's work, meant to run under `withTaskExecutorPreference(connection.taskExecutor)`:
/// then reads and writes never switch threads (the library's lowest-latency way to drive a connection).
enum OnConnectionLoop {
    /// One transaction: writes one byte and waits for its echo.
    static func exchangeOneByte(_ connection: TOUConnection,
                                inbound: inout TOUConnection.Inbound.AsyncIterator) async throws {
        var byte = ByteBufferAllocator().buffer(capacity: 1)
        byte.writeInteger(UInt8(42))
        try await connection.write(byte)
        var received = 0
        while received < 1 {
            guard let reply = try await inbound.next() else {
                throw BenchError.failed("the server closed a connection before echoing")
            }
            received += reply.readableBytes
        }
    }

    /// Ping-pong until `until`; returns the latencies (ns) of transactions started at or after `from`.
    static func pingPong(_ connection: TOUConnection, from: UInt64, until: UInt64,
                         watchdog: Watchdog) async throws -> [UInt64] {
        var latencies: [UInt64] = []
        var inbound = connection.inbound.makeAsyncIterator()
        while true {
            let t0 = nowNanos()
            if t0 >= until { break }
            try await exchangeOneByte(connection, inbound: &inbound)
            let t1 = nowNanos()
            watchdog.progress(at: t1)
            if t0 >= from { latencies.append(t1 - t0) }
        }
        return latencies
    }

    /// Echoes every chunk as it arrives; at the peer's end of stream finishes and closes.
    static func echo(_ connection: TOUConnection) async throws {
        for try await chunk in connection.inbound {
            try await connection.write(chunk)
        }
        try await connection.finishWriting()
        try await connection.close()
    }
}
