import Foundation
import Testing

/// toudtls-cat's addresses: how they print, the forms HOST takes, binding, and what a listener
/// says about the attempts it refuses.
@Suite("toudtls-cat addresses", .serialized)
struct CatAddressTests {
    let certs = CLIProcess.certs

    var serverCertificate: [String] { ["--cert", "\(certs)/server.pem", "--key", "\(certs)/server.key"] }

    func stderrLines(_ process: CLIProcess, containing text: String) -> [Substring] {
        process.errorOutput.split(separator: "\n").filter { $0.contains(text) }
    }

    @Test("addresses print as 127.0.0.1:PORT and [::1]:PORT, and HOST may be [::1]")
    func addressForms() throws {
        // A listener on all addresses sees IPv4 peers through its dual-stack socket (::ffff:a.b.c.d).
        for (clientHost, shown) in [("127.0.0.1", "127.0.0.1"), ("[::1]", "[::1]"), ("::1", "[::1]")] {
            let file = try makeRandomFile(bytes: 10_000)
            defer { try? FileManager.default.removeItem(at: file) }
            let (listener, port) = try CLIProcess.readyListener(["--plain", "0"])
            defer { listener.terminate() }
            #expect(stderrLines(listener, containing: "listening on").first?.hasSuffix("listening on [::]:\(port)") == true,
                    "listener: \(listener.errorOutput)")
            let client = try CLIProcess(["-v", "--plain", clientHost, "\(port)"], stdin: file)
            defer { client.terminate() }
            #expect(client.wait(timeout: 30) == 0, "client \(clientHost): \(client.errorOutput)")
            #expect(listener.wait(timeout: 30) == 0, "listener: \(listener.errorOutput)")
            #expect(client.errorOutput.contains("connected to \(shown):\(port) "), "client: \(client.errorOutput)")
            let from = stderrLines(listener, containing: "connection from")
            #expect(from.count == 1 && from[0].contains("connection from \(shown):"), "listener: \(listener.errorOutput)")
            #expect(!listener.errorOutput.contains("::ffff:") && !listener.errorOutput.contains("[IPv6]"),
                    "listener: \(listener.errorOutput)")
        }
    }

    @Test("a name that does not resolve is one clear line, exit 4")
    func unresolvableName() throws {
        let client = try CLIProcess(["--plain", "nosuch.invalid", "9"])
        #expect(client.wait(timeout: 60) == 4, "client: \(client.errorOutput)")
        let lines = client.errorOutput.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].contains("cannot resolve nosuch.invalid"), "client: \(client.errorOutput)")
        #expect(!client.errorOutput.contains("SocketAddressError"), "SwiftNIO's internals: \(client.errorOutput)")
    }

    @Test("a bind error names the address and the reason, without SwiftNIO's stray parenthesis")
    func bindError() throws {
        // 192.0.2.1 (TEST-NET-1) is on no interface here.
        let listener = try CLIProcess(["-l", "--plain", "192.0.2.1", "9"])
        #expect(listener.wait(timeout: 30) == 1, "listener: \(listener.errorOutput)")
        let lines = listener.errorOutput.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].contains("cannot bind UDP 192.0.2.1:9: Cannot assign requested address"),
                "listener: \(listener.errorOutput)")
        #expect(!listener.errorOutput.contains(")"), "listener: \(listener.errorOutput)")
    }

    @Test("a second listener on a port in use fails with \"address in use\", exit 1",
          arguments: [["127.0.0.1"], []])
    func portInUse(host: [String]) throws {
        let (first, port) = try CLIProcess.readyListener(["--plain"] + host + ["0"])
        defer { first.terminate() }
        let second = try CLIProcess(["-l", "-v", "--plain"] + host + ["\(port)"])
        defer { second.terminate() }
        #expect(second.wait(timeout: 15) == 1, "second listener: \(second.errorOutput)")
        #expect(second.errorOutput.contains("address in use"), "second listener: \(second.errorOutput)")
        #expect(!second.errorOutput.contains("listening on"), "second listener: \(second.errorOutput)")
        #expect(first.process.isRunning)
    }

    @Test("-v on a listener: one line per refused or failed attempt, with the peer and the reason")
    func refusedAttemptsLogged() throws {
        let (listener, port) = try CLIProcess.readyListener(
            ["-k"] + serverCertificate + ["--ca", "\(certs)/ca.pem", "--require-client-cert", "127.0.0.1", "0"])
        defer { listener.terminate() }

        let noCertificate = try CLIProcess(["--ca", "\(certs)/ca.pem", "--server-name", "localhost", "127.0.0.1", "\(port)"])
        #expect(noCertificate.wait(timeout: 30) == 3, "client: \(noCertificate.errorOutput)")
        #expect(listener.waitForError(containing: "did not present the required client certificate", timeout: 10),
                "listener: \(listener.errorOutput)")

        // A certificate the CA signed that has expired.
        let expired = try CLIProcess(["--ca", "\(certs)/ca.pem", "--server-name", "localhost",
                                      "--cert", "\(certs)/expired-server.pem", "--key", "\(certs)/expired-server.key",
                                      "127.0.0.1", "\(port)"])
        #expect(expired.wait(timeout: 30) == 3, "client: \(expired.errorOutput)")
        #expect(listener.waitForError(containing: "certificate has expired", timeout: 10), "listener: \(listener.errorOutput)")

        // A plain client resends its SYN; that is still one attempt and one line.
        let plain = try CLIProcess(["--plain", "127.0.0.1", "\(port)"])
        defer { plain.terminate() }
        #expect(listener.waitForError(containing: "requires DTLS", timeout: 10), "listener: \(listener.errorOutput)")
        Thread.sleep(forTimeInterval: 2.5)
        plain.terminate()
        plain.wait()

        let attempts = stderrLines(listener, containing: "connection attempt from 127.0.0.1:")
        #expect(attempts.count == 3, "listener: \(listener.errorOutput)")
        #expect(stderrLines(listener, containing: "cleartext (plain mode) and this listener requires DTLS").count == 1,
                "listener: \(listener.errorOutput)")
        #expect(listener.process.isRunning)
    }
}
