import Foundation
import Testing

/// A client without --ca verifies against the system trust store, which OpenSSL reads from its
/// default paths; SSL_CERT_FILE / SSL_CERT_DIR in the child's environment stand in for a system
/// store that holds (or lacks) the test CA, so the real /etc/ssl/certs is never touched.
@Suite("toudtls-cat trust store", .serialized)
struct CatTrustStoreTests {
    let certs = CLIProcess.certs

    /// An empty directory, so the machine's own CA directory cannot decide the outcome.
    func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("toudtls-certs-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// Runs a listener with certs/server.pem (issued by certs/ca.pem) and one client with
    /// `arguments` and `environment`; returns the client's status, stderr, and what the listener got.
    func connect(_ arguments: [String], environment: [String: String]) throws -> (Int32, String, Data) {
        let (listener, port) = try CLIProcess.readyListener(
            ["--cert", "\(certs)/server.pem", "--key", "\(certs)/server.key", "127.0.0.1", "0"])
        defer { listener.terminate() }
        let file = try makeRandomFile(bytes: 20_000)
        defer { try? FileManager.default.removeItem(at: file) }
        let client = try CLIProcess(arguments + ["--server-name", "localhost", "127.0.0.1", "\(port)"], stdin: file,
                                    environment: environment)
        defer { client.terminate() }
        let status = client.wait(timeout: 30)
        if status == 0 { listener.wait(timeout: 30) } else { listener.terminate(); listener.wait() }
        let sent = try Data(contentsOf: file)
        return (status, client.errorOutput, status == 0 && listener.output == sent ? sent : listener.output)
    }

    @Test("without --ca, a server whose CA is in SSL_CERT_FILE is trusted")
    func systemFileTrusts() throws {
        let empty = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: empty) }
        let (status, errors, received) = try connect(
            [], environment: ["SSL_CERT_FILE": "\(certs)/ca.pem", "SSL_CERT_DIR": empty.path])
        #expect(status == 0, "client: \(errors)")
        #expect(received.count == 20_000)
    }

    @Test("without --ca, a server whose CA is in a hashed SSL_CERT_DIR is trusted")
    func systemDirectoryTrusts() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        try FileManager.default.copyItem(atPath: "\(certs)/ca.pem", toPath: directory.appendingPathComponent("test-ca.pem").path)
        let rehash = try CLIProcess(["rehash", directory.path], tool: "/usr/bin/openssl")
        #expect(rehash.wait() == 0, "openssl rehash: \(rehash.errorOutput)")
        let (status, errors, received) = try connect(
            [], environment: ["SSL_CERT_FILE": "/nonexistent/ca.pem", "SSL_CERT_DIR": directory.path])
        #expect(status == 0, "client: \(errors)")
        #expect(received.count == 20_000)
    }

    @Test("without --ca, a server whose CA is not in the system store is refused: exit 3, untrusted")
    func systemStoreWithoutTheCARefuses() throws {
        let empty = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: empty) }
        let (status, errors, received) = try connect(
            [], environment: ["SSL_CERT_FILE": "\(certs)/other-ca.pem", "SSL_CERT_DIR": empty.path])
        #expect(status == 3, "client: \(errors)")
        #expect(errors.contains("not trusted") && errors.contains("system trust store"), "\(errors)")
        #expect(errors.split(separator: "\n").count == 1, "one line: \(errors)")
        #expect(received.isEmpty)
    }

    @Test("--ca replaces the system store: a CA only in SSL_CERT_FILE does not count")
    func caFileReplacesTheSystemStore() throws {
        let empty = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: empty) }
        let (status, errors, received) = try connect(
            ["--ca", "\(certs)/other-ca.pem"], environment: ["SSL_CERT_FILE": "\(certs)/ca.pem", "SSL_CERT_DIR": empty.path])
        #expect(status == 3, "client: \(errors)")
        #expect(errors.contains("not trusted"), "\(errors)")
        #expect(received.isEmpty)
    }
}
