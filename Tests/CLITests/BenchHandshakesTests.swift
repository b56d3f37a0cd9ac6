import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// `toudtls-bench handshakes` against `toudtls-bench serve`, as bench/compare runs them.
@Suite("toudtls-bench handshakes", .serialized)
struct BenchHandshakesTests {
    static func handshakes(port: Int, serverPid: Int, extra: [String]) throws -> [String: Any] {
        let client = try CLIProcess(["handshakes", "--port", String(port), "--certs", CLIProcess.certs,
                                     "--seconds", "0.5", "--rtt-samples", "5", "--counter-samples", "2",
                                     "--server-pid", String(serverPid)] + extra, tool: "toudtls-bench")
        #expect(client.wait(timeout: 120) == 0, "stderr: \(client.errorOutput)")
        return try client.lastJSONObject()
    }

    /// One configuration used to serve every connect, so after the first each handshake resumed
    /// unseen; now full handshakes are the default and --resume asks for resumed ones.
    @Test("full handshakes by default, every one resumed with --resume; CPU and counters reported; serve prints its counters at SIGTERM")
    func fullAndResumed() throws {
        let (server, hello) = try CLIProcess.benchServe()
        defer { server.terminate() }
        let port = try #require(hello["listening"] as? Int, "serve said: \(server.outputText) \(server.errorOutput)")
        let pid = try #require(hello["pid"] as? Int)

        let full = try Self.handshakes(port: port, serverPid: pid, extra: [])
        let fullCount = try #require(full["handshakes"] as? Int, "\(full)")
        #expect(full["mode"] as? String == "full")
        #expect(full["byte_on_syn"] as? Bool == true, "\(full)")
        #expect(fullCount > 0)
        #expect(full["resumed_handshakes"] as? Int == 0, "\(full)")
        #expect((full["client_cpu_us_per_handshake"] as? Double ?? 0) > 0, "\(full)")
        #expect(full["server_cpu_us_per_handshake"] is Double, "\(full)")
        #expect((full["setup_datagrams_sent"] as? Double ?? 0) >= 2, "\(full)")
        #expect((full["setup_datagrams_received"] as? Double ?? 0) >= 2, "\(full)")

        // The other way to send the request: written after connect returns.
        let resumed = try Self.handshakes(port: port, serverPid: pid, extra: ["--resume", "--write-after-connect"])
        let resumedCount = try #require(resumed["handshakes"] as? Int, "\(resumed)")
        #expect(resumed["byte_on_syn"] as? Bool == false, "\(resumed)")
        #expect(resumed["mode"] as? String == "resumed")
        #expect(resumedCount > 0)
        #expect(resumed["resumed_handshakes"] as? Int == resumedCount, "\(resumed)")

        kill(server.process.processIdentifier, SIGTERM)
        #expect(server.wait(timeout: 30) == 0, "stderr: \(server.errorOutput)")
        let counters = try server.lastJSONObject()
        // Each run adds a round-trip connection and the counter samples to the timed handshakes.
        #expect(counters["sessions_accepted"] as? Int == fullCount + resumedCount + 2 * 3, "\(counters)")
        #expect(counters["hello_verify_requests_sent"] as? Int == 0, "\(counters)")
        let amplification = try #require(counters["largest_amplification"] as? Double, "\(counters)")
        #expect(amplification > 0 && amplification <= 3, "\(counters)")
    }

    @Test("rr --shared-sockets 2 runs its connections over two client sockets, as bench/compare's rr200 does")
    func requestResponseOverSharedSockets() throws {
        let (server, hello) = try CLIProcess.benchServe()
        defer { server.terminate() }
        let port = try #require(hello["listening"] as? Int, "serve said: \(server.outputText) \(server.errorOutput)")
        let client = try CLIProcess(["rr", "--port", "\(port)", "--certs", CLIProcess.certs, "--connections", "8",
                                     "--shared-sockets", "2", "--seconds", "0.5", "--warmup-seconds", "0.1"],
                                    tool: "toudtls-bench")
        #expect(client.wait(timeout: 120) == 0, "stderr: \(client.errorOutput)")
        let result = try client.lastJSONObject()
        #expect((result["transactions"] as? Int ?? 0) > 8, "\(result)")
        kill(server.process.processIdentifier, SIGTERM)
        #expect(server.wait(timeout: 30) == 0, "stderr: \(server.errorOutput)")
        let counters = try server.lastJSONObject()
        #expect(counters["sessions_accepted"] as? Int == 8, "\(counters)")
        #expect(counters["dropped"] as? Int == 0, "\(counters)")
    }
}
