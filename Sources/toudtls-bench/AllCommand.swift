import ArgumentParser
import Foundation
import NIOCore
import TOUDTLS

/// Loopback benchmarks at path MTU 1500: bulk throughput, 1-byte request/response, setup time.
/// Prints one JSON line. Both ends run in this process on SwiftNIO's shared event loops.
struct All: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "all",
        abstract: "Both ends in this process: bulk MB/s, 1-byte request/response, connection setup (default)."
    )

    @Flag(help: "No DTLS: cleartext TCP in GUE (isolates the cost of DTLS).")
    var plain = false

    @Option(help: "Megabytes to move in the bulk test.")
    var megabytes: Int = 200

    @Option(help: "Seconds of 1-byte request/response.")
    var rrSeconds: Double = 3

    @Option(help: "Connections to open for the setup-time figure.")
    var setups: Int = 20

    @Option(help: "Path MTU to assume.")
    var mtu: Int = 1500

    @Option(help: "Directory holding ca.pem, server.pem and server.key.")
    var certs: String = "certs"

    func configurations() -> (server: TOUConfiguration, client: TOUConfiguration) {
        var server: TOUConfiguration
        var client: TOUConfiguration
        if plain {
            server = .plain
            client = .plain
        } else {
            server = .server(certificateChain: .pemFile("\(certs)/server.pem"),
                             privateKey: .pemFile("\(certs)/server.key"))
            client = .client(trustRoots: .pemFile("\(certs)/ca.pem"), serverName: "localhost")
        }
        server.pathMTU = mtu
        client.pathMTU = mtu
        // Request/response measures latency, not Nagle's coalescing.
        server.noDelay = true
        client.noDelay = true
        // setup_ms times full handshakes: a shared session cache would resume all but the first.
        client.sessionCache = nil
        return (server, client)
    }

    func run() async throws {
        let (serverConfiguration, clientConfiguration) = configurations()
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: serverConfiguration)
        guard let port = listener.localAddress.port else { throw TOUError.socketError("no port") }
        let server = Task { await Self.serve(listener) }
        defer { server.cancel() }

        let bulk = try await bulkThroughput(port: port, configuration: clientConfiguration)
        let rr = try await requestResponse(port: port, configuration: clientConfiguration)
        let setup = try await setupTime(port: port, configuration: clientConfiguration)

        var result: [String: Any] = [
            "mode": plain ? "plain" : "dtls",
            "path_mtu": mtu,
            "bulk_megabytes": megabytes,
            "bulk_MBps": round2(bulk.megabytesPerSecond),
            "bulk_seconds": round6(bulk.seconds),
            "bulk_close_seconds": round6(bulk.closeSeconds),
            "bulk_retransmissions": bulk.retransmissions,
            "rr_transactions_per_s": round2(rr.rate),
            "rr_p50_us": round2(rr.p50 * 1e6),
            "rr_p99_us": round2(rr.p99 * 1e6),
            "setup_ms_mean": round2(setup.mean * 1e3),
            "setup_ms_p50": round2(setup.p50 * 1e3),
        ]
        if let suite = bulk.cipherSuite { result["cipher_suite"] = suite }
        let json = try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys])
        Output.line(String(decoding: json, as: UTF8.self))
    }

    /// Server side of every test: echo for request/response, count-and-discard for bulk.
    static func serve(_ listener: TOUListener) async {
        await withTaskGroup(of: Void.self) { group in
            for await connection in listener.connections {
                group.addTask {
                    do {
                        for try await chunk in connection.inbound {
                            // Bulk sends > 1 byte chunks and wants nothing back; RR echoes 1 byte.
                            if chunk.readableBytes <= 64 {
                                try await connection.write(chunk)
                            }
                        }
                        try await connection.close()
                    } catch {
                        await connection.abort()
                    }
                }
            }
        }
    }

    struct BulkResult {
        /// Until the receiver has every byte; the close is timed apart (`closeSeconds`), since in
        /// plain mode the active closer lingers max(2 s, 3 RTO), which would swamp a small transfer.
        var seconds: Double
        var closeSeconds: Double
        var retransmissions: Int
        var cipherSuite: String?
        var megabytes: Int
        var megabytesPerSecond: Double { Double(megabytes << 20) / 1e6 / seconds }
    }

    func bulkThroughput(port: Int, configuration: TOUConfiguration) async throws -> BulkResult {
        let connection = try await TOUConnection.connect(host: "127.0.0.1", port: port, configuration: configuration)
        let chunkSize = 256 << 10
        var chunk = ByteBufferAllocator().buffer(capacity: chunkSize)
        chunk.writeRepeatingByte(0x5a, count: chunkSize)
        let total = megabytes << 20
        let start = DispatchTime.now()
        var sent = 0
        while sent < total {
            try await connection.write(chunk)
            sent += chunkSize
        }
        try await connection.finishWriting()
        // The server finishes its side once it has read everything: its FIN ends the transfer.
        for try await _ in connection.inbound {}
        let transferred = DispatchTime.now()
        let stats = await connection.stats
        // close() returns once every byte is acknowledged and the session has ended.
        try await connection.close()
        let closed = DispatchTime.now()
        return BulkResult(seconds: Double(transferred.uptimeNanoseconds - start.uptimeNanoseconds) / 1e9,
                          closeSeconds: Double(closed.uptimeNanoseconds - transferred.uptimeNanoseconds) / 1e9,
                          retransmissions: stats.retransmissions, cipherSuite: connection.cipherSuite,
                          megabytes: megabytes)
    }

    func requestResponse(port: Int, configuration: TOUConfiguration) async throws -> (rate: Double, p50: Double, p99: Double) {
        let connection = try await TOUConnection.connect(host: "127.0.0.1", port: port, configuration: configuration)
        var byte = ByteBufferAllocator().buffer(capacity: 1)
        byte.writeInteger(UInt8(42))
        var latencies: [Double] = []
        var iterator = connection.inbound.makeAsyncIterator()
        let start = DispatchTime.now().uptimeNanoseconds
        let end = start + UInt64(rrSeconds * 1e9)
        while DispatchTime.now().uptimeNanoseconds < end {
            let t0 = DispatchTime.now().uptimeNanoseconds
            try await connection.write(byte)
            var received = 0
            while received < 1 {
                guard let reply = try await iterator.next() else { throw TOUError.closed }
                received += reply.readableBytes
            }
            latencies.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        }
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        try await connection.finishWriting()
        while try await iterator.next() != nil {}
        try await connection.close()
        latencies.sort()
        return (Double(latencies.count) / elapsed, percentile(latencies, 0.5), percentile(latencies, 0.99))
    }

    func setupTime(port: Int, configuration: TOUConfiguration) async throws -> (mean: Double, p50: Double) {
        var times: [Double] = []
        for _ in 0..<setups {
            let t0 = DispatchTime.now().uptimeNanoseconds
            let connection = try await TOUConnection.connect(host: "127.0.0.1", port: port, configuration: configuration)
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
            try await connection.finishWriting()
            for try await _ in connection.inbound {}
            try await connection.close()
        }
        times.sort()
        return (times.reduce(0, +) / Double(max(times.count, 1)), percentile(times, 0.5))
    }
}
