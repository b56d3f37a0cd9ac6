import DTLS
import Foundation
import NIOCore
import Testing

/// Certificate failures with specific messages, on both sides, and public-key pinning.
@Suite struct DTLSAuthenticationTests {
    // MARK: the server's certificate, checked by the client

    @Test func expiredServerCertificateSaysExpiredAndWhen() throws {
        let pair = try Pair(client: Certs.client(), server: Certs.server(cert: "expired-server"))
        pair.handshake()
        let detail = try #require(untrustedDetail(pair.clientEvents))
        #expect(detail.hasPrefix("certificate has expired"))
        #expect(detail.contains("\"CN=localhost\""))
        #expect(detail.contains("valid until 2021-01-01 00:00:00"))
        #expect(pair.client.state == .failed)
        // The client's alert names the reason to the server too.
        let serverDetail = try #require(handshakeFailedDetail(pair.serverEvents))
        #expect(serverDetail.contains("certificate expired"))
    }

    @Test func notYetValidServerCertificateSaysFromWhen() throws {
        let pair = try Pair(client: Certs.client(), server: Certs.server(cert: "future-server"))
        pair.handshake()
        let detail = try #require(untrustedDetail(pair.clientEvents))
        #expect(detail.hasPrefix("certificate is not yet valid"))
        #expect(detail.contains("\"CN=localhost\""))
        #expect(detail.contains("valid only from 2070-01-01 00:00:00"))
    }

    @Test func serverCertificateFromAnotherCANamesItsIssuer() throws {
        let pair = try Pair(client: Certs.client(), server: Certs.server(cert: "other-server"))
        pair.handshake()
        let detail = try #require(untrustedDetail(pair.clientEvents))
        #expect(detail.contains("unable to get local issuer certificate"))
        #expect(detail.contains("issued by \"CN=toudtls other test CA\""))
        #expect(detail.contains("does not chain to any of the trust roots"))
    }

    @Test func wrongNameListsTheNamesTheCertificateIsFor() throws {
        let pair = try Pair(client: Certs.client(), server: Certs.server(), serverName: "example.com")
        pair.handshake()
        guard case .failed(.nameMismatch(let expected, let detail))? = pair.clientEvents.first else {
            Issue.record("client events: \(pair.clientEvents)")
            return
        }
        #expect(expected == "example.com")
        #expect(detail.contains("mismatch"))
        #expect(detail.contains("DNS:localhost, IP:127.0.0.1, IP:::1"))
    }

    // MARK: client certificates, checked by the server

    @Test func expiredClientCertificateIsRefusedByTheServer() throws {
        let pair = try Pair(client: clientPresenting("expired-server"),
                            server: Certs.server(clientTrust: "ca.pem", requireClient: true))
        pair.handshake()
        let detail = try #require(untrustedDetail(pair.serverEvents))
        #expect(detail.hasPrefix("certificate has expired"))
        #expect(detail.contains("valid until 2021-01-01"))
        let clientDetail = try #require(handshakeFailedDetail(pair.clientEvents))
        #expect(clientDetail.contains("certificate expired"))
    }

    @Test func notYetValidClientCertificateIsRefusedByTheServer() throws {
        let pair = try Pair(client: clientPresenting("future-server"),
                            server: Certs.server(clientTrust: "ca.pem", requireClient: true))
        pair.handshake()
        let detail = try #require(untrustedDetail(pair.serverEvents))
        #expect(detail.hasPrefix("certificate is not yet valid"))
        #expect(detail.contains("valid only from 2070-01-01"))
    }

    @Test func clientCertificateFromAnotherCANamesItsIssuer() throws {
        let pair = try Pair(client: clientPresenting("other-server"),
                            server: Certs.server(clientTrust: "ca.pem"))
        pair.handshake()
        let detail = try #require(untrustedDetail(pair.serverEvents))
        #expect(detail.contains("issued by \"CN=toudtls other test CA\""))
    }

    // MARK: our own configuration

    @Test func keyThatDoesNotMatchTheCertificateIsNamed() throws {
        let server = configurationError {
            try DTLSContext.server(certificateChainPEM: Certs.bytes("server.pem"), privateKeyPEM: Certs.bytes("client.key"))
        }
        #expect(server == .invalidConfiguration(
            "the private key does not match the certificate \"CN=localhost\" (the first in the certificate chain): "
                + "they are not one key pair"))
        let client = configurationError {
            try DTLSContext.client(trustRootsPEM: Certs.bytes("ca.pem"), certificateChainPEM: Certs.bytes("client.pem"),
                                   privateKeyPEM: Certs.bytes("server.key"))
        }
        #expect(client == .invalidConfiguration(
            "the client private key does not match the certificate \"CN=toudtls-test-client\" "
                + "(the first in the client certificate chain): they are not one key pair"))
    }

    @Test func malformedPEMSaysWhichInput() throws {
        let ca = try Certs.bytes("ca.pem")
        let serverPEM = try Certs.bytes("server.pem")
        let serverKey = try Certs.bytes("server.key")
        let badCert = Array("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".utf8)
        let badKey = Array("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".utf8)
        let text = Array("just some text\n".utf8)

        let trust = configurationDetail { try DTLSContext.client(trustRootsPEM: badCert) }
        #expect(trust.hasPrefix("malformed PEM certificate #1 in the trust roots"))
        let secondTrust = configurationDetail { try DTLSContext.client(trustRootsPEM: ca + badCert) }
        #expect(secondTrust.hasPrefix("malformed PEM certificate #2 in the trust roots"))
        #expect(configurationDetail { try DTLSContext.client(trustRootsPEM: text) }
            == "no PEM certificate (\"-----BEGIN CERTIFICATE-----\") found in the trust roots")
        #expect(configurationDetail { try DTLSContext.client(trustRootsPEM: serverKey) }
            == "no PEM certificate (\"-----BEGIN CERTIFICATE-----\") found in the trust roots")

        let chain = configurationDetail { try DTLSContext.server(certificateChainPEM: badCert, privateKeyPEM: serverKey) }
        #expect(chain.hasPrefix("malformed PEM certificate #1 in the certificate chain"))
        let chainTail = configurationDetail {
            try DTLSContext.server(certificateChainPEM: serverPEM + badCert, privateKeyPEM: serverKey)
        }
        #expect(chainTail.hasPrefix("malformed PEM certificate #2 in the certificate chain"))
        let key = configurationDetail { try DTLSContext.server(certificateChainPEM: serverPEM, privateKeyPEM: badKey) }
        #expect(key.hasPrefix("the private key is not a readable PEM private key: "))
        #expect(configurationDetail { try DTLSContext.server(certificateChainPEM: serverPEM, privateKeyPEM: serverPEM) }
            == "the private key contains no PEM private key (\"-----BEGIN PRIVATE KEY-----\")")
        let clientTrust = configurationDetail {
            try DTLSContext.server(certificateChainPEM: serverPEM, privateKeyPEM: serverKey, clientTrustRootsPEM: badCert)
        }
        #expect(clientTrust.hasPrefix("malformed PEM certificate #1 in the client trust roots"))

        let clientChain = configurationDetail {
            try DTLSContext.client(trustRootsPEM: ca, certificateChainPEM: badCert, privateKeyPEM: serverKey)
        }
        #expect(clientChain.hasPrefix("malformed PEM certificate #1 in the client certificate chain"))
        let clientKey = configurationDetail {
            try DTLSContext.client(trustRootsPEM: ca, certificateChainPEM: Certs.bytes("client.pem"), privateKeyPEM: text)
        }
        #expect(clientKey == "the client private key contains no PEM private key (\"-----BEGIN PRIVATE KEY-----\")")
    }

    @Test(.enabled(if: opensslCommand != nil, "the openssl command is not installed"))
    func encryptedKeyIsRefusedWithoutPrompting() throws {
        let encrypted = try runOpenSSL(["pkey", "-in", Certs.path("server.key"), "-aes256", "-passout", "pass:secret"])
        #expect(String(decoding: encrypted, as: UTF8.self).contains("ENCRYPTED PRIVATE KEY"))
        let detail = configurationDetail {
            try DTLSContext.server(certificateChainPEM: Certs.bytes("server.pem"), privateKeyPEM: encrypted)
        }
        #expect(detail.hasPrefix("the private key is encrypted; passphrase-protected keys are not supported"))
    }

    // MARK: key types

    /// A client parses the server's certificate in a library context that keeps only the decoders
    /// and key types DTLS needs (the shim's tou_libctx.c): each key type a server may use still
    /// verifies there, for its certificate, its CA's signature and its ServerKeyExchange.
    @Test(.enabled(if: opensslCommand != nil, "the openssl command is not installed"),
          arguments: [["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
                      ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
                      ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]])
    func serverKeyTypesVerify(keyOptions: [String]) throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("toudtls-keys-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        func path(_ name: String) -> String { directory.appendingPathComponent(name).path }
        try "subjectAltName=DNS:localhost\n".write(toFile: path("ext"), atomically: true, encoding: .utf8)
        _ = try runOpenSSL(["genpkey"] + keyOptions + ["-out", path("ca.key")])
        _ = try runOpenSSL(["req", "-x509", "-key", path("ca.key"), "-subj", "/CN=key type test CA", "-days", "2",
                            "-out", path("ca.pem")])
        _ = try runOpenSSL(["genpkey"] + keyOptions + ["-out", path("server.key")])
        _ = try runOpenSSL(["req", "-new", "-key", path("server.key"), "-subj", "/CN=localhost", "-out", path("server.csr")])
        _ = try runOpenSSL(["x509", "-req", "-in", path("server.csr"), "-CA", path("ca.pem"), "-CAkey", path("ca.key"),
                            "-CAcreateserial", "-days", "2", "-extfile", path("ext"), "-out", path("server.pem")])
        func bytes(_ name: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path(name)))) }
        let server = try DTLSContext.server(certificateChainPEM: bytes("server.pem"), privateKeyPEM: bytes("server.key"))
        let client = try DTLSContext.client(trustRootsPEM: bytes("ca.pem"))
        let pair = try Pair(client: client, server: server)
        pair.handshake()
        #expect(pair.clientEvents == [.handshakeCompleted])
        #expect(pair.serverEvents == [.handshakeCompleted])
        // And one it must not trust: the same certificate under another CA's roots.
        let untrusting = try DTLSContext.client(trustRootsPEM: Certs.bytes("ca.pem"))
        let refused = try Pair(client: untrusting, server: server)
        refused.handshake()
        #expect(!refused.clientEvents.contains(.handshakeCompleted))
    }

    @Test(.enabled(if: opensslCommand != nil, "the openssl command is not installed"), arguments: ["ED25519", "ED448"])
    func edDSACertificateIsRefusedWithReason(algorithm: String) throws {
        // OpenSSL's DTLS 1.2 has no EdDSA signature algorithm: a context with such a key would fail every handshake.
        let key = try runOpenSSL(["genpkey", "-algorithm", algorithm])
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("toudtls-eddsa-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let keyPath = directory.appendingPathComponent("key.pem").path
        try Data(key).write(to: URL(fileURLWithPath: keyPath))
        let certificate = try runOpenSSL(["req", "-x509", "-key", keyPath, "-subj", "/CN=localhost", "-days", "2"])
        let name = algorithm == "ED25519" ? "Ed25519" : "Ed448"
        let expected = "the certificate \"CN=localhost\" (the first in the certificate chain) has an \(name) key, which "
            + "OpenSSL's DTLS 1.2 cannot sign handshakes with; use an ECDSA (P-256, P-384) or RSA key"
        #expect(configurationDetail { try DTLSContext.server(certificateChainPEM: certificate, privateKeyPEM: key) } == expected)
    }

    // MARK: public-key pinning

    @Test(.enabled(if: opensslCommand != nil, "the openssl command is not installed"))
    func pinIsTheSHA256OfTheDERSubjectPublicKeyInfo() throws {
        // The same value curl's --pinnedpubkey documents: pubkey -> DER -> sha256.
        let publicKeyPEM = try runOpenSSL(["x509", "-in", Certs.path("server.pem"), "-noout", "-pubkey"])
        let der = try runOpenSSL(["pkey", "-pubin", "-outform", "DER"], input: publicKeyPEM)
        let expected = try runOpenSSL(["dgst", "-sha256", "-binary"], input: der)
        #expect(expected.count == 32)
        #expect(try DTLSContext.publicKeySHA256(ofCertificatePEM: Certs.bytes("server.pem")) == expected)
    }

    @Test func pinHelpersRejectBadInput() throws {
        #expect(throws: DTLSError.invalidConfiguration(
            "no PEM certificate (\"-----BEGIN CERTIFICATE-----\") found in the given PEM")) {
            try DTLSContext.publicKeySHA256(ofCertificatePEM: Array("nope".utf8))
        }
        #expect(throws: DTLSError.self) { try DTLSContext.publicKeySHA256(ofCertificatePEM: []) }
        let hash = try DTLSContext.publicKeySHA256(ofCertificatePEM: Certs.bytes("server.pem"))
        let text = DTLSContext.publicKeyPinString(hash)
        #expect(text.hasPrefix("sha256:") && text.count == 7 + 44)
        #expect(try DTLSContext.publicKeyPin(parsing: text) == hash)
        #expect(try DTLSContext.publicKeyPin(parsing: "sha256//" + text.dropFirst(7)) == hash)
        for bad in ["", "sha256:", "md5:" + text.dropFirst(7), "sha256:" + text.dropFirst(8),
                    "sha256:AAAA", "sha256:" + text.dropFirst(7).dropLast(1) + "*", String(text.dropFirst(7))] {
            #expect(throws: DTLSError.self, "\(bad)") { try DTLSContext.publicKeyPin(parsing: bad) }
        }
        #expect(configurationError {
            try DTLSContext.client(trustRootsPEM: Certs.bytes("ca.pem"), pinnedPublicKeySHA256: [hash, [1, 2, 3]])
        } == .invalidConfiguration("public-key pin #2 is 3 bytes; a SHA-256 pin is 32 bytes"))
    }

    @Test func rightPinPasses() throws {
        let right = try DTLSContext.publicKeySHA256(ofCertificatePEM: Certs.bytes("server.pem"))
        let other = try DTLSContext.publicKeySHA256(ofCertificatePEM: Certs.bytes("other-server.pem"))
        for pins in [[right], [other, right]] {
            let pair = try Pair(client: pinnedClient(pins), server: Certs.server())
            pair.handshake()
            #expect(pair.clientEvents == [.handshakeCompleted])
            #expect(pair.serverEvents == [.handshakeCompleted])
        }
    }

    @Test func wrongPinFailsAndShowsTheActualPin() throws {
        let actual = try DTLSContext.publicKeySHA256(ofCertificatePEM: Certs.bytes("server.pem"))
        let other = try DTLSContext.publicKeySHA256(ofCertificatePEM: Certs.bytes("other-server.pem"))
        let pair = try Pair(client: pinnedClient([other]), server: Certs.server())
        pair.handshake()
        guard case .failed(.pinMismatch(let detail))? = pair.clientEvents.first else {
            Issue.record("client events: \(pair.clientEvents)")
            return
        }
        #expect(detail.contains(DTLSContext.publicKeyPinString(actual)))
        #expect(detail.hasSuffix(", not the pinned key"))
        #expect(detail.contains("certificate \"CN=localhost\""))

        let twoPins = try Pair(client: pinnedClient([other, other.reversed()]), server: Certs.server())
        twoPins.handshake()
        guard case .failed(.pinMismatch(let twoDetail))? = twoPins.clientEvents.first else {
            Issue.record("client events: \(twoPins.clientEvents)")
            return
        }
        #expect(twoDetail.hasSuffix("none of the 2 pinned keys"))
        #expect(pair.client.state == .failed)
        // The server hears a fatal alert and never completes.
        #expect(handshakeFailedDetail(pair.serverEvents) != nil)
    }

    @Test func pinOfTheCAKeyDoesNotPinTheLeaf() throws {
        let caPin = try DTLSContext.publicKeySHA256(ofCertificatePEM: Certs.bytes("ca.pem"))
        let pair = try Pair(client: pinnedClient([caPin]), server: Certs.server())
        pair.handshake()
        guard case .failed(.pinMismatch)? = pair.clientEvents.first else {
            Issue.record("client events: \(pair.clientEvents)")
            return
        }
    }

    @Test func aMatchingPinDoesNotBypassChainOrNameChecks() throws {
        let otherPin = try DTLSContext.publicKeySHA256(ofCertificatePEM: Certs.bytes("other-server.pem"))
        let untrusted = try Pair(client: pinnedClient([otherPin]), server: Certs.server(cert: "other-server"))
        untrusted.handshake()
        #expect(untrustedDetail(untrusted.clientEvents) != nil, "\(untrusted.clientEvents)")

        let expiredPin = try DTLSContext.publicKeySHA256(ofCertificatePEM: Certs.bytes("expired-server.pem"))
        let expired = try Pair(client: pinnedClient([expiredPin]), server: Certs.server(cert: "expired-server"))
        expired.handshake()
        #expect(untrustedDetail(expired.clientEvents)?.hasPrefix("certificate has expired") == true)

        let serverPin = try DTLSContext.publicKeySHA256(ofCertificatePEM: Certs.bytes("server.pem"))
        let wrongName = try Pair(client: pinnedClient([serverPin]), server: Certs.server(), serverName: "example.com")
        wrongName.handshake()
        guard case .failed(.nameMismatch)? = wrongName.clientEvents.first else {
            Issue.record("client events: \(wrongName.clientEvents)")
            return
        }
    }
}

// MARK: helpers

private func pinnedClient(_ pins: [[UInt8]]) throws -> DTLSContext {
    try DTLSContext.client(trustRootsPEM: Certs.bytes("ca.pem"), pinnedPublicKeySHA256: pins)
}

/// A client context presenting the named certificate and key from certs/.
private func clientPresenting(_ name: String) throws -> DTLSContext {
    try DTLSContext.client(trustRootsPEM: Certs.bytes("ca.pem"), certificateChainPEM: Certs.bytes("\(name).pem"),
                           privateKeyPEM: Certs.bytes("\(name).key"))
}

private func untrustedDetail(_ events: [DTLSEvent]) -> String? {
    guard case .failed(.untrustedCertificate(let detail))? = events.first else { return nil }
    return detail
}

private func handshakeFailedDetail(_ events: [DTLSEvent]) -> String? {
    guard case .failed(.handshakeFailed(let detail))? = events.first else { return nil }
    return detail
}

private func configurationError(_ body: () throws -> DTLSContext) -> DTLSError? {
    do {
        _ = try body()
        return nil
    } catch {
        return error as? DTLSError
    }
}

/// The message of the `.invalidConfiguration` a call threw, or a marker if it did something else.
private func configurationDetail(_ body: () throws -> DTLSContext) -> String {
    switch configurationError(body) {
    case .invalidConfiguration(let detail)?: return detail
    case let other?: return "unexpected error: \(other)"
    case nil: return "no error"
    }
}

private let opensslCommand: String? = ["/usr/bin/openssl", "/usr/local/bin/openssl", "/bin/openssl"]
    .first { FileManager.default.isExecutableFile(atPath: $0) }

/// Runs the openssl command to completion and returns its stdout (inputs and outputs are small).
private func runOpenSSL(_ arguments: [String], input: [UInt8] = []) throws -> [UInt8] {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: opensslCommand ?? "/usr/bin/openssl")
    process.arguments = arguments
    let stdin = Pipe()
    let stdout = Pipe()
    process.standardInput = stdin
    process.standardOutput = stdout
    process.standardError = FileHandle.nullDevice
    try process.run()
    stdin.fileHandleForWriting.write(Data(input))
    try stdin.fileHandleForWriting.close()
    let output = stdout.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    #expect(process.terminationStatus == 0, "openssl \(arguments.joined(separator: " "))")
    return [UInt8](output)
}
