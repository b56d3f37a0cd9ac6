import Foundation
import Testing

/// toudtls-cat as a subprocess: real sockets, real exit codes, stdout and stderr.
@Suite("toudtls-cat", .serialized)
struct CatTests {
    let certs = CLIProcess.certs

    func listen(_ extra: [String], host: String? = "127.0.0.1") throws -> CLIProcess {
        var arguments = ["-l", "-v"] + extra
        if let host { arguments.append(host) }
        arguments.append("0")
        return try CLIProcess(arguments)
    }

    func secureServerArguments() -> [String] {
        ["--cert", "\(certs)/server.pem", "--key", "\(certs)/server.key"]
    }

    /// Sends `file` from a client to a listener and checks the listener's stdout is identical.
    func transfer(host: String, listenHost: String?, serverExtra: [String], clientExtra: [String],
                  bytes: Int) throws {
        let file = try makeRandomFile(bytes: bytes)
        defer { try? FileManager.default.removeItem(at: file) }
        let server = try listen(serverExtra, host: listenHost)
        defer { server.terminate() }
        #expect(server.waitForError(containing: "listening on"), "listener never became ready: \(server.errorOutput)")
        let port = try #require(server.listeningPort)
        let client = try CLIProcess(clientExtra + [host, "\(port)"], stdin: file)
        defer { client.terminate() }
        let clientStatus = client.wait(timeout: 120)
        let serverStatus = server.wait(timeout: 30)
        #expect(clientStatus == 0, "client: \(client.errorOutput)")
        #expect(serverStatus == 0, "server: \(server.errorOutput)")
        let expected = try Data(contentsOf: file)
        #expect(server.output.count == expected.count)
        let intact = server.output == expected
        #expect(intact, "listener output differs from what was sent")
    }

    @Test("4 MB over IPv4 with DTLS arrives intact; both ends exit 0")
    func secureIPv4() throws {
        try transfer(host: "127.0.0.1", listenHost: "127.0.0.1", serverExtra: secureServerArguments(),
                     clientExtra: ["--ca", "\(certs)/ca.pem", "--server-name", "localhost"], bytes: 4 << 20)
    }

    @Test("IPv6 with DTLS, the server name defaulting to the IP literal ::1")
    func secureIPv6() throws {
        try transfer(host: "::1", listenHost: "::1", serverExtra: secureServerArguments(),
                     clientExtra: ["--ca", "\(certs)/ca.pem"], bytes: 1 << 20)
    }

    @Test("a listener without HOST accepts IPv4 and IPv6")
    func dualStack() throws {
        try transfer(host: "127.0.0.1", listenHost: nil, serverExtra: secureServerArguments(),
                     clientExtra: ["--ca", "\(certs)/ca.pem"], bytes: 256 << 10)
        try transfer(host: "::1", listenHost: nil, serverExtra: secureServerArguments(),
                     clientExtra: ["--ca", "\(certs)/ca.pem"], bytes: 256 << 10)
    }

    @Test("--plain moves bytes too")
    func plain() throws {
        try transfer(host: "127.0.0.1", listenHost: "127.0.0.1", serverExtra: ["--plain"],
                     clientExtra: ["--plain"], bytes: 2 << 20)
    }

    @Test("both directions: the listener's stdin reaches the client")
    func bothDirections() throws {
        let toClient = try makeRandomFile(bytes: 300_000)
        let toServer = try makeRandomFile(bytes: 200_000)
        defer {
            try? FileManager.default.removeItem(at: toClient)
            try? FileManager.default.removeItem(at: toServer)
        }
        let server = try CLIProcess(["-l", "-v"] + secureServerArguments() + ["127.0.0.1", "0"], stdin: toClient)
        defer { server.terminate() }
        #expect(server.waitForError(containing: "listening on"))
        let port = try #require(server.listeningPort)
        let client = try CLIProcess(["--ca", "\(certs)/ca.pem", "--server-name", "localhost", "127.0.0.1", "\(port)"],
                                    stdin: toServer)
        defer { client.terminate() }
        #expect(client.wait() == 0, "client: \(client.errorOutput)")
        #expect(server.wait() == 0, "server: \(server.errorOutput)")
        let clientIntact = client.output == (try Data(contentsOf: toClient))
        let serverIntact = server.output == (try Data(contentsOf: toServer))
        #expect(clientIntact && serverIntact)
    }

    func failingClient(_ clientExtra: [String], expectedStatus: Int32, message: String) throws {
        let server = try listen(secureServerArguments())
        defer { server.terminate() }
        #expect(server.waitForError(containing: "listening on"))
        let port = try #require(server.listeningPort)
        let file = try makeRandomFile(bytes: 1000)
        defer { try? FileManager.default.removeItem(at: file) }
        let client = try CLIProcess(clientExtra + ["127.0.0.1", "\(port)"], stdin: file)
        defer { client.terminate() }
        #expect(client.wait(timeout: 30) == expectedStatus, "client: \(client.errorOutput)")
        #expect(client.errorOutput.contains(message), "stderr: \(client.errorOutput)")
        #expect(client.errorOutput.split(separator: "\n").count == 1, "one line: \(client.errorOutput)")
        server.terminate()
        server.wait()
        #expect(server.output.isEmpty, "nothing may reach the listener")
    }

    @Test("a client that does not trust the CA exits 3 and nothing is transferred")
    func untrustedCA() throws {
        try failingClient(["--ca", "\(certs)/other-ca.pem", "--server-name", "localhost"], expectedStatus: 3,
                          message: "not trusted")
    }

    @Test("a client expecting another name exits 3")
    func wrongName() throws {
        try failingClient(["--ca", "\(certs)/ca.pem", "--server-name", "example.com"], expectedStatus: 3,
                          message: "example.com")
    }

    @Test("bad usage and unreadable files exit 2")
    func usageErrors() throws {
        for arguments in [[String](), ["127.0.0.1"], ["-l"], ["127.0.0.1", "notaport"],
                          ["--ca", "/nonexistent.pem", "127.0.0.1", "9"],
                          ["-l", "--cert", "\(certs)/server.pem", "--key", "/nonexistent.key", "127.0.0.1", "0"]] {
            let process = try CLIProcess(arguments)
            #expect(process.wait() == 2, "\(arguments): \(process.errorOutput)")
            #expect(!process.errorOutput.isEmpty)
        }
    }

    @Test("nobody listening exits 4")
    func unreachable() throws {
        // A port from a listener that is gone again.
        let server = try listen(["--plain"])
        #expect(server.waitForError(containing: "listening on"))
        let port = try #require(server.listeningPort)
        server.terminate()
        server.wait()
        let client = try CLIProcess(["--plain", "127.0.0.1", "\(port)"])
        #expect(client.wait(timeout: 30) == 4, "client: \(client.errorOutput)")
    }

    @Test("a peer that resets the connection makes the other side exit 5")
    func resetByPeer() throws {
        // The listener cannot write to its stdout, so it resets the connection.
        let server = try CLIProcess(["-l", "-v"] + secureServerArguments() + ["127.0.0.1", "0"], closeStdout: true)
        defer { server.terminate() }
        #expect(server.waitForError(containing: "listening on"))
        let port = try #require(server.listeningPort)
        let file = try makeRandomFile(bytes: 8 << 20)
        defer { try? FileManager.default.removeItem(at: file) }
        let client = try CLIProcess(["--ca", "\(certs)/ca.pem", "--server-name", "localhost", "127.0.0.1", "\(port)"],
                                    stdin: file)
        defer { client.terminate() }
        #expect(client.wait(timeout: 60) == 5, "client: \(client.errorOutput)")
        #expect(client.errorOutput.contains("reset"), "stderr: \(client.errorOutput)")
        #expect(server.wait(timeout: 30) == 1, "server: \(server.errorOutput)")
    }

    @Test("-k serves one connection after another until killed")
    func keepOpen() throws {
        let server = try CLIProcess(["-l", "-k", "-v"] + secureServerArguments() + ["127.0.0.1", "0"])
        defer { server.terminate() }
        #expect(server.waitForError(containing: "listening on"))
        let port = try #require(server.listeningPort)
        var expected = Data()
        for _ in 0..<3 {
            let file = try makeRandomFile(bytes: 100_000)
            defer { try? FileManager.default.removeItem(at: file) }
            let client = try CLIProcess(["--ca", "\(certs)/ca.pem", "--server-name", "localhost", "127.0.0.1", "\(port)"],
                                        stdin: file)
            #expect(client.wait() == 0, "client: \(client.errorOutput)")
            expected.append(try Data(contentsOf: file))
        }
        // The listener is still there for a fourth.
        let deadline = Date().addingTimeInterval(10)
        while server.output.count < expected.count && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        #expect(server.process.isRunning)
        server.terminate()
        server.wait()
        let intact = server.output == expected
        #expect(intact, "listener output differs from what was sent")
    }

    /// sha256:BASE64 of the server certificate's public key, computed by the openssl command.
    func serverPin() throws -> String {
        let shell = Process()
        shell.executableURL = URL(fileURLWithPath: "/bin/sh")
        shell.arguments = ["-c", "openssl x509 -in '\(certs)/server.pem' -pubkey -noout | openssl pkey -pubin -outform DER"
                           + " | openssl dgst -sha256 -binary | base64"]
        let output = Pipe()
        shell.standardOutput = output
        try shell.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        shell.waitUntilExit()
        return "sha256:" + String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test("--pin: the right key passes, another key exits 3, a malformed pin exits 2")
    func pinning() throws {
        let pin = try serverPin()
        try transfer(host: "127.0.0.1", listenHost: "127.0.0.1", serverExtra: secureServerArguments(),
                     clientExtra: ["--ca", "\(certs)/ca.pem", "--server-name", "localhost", "--pin", pin],
                     bytes: 10_000)
        try failingClient(["--ca", "\(certs)/ca.pem", "--server-name", "localhost",
                           "--pin", "sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="],
                          expectedStatus: 3, message: "not pinned")
        let malformed = try CLIProcess(["--ca", "\(certs)/ca.pem", "--pin", "sha256:nonsense", "127.0.0.1", "9"])
        #expect(malformed.wait() == 2, "stderr: \(malformed.errorOutput)")
    }

    @Test("an expired server certificate exits 3 and says so")
    func expiredCertificate() throws {
        let server = try listen(["--cert", "\(certs)/expired-server.pem", "--key", "\(certs)/expired-server.key"])
        defer { server.terminate() }
        #expect(server.waitForError(containing: "listening on"))
        let port = try #require(server.listeningPort)
        let client = try CLIProcess(["--ca", "\(certs)/ca.pem", "--server-name", "localhost", "127.0.0.1", "\(port)"])
        #expect(client.wait(timeout: 30) == 3, "client: \(client.errorOutput)")
        #expect(client.errorOutput.contains("expired"), "stderr: \(client.errorOutput)")
    }

    @Test("certificate failures from the CLI: the peer's fault exits 3, our own bad files exit 2",
          arguments: [
              (["--cert", "future-server.pem", "--key", "future-server.key"], [String](), Int32(3), "not yet valid"),
              (["--cert", "other-server.pem", "--key", "other-server.key"], [String](), Int32(3), "not trusted"),
              ([String](), ["--ca", "README.md"], Int32(2), "PEM"),
              ([String](), ["--ca", "ca.pem", "--cert", "client.pem", "--key", "server.key"], Int32(2), "does not match"),
          ])
    func certificateFailures(server: [String], client: [String], status: Int32, message: String) throws {
        let inCerts = { (arguments: [String]) in
            arguments.map { $0.hasSuffix(".pem") || $0.hasSuffix(".key") ? "\(self.certs)/\($0)" : $0 }
        }
        let listener = try listen(server.isEmpty ? secureServerArguments() : inCerts(server))
        defer { listener.terminate() }
        #expect(listener.waitForError(containing: "listening on"))
        let port = try #require(listener.listeningPort)
        let clientArguments = client.isEmpty ? ["--ca", "\(certs)/ca.pem"] : inCerts(client)
        let process = try CLIProcess(clientArguments + ["--server-name", "localhost", "127.0.0.1", "\(port)"])
        #expect(process.wait(timeout: 30) == status, "stderr: \(process.errorOutput)")
        #expect(process.errorOutput.contains(message), "stderr: \(process.errorOutput)")
    }
}
