import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// --timeout: a dead peer is noticed within about the user timeout, not after TCP's retry limit.
@Suite("toudtls-cat user timeout", .serialized)
struct CatTimeoutTests {
    let certs = CLIProcess.certs

    /// The user timeout's message; on loopback the kernel's ICMP port unreachable for the dead
    /// listener's port may (rarely) reach a send first, which ends the client as unreachable.
    static func noticedDeadPeer(_ errors: String) -> Bool {
        (errors.contains("timed out") && errors.contains("user timeout")) || errors.contains("port is closed")
    }

    @Test("a client trickling data to a SIGKILLed listener exits 4, \"timed out\", within 3x --timeout 2")
    func killedListener() throws {
        let (listener, port) = try CLIProcess.readyListener(
            ["--cert", "\(certs)/server.pem", "--key", "\(certs)/server.key", "127.0.0.1", "0"])
        defer { listener.terminate() }
        // A line every 100 ms from a shell, so the client always has data in flight.
        let input = Pipe()
        let trickle = Process()
        trickle.executableURL = URL(fileURLWithPath: "/bin/sh")
        trickle.arguments = ["-c", "while :; do echo tick; sleep 0.1; done"]
        trickle.standardOutput = input
        try withDefaultSignalMask { try trickle.run() }
        defer { if trickle.isRunning { kill(trickle.processIdentifier, SIGKILL) }; trickle.waitUntilExit() }
        let client = try CLIProcess(["--ca", "\(certs)/ca.pem", "--server-name", "localhost", "--timeout", "2",
                                     "127.0.0.1", "\(port)"], stdinPipe: input)
        defer { client.terminate() }
        try? input.fileHandleForReading.close()  // the client holds its own copy
        let deadline = Date().addingTimeInterval(30)
        while !listener.outputText.contains("tick"), Date() < deadline, client.process.isRunning {
            Thread.sleep(forTimeInterval: 0.05)
        }
        #expect(listener.outputText.contains("tick"), "nothing arrived: \(client.errorOutput)")
        kill(listener.process.processIdentifier, SIGKILL)
        listener.wait()
        let killedAt = Date()
        let status = client.wait(timeout: 60)
        let elapsed = Date().timeIntervalSince(killedAt)
        #expect(status == 4, "client: \(client.errorOutput)")
        #expect(Self.noticedDeadPeer(client.errorOutput), "\(client.errorOutput)")
        // A failure guard, not a measurement: before the user timeout this took about 200 s.
        #expect(elapsed < 6, "noticed after \(elapsed) s")
        print("killed listener noticed after \(String(format: "%.2f", elapsed)) s with --timeout 2")
    }

    @Test("after the peer's FIN, a client whose stdin stays open still notices the peer died (exit 4)")
    func deadPeerWhileWaitingForInput() throws {
        // The listener's stdin is empty: it sends its FIN at once and keeps reading.
        let (listener, port) = try CLIProcess.readyListener(
            ["--cert", "\(certs)/server.pem", "--key", "\(certs)/server.key", "127.0.0.1", "0"])
        defer { listener.terminate() }
        let input = Pipe()
        let client = try CLIProcess(["-v", "--ca", "\(certs)/ca.pem", "--server-name", "localhost", "--timeout", "1",
                                     "127.0.0.1", "\(port)"], stdinPipe: input)
        defer { client.terminate() }
        #expect(client.waitForError(containing: "connected to"), "\(client.errorOutput)")
        kill(listener.process.processIdentifier, SIGKILL)
        listener.wait()
        // One line, then stdin stays open with nothing more to say.
        try input.fileHandleForWriting.write(contentsOf: Data("into the void\n".utf8))
        #expect(client.wait(timeout: 30) == 4, "client: \(client.errorOutput)")
        #expect(Self.noticedDeadPeer(client.errorOutput), "\(client.errorOutput)")
        try? input.fileHandleForWriting.close()
    }

    @Test("--timeout and --keepalive reject nonsense (exit 2)")
    func badValues() throws {
        for arguments in [["--timeout", "-1"], ["--timeout", "abc"], ["--keepalive", "0"]] {
            let process = try CLIProcess(arguments + ["--ca", "\(certs)/ca.pem", "127.0.0.1", "9"])
            #expect(process.wait() == 2, "\(arguments): \(process.errorOutput)")
        }
    }
}
