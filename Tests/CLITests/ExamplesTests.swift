import Foundation
import Testing

/// The programs in Examples/ do what the README says, run from the repository root as shown there.
@Suite("Examples", .serialized)
struct ExamplesTests {
    /// An example run from the package root (they name certs/ relative to it).
    static func example(_ name: String, _ arguments: [String]) throws -> CLIProcess {
        let command = (["cd", CLIProcess.packageRoot.path, "&&", "exec", CLIProcess.executable(name).path] + arguments)
            .map { $0.contains(" ") ? "'\($0)'" : $0 }.joined(separator: " ")
        return try CLIProcess(["-c", command], tool: "/bin/sh")
    }

    @Test("EchoServer echoes what EchoClient sends")
    func echo() throws {
        let server = try Self.example("EchoServer", ["0"])
        defer { server.terminate(); server.wait() }
        var port: Int?
        let deadline = Date().addingTimeInterval(60)
        while port == nil, Date() < deadline {
            if let line = server.outputText.split(separator: "\n").first(where: { $0.hasPrefix("echoing on ") }) {
                port = line.split(separator: ":").last.flatMap { Int($0) }
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
        let echoPort = try #require(port, "EchoServer said: \(server.outputText) \(server.errorOutput)")
        let client = try Self.example("EchoClient", ["127.0.0.1", "\(echoPort)", "over TOU"])
        #expect(client.wait() == 0, "stderr: \(client.errorOutput)")
        #expect(client.outputText.hasPrefix("over TOU\n"), "\(client.outputText)")
        #expect(client.outputText.contains("full handshake"), "\(client.outputText)")
    }

    @Test("HTTPServer serves a folder's files to HTTPClient over TOU channels (NIOHTTP1 on both ends)")
    func http() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("toudtls-http-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        // 1.2 MB: many chunks, more than one flight of the TCP window.
        let text = (0..<20_000).map { "line \($0) of a file served over TOU\n" }.joined()
        try text.write(to: folder.appendingPathComponent("page.txt"), atomically: true, encoding: .utf8)
        let server = try Self.example("HTTPServer", ["0", folder.path])
        defer { server.terminate(); server.wait() }
        #expect(server.waitForOutput(containing: "serving "), "HTTPServer said: \(server.errorOutput)")
        let line = try #require(server.outputText.split(separator: "\n").first { $0.hasPrefix("serving ") })
        let port = try #require(line.split(separator: ":").last.flatMap { Int($0) })

        let client = try Self.example("HTTPClient", ["tou://127.0.0.1:\(port)/page.txt"])
        #expect(client.wait() == 0, "stderr: \(client.errorOutput)")
        #expect(client.outputText == text, "\(client.outputText.count) of \(text.count) characters")

        let missing = try Self.example("HTTPClient", ["tou://127.0.0.1:\(port)/../page.txt"])
        #expect(missing.wait() == 1)
        #expect(missing.errorOutput.contains("404 Not Found"), "\(missing.errorOutput)")
    }

    @Test("PortForward carries curl to python3 -m http.server through toudtls-cat -l --tcp-connect",
          .enabled(if: programPath("python3") != nil && programPath("curl") != nil, "needs python3 and curl"))
    func portForward() throws {
        let webPort = try freeTCPPort()
        let web = try CLIProcess(["-m", "http.server", "--bind", "127.0.0.1", "--directory", CLIProcess.certs, "\(webPort)"],
                                 tool: try #require(programPath("python3")))
        defer { web.terminate(); web.wait() }
        try waitForTCP(port: webPort, process: web)
        let (relay, udpPort) = try CLIProcess.readyListener(
            ["-k", "--cert", "\(CLIProcess.certs)/server.pem", "--key", "\(CLIProcess.certs)/server.key",
             "--tcp-connect", "127.0.0.1:\(webPort)", "127.0.0.1", "0"])
        defer { relay.terminate(); relay.wait() }
        let localPort = try freeTCPPort()
        let forward = try Self.example("PortForward", ["\(localPort)", "127.0.0.1", "\(udpPort)"])
        defer { forward.terminate(); forward.wait() }
        try waitForTCP(port: localPort, process: forward)
        let curl = try CLIProcess(["-sS", "--fail", "http://127.0.0.1:\(localPort)/ca.pem"],
                                  tool: try #require(programPath("curl")))
        #expect(curl.wait(timeout: 60) == 0, "curl: \(curl.errorOutput); forward: \(forward.outputText)")
        let expected = try String(contentsOfFile: "\(CLIProcess.certs)/ca.pem", encoding: .utf8)
        #expect(curl.outputText == expected)
    }
}
