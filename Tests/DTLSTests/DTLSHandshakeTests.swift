import DTLS
import NIOCore
import Testing

@Suite struct DTLSHandshakeTests {
    @Test func handshakeWithCookieExchangeNegotiatesAES256GCM() throws {
        let pair = try Pair(client: Certs.client(), server: Certs.server())
        pair.handshake()
        #expect(pair.helloVerifyRequests == 1)
        #expect(pair.clientEvents == [.handshakeCompleted])
        #expect(pair.serverEvents == [.handshakeCompleted])
        let server = try #require(pair.server)
        #expect(pair.client.state == .established)
        #expect(server.state == .established)
        #expect(pair.client.negotiatedCipherSuite == "ECDHE-ECDSA-AES256-GCM-SHA384")
        #expect(server.negotiatedCipherSuite == "ECDHE-ECDSA-AES256-GCM-SHA384")
        #expect(pair.client.recordOverhead == 13 + 24)
        #expect(pair.client.peerCertificateSubject == "CN=localhost")
        #expect(server.peerCertificateSubject == nil)
        #expect(pair.client.nextDeadline == nil)
    }

    @Test func handshakeDatagramsFitTheMTU() throws {
        let pair = try Pair(client: Certs.client(), server: Certs.server(), mtu: 400)
        pair.handshake()
        #expect(pair.clientEvents == [.handshakeCompleted])
        #expect(pair.serverEvents == [.handshakeCompleted])
        for datagram in pair.clientSent + pair.serverSent {
            #expect(datagram.readableBytes <= 400)
        }
        // A small MTU forces the server's flight into several datagrams.
        #expect(pair.serverSent.count > 2)
    }

    @Test func untrustedServerCertificateFailsOnBothSides() throws {
        let pair = try Pair(client: Certs.client(trust: "other-ca.pem"), server: Certs.server())
        pair.handshake()
        guard case .failed(.untrustedCertificate(let detail))? = pair.clientEvents.first else {
            Issue.record("client events: \(pair.clientEvents)")
            return
        }
        #expect(detail.contains("unable to get local issuer certificate"))
        #expect(pair.client.state == .failed)
        guard case .failed(.handshakeFailed(let serverDetail))? = pair.serverEvents.first else {
            Issue.record("server events: \(pair.serverEvents)")
            return
        }
        #expect(serverDetail.contains("alert"))
    }

    @Test func serverCertificateFromAnotherCAIsUntrusted() throws {
        let pair = try Pair(client: Certs.client(), server: Certs.server(cert: "other-server"))
        pair.handshake()
        guard case .failed(.untrustedCertificate)? = pair.clientEvents.first else {
            Issue.record("client events: \(pair.clientEvents)")
            return
        }
    }

    @Test func wrongServerNameIsANameMismatch() throws {
        let pair = try Pair(client: Certs.client(), server: Certs.server(), serverName: "example.com")
        pair.handshake()
        guard case .failed(.nameMismatch(let expected, let detail))? = pair.clientEvents.first else {
            Issue.record("client events: \(pair.clientEvents)")
            return
        }
        #expect(expected == "example.com")
        #expect(detail.contains("mismatch"))
    }

    @Test func ipAddressNamesAreCheckedAgainstIPSANs() throws {
        let good = try Pair(client: Certs.client(), server: Certs.server(), serverName: "127.0.0.1")
        good.handshake()
        #expect(good.clientEvents == [.handshakeCompleted])
        let v6 = try Pair(client: Certs.client(), server: Certs.server(), serverName: "::1")
        v6.handshake()
        #expect(v6.clientEvents == [.handshakeCompleted])

        let bad = try Pair(client: Certs.client(), server: Certs.server(), serverName: "10.9.9.9")
        bad.handshake()
        guard case .failed(.nameMismatch(let expected, _))? = bad.clientEvents.first else {
            Issue.record("client events: \(bad.clientEvents)")
            return
        }
        #expect(expected == "10.9.9.9")
    }

    @Test func missingRequiredClientCertificateFailsBothSides() throws {
        let pair = try Pair(client: Certs.client(), server: Certs.server(clientTrust: "ca.pem", requireClient: true))
        pair.handshake()
        #expect(pair.serverEvents.first == .failed(.peerCertificateMissing))
        guard case .failed(.handshakeFailed(let detail))? = pair.clientEvents.first else {
            Issue.record("client events: \(pair.clientEvents)")
            return
        }
        #expect(detail.contains("alert"))
    }

    @Test func clientCertificateSubjectIsVisibleOnTheServer() throws {
        let pair = try Pair(client: Certs.client(withCertificate: true),
                            server: Certs.server(clientTrust: "ca.pem", requireClient: true))
        pair.handshake()
        #expect(pair.serverEvents == [.handshakeCompleted])
        #expect(pair.server?.peerCertificateSubject == "CN=toudtls-test-client")
    }

    @Test func optionalClientCertificateMayBeAbsent() throws {
        let pair = try Pair(client: Certs.client(), server: Certs.server(clientTrust: "ca.pem"))
        pair.handshake()
        #expect(pair.serverEvents == [.handshakeCompleted])
        #expect(pair.server?.peerCertificateSubject == nil)
    }

    @Test func clientCertificateFromAnotherCAIsUntrustedByTheServer() throws {
        let client = try DTLSContext.client(trustRootsPEM: Certs.bytes("ca.pem"),
                                            certificateChainPEM: Certs.bytes("other-server.pem"),
                                            privateKeyPEM: Certs.bytes("other-server.key"))
        let pair = try Pair(client: client, server: Certs.server(clientTrust: "ca.pem", requireClient: true))
        pair.handshake()
        guard case .failed(.untrustedCertificate)? = pair.serverEvents.first else {
            Issue.record("server events: \(pair.serverEvents)")
            return
        }
    }

    @Test func malformedConfigurationIsRejected() throws {
        let garbage = Array("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".utf8)
        #expect(throws: DTLSError.self) { try DTLSContext.client(trustRootsPEM: garbage) }
        #expect(throws: DTLSError.self) { try DTLSContext.client(trustRootsPEM: []) }
        let serverPEM = try Certs.bytes("server.pem")
        let serverKey = try Certs.bytes("server.key")
        let clientKey = try Certs.bytes("client.key")
        guard case .invalidConfiguration(let chainDetail)? = configurationError({
            try DTLSContext.server(certificateChainPEM: garbage, privateKeyPEM: serverKey)
        }) else {
            Issue.record("malformed chain accepted")
            return
        }
        #expect(chainDetail.hasPrefix("malformed PEM certificate #1 in the certificate chain"))
        guard case .invalidConfiguration(let keyDetail)? = configurationError({
            try DTLSContext.server(certificateChainPEM: serverPEM, privateKeyPEM: clientKey)
        }) else {
            Issue.record("mismatched key accepted")
            return
        }
        #expect(keyDetail.hasPrefix("the private key does not match the certificate"))
        #expect(configurationError { try DTLSContext.server(certificateChainPEM: serverPEM, privateKeyPEM: garbage) }
            == .invalidConfiguration("the private key contains no PEM private key (\"-----BEGIN PRIVATE KEY-----\")"))
        guard case .invalidConfiguration? = configurationError({
            try DTLSContext.server(certificateChainPEM: serverPEM, privateKeyPEM: serverKey,
                                   requireClientCertificate: true)
        }) else {
            Issue.record("required client certificates without trust roots")
            return
        }
        #expect(throws: DTLSError.self) {
            try DTLSConnection(client: Certs.server(), serverName: "localhost", mtu: 1400)
        }
    }
}

/// The error a throwing configuration call produced, or nil if it succeeded.
private func configurationError(_ body: () throws -> DTLSContext) -> DTLSError? {
    do {
        _ = try body()
        return nil
    } catch {
        return error as? DTLSError
    }
}
