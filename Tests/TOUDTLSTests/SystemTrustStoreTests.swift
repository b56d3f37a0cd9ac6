import Foundation
import NIOCore
import Testing
@testable import TOUDTLS

#if canImport(Glibc)
import Glibc
#endif

/// `.client()` verifies against the system trust store by default. OpenSSL reads SSL_CERT_FILE and
/// SSL_CERT_DIR when a context loads its default paths, so the tests point them at the test CA
/// (or at a CA that did not issue the server's certificate) for the context they build.
@Suite("System trust store", .serialized)
struct SystemTrustStoreTests {
    static let certs = EndToEndTests.certs

    /// Sets the OpenSSL store locations for the duration of `body`; the previous values come back after.
    static func withSystemStore<R>(file: String, _ body: () async throws -> R) async rethrows -> R {
        let previousFile = getenv("SSL_CERT_FILE").map { String(cString: $0) }
        let previousDirectory = getenv("SSL_CERT_DIR").map { String(cString: $0) }
        setenv("SSL_CERT_FILE", file, 1)
        setenv("SSL_CERT_DIR", "/nonexistent/toudtls-test-certs", 1)
        defer {
            if let previousFile { setenv("SSL_CERT_FILE", previousFile, 1) } else { unsetenv("SSL_CERT_FILE") }
            if let previousDirectory { setenv("SSL_CERT_DIR", previousDirectory, 1) } else { unsetenv("SSL_CERT_DIR") }
        }
        return try await body()
    }

    @Test(".client() defaults to the system store")
    func defaultIsSystem() {
        #expect(TOUConfiguration.client(serverName: "localhost").trustRoots == .system)
    }

    @Test("a server whose CA is in the system store is trusted; the store is read once per configuration")
    func trustedThroughTheSystemStore() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0,
                                                  configuration: EndToEndTests.serverConfiguration())
        let port = try #require(listener.localAddress.port)
        let configuration = TOUConfiguration.client(serverName: "localhost")
        let context = try await Self.withSystemStore(file: "\(Self.certs)/ca.pem") {
            try configuration.makeClientContext()
        }
        // Built once: the cached context serves later connects, whatever the environment says now.
        #expect(try configuration.makeClientContext() === context)
        let serverSide = Task {
            var iterator = listener.connections.makeAsyncIterator()
            let connection = try #require(await iterator.next())
            try await connection.write(ByteBuffer(string: "hello"))
            try await connection.close()
        }
        let connection = try await TOUConnection.connect(host: "127.0.0.1", port: port, configuration: configuration)
        var received = ""
        for try await chunk in connection.inbound { received += String(buffer: chunk) }
        try await connection.close()
        try await serverSide.value
        try await listener.close()
        #expect(received == "hello")
    }

    @Test("a server whose CA is not in the system store is refused as untrusted")
    func untrustedThroughTheSystemStore() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0,
                                                  configuration: EndToEndTests.serverConfiguration())
        defer { Task { try? await listener.close() } }
        let port = try #require(listener.localAddress.port)
        let configuration = TOUConfiguration.client(serverName: "localhost")
        _ = try await Self.withSystemStore(file: "\(Self.certs)/other-ca.pem") {
            try configuration.makeClientContext()
        }
        await #expect {
            _ = try await TOUConnection.connect(host: "127.0.0.1", port: port, configuration: configuration)
        } throws: { error in
            guard case .untrustedCertificate = error as? TOUError else { return false }
            return true
        }
    }

    @Test("the system store is for trust roots only")
    func systemIsNotACertificate() {
        var configuration = TOUConfiguration.client(serverName: "localhost", certificateChain: .system, privateKey: .system)
        configuration.sessionCache = nil
        #expect(throws: TOUError.self) { try configuration.makeClientContext() }
        let server = TOUConfiguration.server(certificateChain: .pemFile("\(Self.certs)/server.pem"),
                                             privateKey: .pemFile("\(Self.certs)/server.key"), clientTrustRoots: .system)
        #expect(throws: TOUError.self) { try server.makeServerContext() }
    }
}
