import Foundation
import Testing

/// -v's summary line and progress, and --stats-json.
@Suite("toudtls-cat progress and stats", .serialized)
struct CatStatsTests {
    let certs = CLIProcess.certs

    func temporaryPath(_ name: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("toudtls-\(UUID().uuidString)-\(name)").path
    }

    @Test("-v ends with a one-line summary; --stats-json writes TCP, DTLS, path and drop counters on both ends")
    func summaryAndJSON() throws {
        let clientJSON = temporaryPath("client.json")
        let serverJSON = temporaryPath("server.json")
        defer {
            try? FileManager.default.removeItem(atPath: clientJSON)
            try? FileManager.default.removeItem(atPath: serverJSON)
        }
        let file = try makeRandomFile(bytes: 1 << 20)
        defer { try? FileManager.default.removeItem(at: file) }
        let (listener, port) = try CLIProcess.readyListener(
            ["--cert", "\(certs)/server.pem", "--key", "\(certs)/server.key", "--stats-json", serverJSON, "127.0.0.1", "0"])
        defer { listener.terminate() }
        let client = try CLIProcess(["-v", "--ca", "\(certs)/ca.pem", "--server-name", "localhost",
                                     "--stats-json", clientJSON, "127.0.0.1", "\(port)"], stdin: file)
        defer { client.terminate() }
        #expect(client.wait() == 0, "client: \(client.errorOutput)")
        #expect(listener.wait() == 0, "listener: \(listener.errorOutput)")
        let summary = client.errorOutput.split(separator: "\n").filter { $0.contains("summary:") }
        #expect(summary.count == 1, "\(client.errorOutput)")
        #expect(summary.first?.contains("sent 1048576 B, received 0 B in ") == true, "\(summary)")
        #expect(summary.first?.contains("retransmissions") == true && summary.first?.contains("rtt") == true)
        // stderr is a pipe here, not a terminal: no per-second progress lines.
        #expect(!client.errorOutput.contains("/s, rtt"), "\(client.errorOutput)")

        let sent = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: clientJSON)))
            as? [String: Any])
        let tcp = try #require(sent["tcp"] as? [String: Any])
        #expect(tcp["bytesSent"] as? Int == 1 << 20)
        #expect((tcp["segmentsSent"] as? Int ?? 0) > 700)
        #expect(tcp["retransmissions"] is Int && tcp["smoothedRTTNanoseconds"] is Int && tcp["congestionWindow"] is Int)
        let dtls = try #require(sent["dtls"] as? [String: Any])
        #expect((dtls["cipherSuite"] as? String)?.isEmpty == false)
        #expect(dtls["peerCertificateSubject"] as? String != nil)
        let path = try #require(sent["path"] as? [String: Any])
        #expect(path["remoteAddress"] as? String == "127.0.0.1:\(port)")
        #expect(path["addressChanges"] as? Int == 0)
        let drops = try #require(sent["drops"] as? [String: Any])
        #expect(drops["endpointTotal"] is Int && drops["connectionDroppedDatagrams"] is Int)
        #expect(sent["outcome"] as? String == "ok")

        let received = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: serverJSON)))
            as? [String: Any])
        #expect((received["tcp"] as? [String: Any])?["bytesReceived"] as? Int == 1 << 20)
    }

    @Test("a failed connection still gets its summary and stats file, with the failure as the outcome")
    func failedConnectionReports() throws {
        let json = temporaryPath("failed.json")
        defer { try? FileManager.default.removeItem(atPath: json) }
        // The listener's stdin stays open, so it sends no FIN: the client's read is what fails.
        let listenerInput = Pipe()
        let listener = try CLIProcess(["-l", "-v", "--cert", "\(certs)/server.pem", "--key", "\(certs)/server.key",
                                       "127.0.0.1", "0"], stdinPipe: listenerInput)
        defer { listener.terminate() }
        #expect(listener.waitForError(containing: "listening on"))
        let port = try #require(listener.listeningPort)
        let input = Pipe()
        let client = try CLIProcess(["-v", "--ca", "\(certs)/ca.pem", "--server-name", "localhost", "--timeout", "1",
                                     "--stats-json", json, "127.0.0.1", "\(port)"], stdinPipe: input)
        defer { client.terminate() }
        #expect(client.waitForError(containing: "connected to"))
        listener.terminate()
        listener.wait()
        try input.fileHandleForWriting.write(contentsOf: Data("into the void\n".utf8))
        #expect(client.wait() == 4, "client: \(client.errorOutput)")
        #expect(client.errorOutput.contains("summary:"))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json)))
            as? [String: Any])
        #expect((object["outcome"] as? String).map(CatTimeoutTests.noticedDeadPeer) == true, "\(object)")
    }

    @Test("with stderr on a terminal, -v prints progress about once a second")
    func progressOnATerminal() throws {
        let (listener, port) = try CLIProcess.readyListener(
            ["--cert", "\(certs)/server.pem", "--key", "\(certs)/server.key", "127.0.0.1", "0"])
        defer { listener.terminate() }
        // script(1) gives the client a pseudo-terminal; its stdin trickles for about 2.5 s.
        let cat = CLIProcess.executable().path
        let command = "(for i in 1 2 3 4 5; do echo tick; sleep 0.5; done) | \(cat) -v --ca \(certs)/ca.pem "
            + "--server-name localhost 127.0.0.1 \(port)"
        let terminal = try CLIProcess(["-q", "-e", "-c", command, "/dev/null"], tool: "/usr/bin/script")
        defer { terminal.terminate() }
        #expect(terminal.wait() == 0, "\(terminal.outputText)")
        let progress = terminal.outputText.split(whereSeparator: \.isNewline).filter { $0.contains("/s, rtt") }
        #expect(progress.count >= 1, "\(terminal.outputText)")
        #expect(progress.first?.contains("sent") == true && progress.first?.contains("retransmissions") == true)
        #expect(terminal.outputText.contains("summary:"))
    }
}
