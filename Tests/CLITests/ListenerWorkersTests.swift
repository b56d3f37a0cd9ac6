import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A listener with several workers (`toudtls-bench serve --workers 2`: SO_REUSEPORT sockets,
/// one event loop each) and a client whose NAT rebinds through a UDP relay.
@Suite("Listener workers", .serialized)
struct ListenerWorkersTests {
    /// `serve` and its port (nil if it never said), once it printed its first line.
    static func serve(_ extra: [String]) throws -> (CLIProcess, Int?) {
        let (server, hello) = try CLIProcess.benchServe(extra)
        return (server, hello["listening"] as? Int)
    }

    /// SIGTERM to `serve`, then the counters it prints last.
    static func counters(of server: CLIProcess) throws -> [String: Any] {
        kill(server.process.processIdentifier, SIGTERM)
        #expect(server.wait(timeout: 30) == 0, "serve: \(server.errorOutput)")
        return try server.lastJSONObject()
    }

    @Test("with 2 workers, connections from 8 loops for 2 s spread over both, every echo back")
    func connectionsSpread() throws {
        let (server, port) = try Self.serve(["--workers", "2"])
        defer { server.terminate() }
        let run = try CLIProcess(["handshakes", "--port", "\(try #require(port, "\(server.errorOutput)"))",
                                  "--certs", CLIProcess.certs, "--seconds", "2", "--concurrency", "8",
                                  "--counter-samples", "1", "--rtt-samples", "1"], tool: "toudtls-bench")
        #expect(run.wait(timeout: 120) == 0, "handshakes: \(run.errorOutput)")
        let result = try run.lastJSONObject()
        let handshakes = try #require(result["handshakes"] as? Int, "\(result)")
        #expect(handshakes > 8 && result["failures"] == nil, "\(result)")
        let counters = try Self.counters(of: server)
        #expect(counters["workers"] as? Int == 2, "\(counters)")
        let perWorker = try #require(counters["worker_sessions_accepted"] as? [Int], "\(counters)")
        // Every timed connection, plus the one that measured the round-trip time and the one that
        // read the endpoint counters.
        #expect(perWorker.count == 2 && perWorker.reduce(0, +) == handshakes + 2, "\(counters)")
        // Each connection's source port is new, so the kernel's hash spreads them.
        #expect(perWorker.allSatisfy { $0 > 0 }, "\(counters)")
        #expect(counters["dropped"] as? Int == 0, "\(counters)")
    }

    @Test("toudtls-cat -l -k --workers 2 takes one connection after another; --workers without -l or out of range is a usage error")
    func catWorkers() throws {
        let certs = CLIProcess.certs
        let (listener, port) = try CLIProcess.readyListener(
            ["-k", "--workers", "2", "--cert", "\(certs)/server.pem", "--key", "\(certs)/server.key", "127.0.0.1", "0"])
        defer { listener.terminate() }
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("workers-\(getpid()).txt")
        defer { try? FileManager.default.removeItem(at: file) }
        for index in 0..<6 {
            try Data("line \(index)\n".utf8).write(to: file)
            let client = try CLIProcess(["--ca", "\(certs)/ca.pem", "--server-name", "localhost", "127.0.0.1", "\(port)"],
                                        stdin: file)
            #expect(client.wait(timeout: 30) == 0, "client: \(client.errorOutput)")
        }
        #expect(listener.waitForOutput(containing: "line 5\n"), "listener: \(listener.outputText)")
        for index in 0..<6 { #expect(listener.outputText.contains("line \(index)\n")) }
        for arguments in [["--workers", "2", "127.0.0.1", "5"], ["-l", "--workers", "0", "127.0.0.1", "0"]] {
            let misuse = try CLIProcess(arguments)
            #expect(misuse.wait(timeout: 10) == 2, "\(arguments): \(misuse.errorOutput)")
            #expect(misuse.errorOutput.contains("--workers"), "\(misuse.errorOutput)")
        }
    }

    @Test("a client whose address changes every 0.2 s keeps its session on one worker: with the steering program nothing is misrouted, without it datagrams are handed over; the data is intact either way",
          arguments: [true, false])
    func rebindingClient(steering: Bool) throws {
        let (server, port) = try Self.serve(["--workers", "2"] + (steering ? [] : ["--no-steering"]))
        defer { server.terminate() }
        let relay = try UDPRelay(targetPort: UInt16(try #require(port, "\(server.errorOutput)")))
        defer { relay.stop() }
        let input = Pipe()
        let client = try CLIProcess(["--ca", "\(CLIProcess.certs)/ca.pem", "--server-name", "localhost",
                                     "127.0.0.1", "\(relay.port)"], stdinPipe: input)
        defer { client.terminate() }
        try? input.fileHandleForReading.close()  // the client holds its own copy
        // 16 rebinds, 0.2 s apart, with data flowing both ways meanwhile (the server echoes it).
        var sent = Data()
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<16 {
            let chunk = Data((0..<32_768).map { _ in UInt8.random(in: 0...255, using: &generator) })
            try input.fileHandleForWriting.write(contentsOf: chunk)
            sent.append(chunk)
            Thread.sleep(forTimeInterval: 0.2)
            _ = try relay.rebind()
        }
        try input.fileHandleForWriting.close()
        #expect(client.wait(timeout: 60) == 0, "client: \(client.errorOutput)")
        #expect(client.output == sent, "echo: \(client.output.count) of \(sent.count) bytes")
        let counters = try Self.counters(of: server)
        #expect(counters["steers_by_session_id"] as? Bool == steering, "\(counters)")
        let misrouted = try #require(counters["misrouted_datagrams"] as? Int, "\(counters)")
        if steering {
            #expect(misrouted == 0, "\(counters)")
        } else {
            // Each rebind moves the client to either socket by the kernel's hash: 16 rebinds all
            // landing on the session's own worker is a 1-in-65,536 chance.
            #expect(misrouted > 0, "\(counters)")
        }
        #expect(counters["sessions_accepted"] as? Int == 1, "\(counters)")
    }
}
