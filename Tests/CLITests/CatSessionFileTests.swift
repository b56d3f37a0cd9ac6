import Foundation
import Testing

/// `--session-file` and `--always-cookie`: resumption across two toudtls-cat processes, and a
/// listener that asks every client for a cookie.
@Suite("toudtls-cat sessions and cookies", .serialized)
struct CatSessionFileTests {
    let certs = CLIProcess.certs

    /// One client run sending a few bytes; returns its stderr.
    func client(port: Int, sessionFile: String, serverName: String? = "localhost", host: String = "127.0.0.1") throws -> String {
        let input = try makeRandomFile(bytes: 1000)
        defer { try? FileManager.default.removeItem(at: input) }
        let client = try CLIProcess(["-v", "--ca", "\(certs)/ca.pem", "--session-file", sessionFile]
                                    + (serverName.map { ["--server-name", $0] } ?? []) + [host, "\(port)"], stdin: input)
        #expect(client.wait() == 0, "client: \(client.errorOutput)")
        return client.errorOutput
    }

    @Test("the second run resumes from the saved file (mode 0600); a corrupt or foreign file is ignored with a warning")
    func resumesAcrossProcesses() throws {
        let (server, port) = try CLIProcess.readyListener(["-k", "--cert", "\(certs)/server.pem", "--key", "\(certs)/server.key",
                                                           "127.0.0.1", "0"])
        defer { server.terminate() }
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("toudtls-session-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: file) }

        let first = try client(port: port, sessionFile: file)
        #expect(first.contains("full handshake"), "first run: \(first)")
        #expect(!first.contains("warning"), "first run: \(first)")
        let mode = try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int
        #expect(mode == 0o600)

        let second = try client(port: port, sessionFile: file)
        #expect(second.contains("session resumed"), "second run: \(second)")

        // Another server name: the file is for "localhost", so it is not offered.
        let foreign = try client(port: port, sessionFile: file, serverName: nil)
        #expect(foreign.contains("warning: ignoring the session file"), "foreign: \(foreign)")
        #expect(foreign.contains("full handshake"), "foreign: \(foreign)")

        try Data("not a session at all".utf8).write(to: URL(fileURLWithPath: file))
        let corrupt = try client(port: port, sessionFile: file)
        #expect(corrupt.contains("warning: ignoring the session file \(file): not a saved toudtls session"), "corrupt: \(corrupt)")
        #expect(corrupt.contains("full handshake"), "corrupt: \(corrupt)")
        // ... and replaced by a good one.
        let again = try client(port: port, sessionFile: file)
        #expect(again.contains("session resumed"), "after the corrupt file: \(again)")
    }

    /// The session is a secret: in a directory others can write to, a link planted where the
    /// temporary file goes must not receive it (nor become the session file).
    @Test("saving the session never writes through a link planted at the temporary file's name")
    func saveIgnoresAPlantedLink() throws {
        let (server, port) = try CLIProcess.readyListener(["-k", "--cert", "\(certs)/server.pem", "--key", "\(certs)/server.key",
                                                           "127.0.0.1", "0"])
        defer { server.terminate() }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("toudtls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("session").path
        let victim = directory.appendingPathComponent("victim").path
        try Data("victim".utf8).write(to: URL(fileURLWithPath: victim))
        let input = try makeRandomFile(bytes: 1000)
        defer { try? FileManager.default.removeItem(at: input) }
        // exec keeps the shell's pid, so the link sits at the name the client's save will use.
        let script = #"ln -s "$1" "$2.tmp-$$" && exec "$3" --ca "$4" --server-name localhost --session-file "$2" 127.0.0.1 "$5""#
        let client = try CLIProcess(["-c", script, "sh", victim, file, CLIProcess.executable().path, "\(certs)/ca.pem", "\(port)"],
                                    tool: "/bin/sh", stdin: input)
        #expect(client.wait() == 0, "client: \(client.errorOutput)")
        #expect(FileManager.default.contents(atPath: victim) == Data("victim".utf8))
        let attributes = try FileManager.default.attributesOfItem(atPath: file)
        #expect(attributes[.type] as? FileAttributeType == .typeRegular)
        #expect(attributes[.posixPermissions] as? Int == 0o600)
    }

    @Test("--always-cookie makes the listener ask for a cookie; by default it does not")
    func alwaysCookie() throws {
        for always in [false, true] {
            let (server, port) = try CLIProcess.readyListener(["--cert", "\(certs)/server.pem", "--key", "\(certs)/server.key"]
                                                              + (always ? ["--always-cookie"] : []) + ["127.0.0.1", "0"])
            defer { server.terminate() }
            let client = try CLIProcess(["--ca", "\(certs)/ca.pem", "--server-name", "localhost", "127.0.0.1", "\(port)"])
            #expect(client.wait() == 0, "client: \(client.errorOutput)")
            #expect(server.wait(timeout: 30) == 0, "server: \(server.errorOutput)")
            #expect(server.errorOutput.contains("hello-verify-requests \(always ? 1 : 0)"), "server: \(server.errorOutput)")
        }
    }

    @Test("--session-file and --always-cookie are refused where they mean nothing")
    func misuse() throws {
        for arguments in [["-l", "--plain", "--session-file", "x", "0"], ["--plain", "--session-file", "x", "127.0.0.1", "5"],
                          ["--always-cookie", "--plain", "127.0.0.1", "5"]] {
            let process = try CLIProcess(arguments)
            #expect(process.wait() == 2, "\(arguments): \(process.errorOutput)")
        }
    }
}
