import Foundation
import Testing

/// toudtls-cat through the impairing relay: loss, reordering, duplication and delay on a real path,
/// and a listener that sees the relay's address rather than the client's.
@Suite("toudtls-cat through a lossy relay", .serialized)
struct RelayTransferTests {
    let certs = CLIProcess.certs

    func transferThroughRelay(bytes: Int, secure: Bool, impairment: RelayImpairment, seed: UInt64,
                              timeout: TimeInterval, rebindAfterBytes: Int? = nil,
                              rebindEvery interval: TimeInterval? = nil, minimumRebinds: Int = 1,
                              clientLog: ((String) -> Void)? = nil)
        throws -> (RelayDirectionStats, RelayDirectionStats) {
        let input = try makeRandomFile(bytes: bytes)
        defer { try? FileManager.default.removeItem(at: input) }
        let serverOptions = secure ? ["--cert", "\(certs)/server.pem", "--key", "\(certs)/server.key"] : ["--plain"]
        let clientOptions = secure ? ["--ca", "\(certs)/ca.pem", "--server-name", "localhost"] : ["--plain"]
        let server = try startCat(["-l", "-v"] + serverOptions + ["127.0.0.1", "0"])
        defer { finish(server, timeout: 0) }
        try #require(server.waitForError(containing: "listening on"), "listener never ready: \(server.errorOutput)")
        let port = try #require(listenerPort(of: server))

        let relay = try UDPRelay(targetPort: port, toTarget: impairment, toClient: impairment, seed: seed)
        defer { relay.stop() }
        let started = Date()
        let client = try startCat(["-v"] + clientOptions + ["127.0.0.1", "\(relay.port)"], stdin: input)
        defer { finish(client, timeout: 0) }
        let firstUpstreamPort = relay.upstreamPort
        var rebound = false
        if let threshold = rebindAfterBytes {
            // Change the client's apparent address once the listener is well into the transfer.
            let deadline = Date().addingTimeInterval(timeout)
            while server.output.count < threshold && client.process.isRunning && Date() < deadline {
                Thread.sleep(forTimeInterval: 0.005)
            }
            if client.process.isRunning {
                try relay.rebind()
                rebound = true
            }
            #expect(rebound, "the transfer ended before the relay could rebind; use more bytes")
        }
        if let interval {
            // A NAT that rebinds again and again while the transfer runs.
            var rebinds = 0
            let deadline = Date().addingTimeInterval(timeout)
            while client.process.isRunning && Date() < deadline {
                Thread.sleep(forTimeInterval: interval)
                if client.process.isRunning {
                    try relay.rebind()
                    rebinds += 1
                    rebound = true
                }
            }
            #expect(rebinds >= minimumRebinds, "only \(rebinds) rebinds before the transfer ended; use more bytes")
        }
        let clientStatus = finish(client, timeout: timeout)
        let serverStatus = finish(server, timeout: 15)
        relay.stop()
        let stats = relay.stats
        print("relay seed \(seed), \(bytes) B in \(String(format: "%.1f", Date().timeIntervalSince(started))) s; "
              + "to listener: \(stats.toTarget); to client: \(stats.toClient)")

        #expect(clientStatus == 0, "client: \(client.errorOutput)")
        #expect(serverStatus == 0, "server: \(server.errorOutput)")
        let expected = try Data(contentsOf: input)
        #expect(server.output.count == expected.count)
        // Compared outside #expect: on a mismatch it would diff megabytes and never finish.
        let intact = server.output == expected
        let firstDifference = zip(server.output, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset
            ?? min(server.output.count, expected.count)
        #expect(intact, "the transfer arrived intact; first difference at byte \(firstDifference)")
        // The listener was reached from the relay's own port, never from the client's.
        #expect(server.errorOutput.contains(":\(firstUpstreamPort)"), "listener log: \(server.errorOutput)")
        if rebound { #expect(relay.upstreamPort != firstUpstreamPort) }
        clientLog?(client.errorOutput)
        return (stats.toTarget, stats.toClient)
    }

    @Test("4 MB with DTLS at 2% loss each way plus reordering, duplication and delay arrives intact")
    func lossySecure() throws {
        let impairment = RelayImpairment(lossPercent: 2, duplicatePercent: 0.5, reorderPercent: 2,
                                         reorderExtraDelay: 0.003, delay: 0.0005, jitter: 0.0005, queueLimit: 2048)
        let (toListener, toClient) = try transferThroughRelay(bytes: 4 << 20, secure: true, impairment: impairment,
                                                              seed: 0x70D7, timeout: 50)
        // The impairments really happened, in both directions.
        #expect(toListener.lost > 20 && toClient.lost > 5, "\(toListener) / \(toClient)")
        #expect(toListener.reordered > 20 && toListener.duplicated > 0)
        #expect(toListener.overflowed == 0 && toClient.overflowed == 0, "the queue bound was not what was tested")
    }

    @Test("NAT rebinding mid-transfer: the relay moves to a new port, the session follows, 4 MB arrive intact")
    func rebindingSecure() throws {
        let (toListener, toClient) = try transferThroughRelay(bytes: 4 << 20, secure: true, impairment: .none,
                                                              seed: 1, timeout: 50, rebindAfterBytes: 1 << 20)
        #expect(toListener.lost == 0 && toClient.sendErrors == 0, "\(toListener) / \(toClient)")
    }

    /// Issue 3's acceptance path: 5 % loss, 5 % reordering, 1 % duplication, 20 ms delay.
    @Test("20 MB with DTLS through 5% loss, 5% reordering, 1% duplication and 20 ms delay; retransmissions reported")
    func harshPath() throws {
        let impairment = RelayImpairment(lossPercent: 5, duplicatePercent: 1, reorderPercent: 5,
                                         reorderExtraDelay: 0.005, delay: 0.010, jitter: 0.001, queueLimit: 4096)
        var log = ""
        let (toListener, _) = try transferThroughRelay(bytes: 20 << 20, secure: true, impairment: impairment,
                                                       seed: 0x5EED, timeout: 240, clientLog: { log = $0 })
        #expect(toListener.lost > 500, "\(toListener)")
        // The client's -v summary reports the connection's retransmissions.
        let summary = log.split(separator: "\n").first { $0.contains("retransmissions") } ?? ""
        print("client: \(summary)")
        let count = summary.split(separator: " ").firstIndex(of: "retransmissions").flatMap { index in
            Int(summary.split(separator: " ")[index - 1])
        }
        #expect((count ?? 0) > 0, "client log: \(log)")
    }

    // Every 0.2 s: at one rebind a second, a fast enough transfer ended after a single rebind.
    @Test("a NAT that rebinds every 0.2 s: the session follows each move, 32 MB arrive intact")
    func rebindingOften() throws {
        let (toListener, _) = try transferThroughRelay(bytes: 32 << 20, secure: true, impairment: .none, seed: 2,
                                                       timeout: 120, rebindEvery: 0.2, minimumRebinds: 2)
        #expect(toListener.lost == 0, "\(toListener)")
    }
}
