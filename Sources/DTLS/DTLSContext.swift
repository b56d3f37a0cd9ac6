import CTOUOpenSSL
import NIOCore

/// DTLS 1.2 settings and credentials (an OpenSSL `SSL_CTX`): immutable after creation, shared by
/// all connections made from it, usable from any thread.
public final class DTLSContext: @unchecked Sendable {
    let handle: OpaquePointer
    /// True for a server context (accepts via `listen`), false for a client context.
    public let isServer: Bool

    private init(handle: OpaquePointer, isServer: Bool) {
        self.handle = handle
        self.isServer = isServer
    }

    deinit {
        tou_dtls_ctx_free(handle)
    }

    /// A client context that verifies servers against `trustRootsPEM` (nil: the system trust
    /// store, OpenSSL's default paths, which `SSL_CERT_FILE`/`SSL_CERT_DIR` override; it is read
    /// once here, not per connection), optionally presenting a
    /// client certificate. With `pinnedPublicKeySHA256` (SHA-256 hashes of DER
    /// SubjectPublicKeyInfo, 32 bytes each) the server's leaf key must also match one of them, in
    /// addition to the normal chain and name checks; otherwise the handshake fails with
    /// `.pinMismatch`. `cipherSuites` are offered in that order.
    public static func client(trustRootsPEM: [UInt8]?, certificateChainPEM: [UInt8]? = nil,
                              privateKeyPEM: [UInt8]? = nil,
                              pinnedPublicKeySHA256: [[UInt8]] = [],
                              cipherSuites: [DTLSCipherSuite] = DTLSCipherSuite.allCases) throws(DTLSError) -> DTLSContext {
        if let trustRootsPEM, trustRootsPEM.isEmpty { throw .invalidConfiguration("the trust roots are empty") }
        var pins: [UInt8] = []
        pins.reserveCapacity(pinnedPublicKeySHA256.count * 32)
        for (index, pin) in pinnedPublicKeySHA256.enumerated() {
            guard pin.count == 32 else {
                throw .invalidConfiguration(
                    "public-key pin #\(index + 1) is \(pin.count) bytes; a SHA-256 pin is 32 bytes")
            }
            pins.append(contentsOf: pin)
        }
        var error = [CChar](repeating: 0, count: 512)
        let handle = withOptionalBytes(trustRootsPEM) { trust in
            withOptionalBytes(certificateChainPEM) { chain in
                withOptionalBytes(privateKeyPEM) { key in
                    pins.withUnsafeBufferPointer { pinBytes in
                        tou_dtls_ctx_new_client(trust?.baseAddress, trust?.count ?? 0,
                                                chain?.baseAddress, chain?.count ?? 0,
                                                key?.baseAddress, key?.count ?? 0,
                                                pinBytes.baseAddress, pinnedPublicKeySHA256.count,
                                                &error, error.count)
                    }
                }
            }
        }
        guard let handle else { throw .invalidConfiguration(cString(error)) }
        let context = DTLSContext(handle: handle, isServer: false)
        try context.offer(cipherSuites)
        return context
    }

    /// A server context presenting `certificateChainPEM` (leaf first). With `clientTrustRootsPEM`
    /// it asks clients for a certificate and verifies one if sent; `requireClientCertificate`
    /// makes it mandatory. Of the client's `cipherSuites`, the first in this order is chosen.
    /// With `ticketLifetime` it issues session tickets for abbreviated handshakes, under keys that
    /// rotate every lifetime (a ticket stays usable for at least one lifetime); nil issues none.
    public static func server(certificateChainPEM: [UInt8], privateKeyPEM: [UInt8],
                              clientTrustRootsPEM: [UInt8]? = nil,
                              requireClientCertificate: Bool = false,
                              cipherSuites: [DTLSCipherSuite] = DTLSCipherSuite.allCases,
                              ticketLifetime: TimeAmount? = .hours(1)) throws(DTLSError) -> DTLSContext {
        var error = [CChar](repeating: 0, count: 512)
        let handle = certificateChainPEM.withUnsafeBufferPointer { chain in
            privateKeyPEM.withUnsafeBufferPointer { key in
                withOptionalBytes(clientTrustRootsPEM) { trust in
                    tou_dtls_ctx_new_server(chain.baseAddress, chain.count,
                                            key.baseAddress, key.count,
                                            trust?.baseAddress, trust?.count ?? 0,
                                            requireClientCertificate ? 1 : 0,
                                            &error, error.count)
                }
            }
        }
        guard let handle else { throw .invalidConfiguration(cString(error)) }
        let context = DTLSContext(handle: handle, isServer: true)
        try context.offer(cipherSuites)
        if let ticketLifetime {
            let seconds = max(1, ticketLifetime.nanoseconds / 1_000_000_000)
            guard tou_dtls_ctx_enable_tickets(handle, Int(seconds), &error, error.count) == 1 else {
                throw .invalidConfiguration(cString(error))
            }
        }
        return context
    }

    /// Server: starts a new session-ticket key now; tickets under the key before it still work for
    /// one more lifetime, older ones fall back to a full handshake.
    public func rotateTicketKeys() {
        tou_dtls_ctx_rotate_ticket_keys(handle)
    }

    private func offer(_ suites: [DTLSCipherSuite]) throws(DTLSError) {
        guard !suites.isEmpty else { throw .invalidConfiguration("no cipher suites to offer") }
        guard suites != DTLSCipherSuite.allCases else { return }
        var error = [CChar](repeating: 0, count: 512)
        guard tou_dtls_ctx_set_ciphers(handle, DTLSCipherSuite.cipherList(suites), &error, error.count) == 1 else {
            throw .invalidConfiguration(cString(error))
        }
    }

    /// Stateless cookie exchange on a server context. Feeds one datagram that should carry a
    /// ClientHello. `cookieToIssue` (1...255 bytes; made only with `requireCookie`) goes into a
    /// HelloVerifyRequest; a ClientHello
    /// carrying any of `acceptableCookies` is accepted and becomes a connection that continues the
    /// handshake (its ServerHello flight is then available from `pollDatagram()`). No per-peer
    /// state is kept when not accepted. With `requireCookie` false a ClientHello without a cookie
    /// is accepted at once (the caller knows the peer cannot use the answer to amplify: it padded
    /// its ClientHello and the listener is not under pressure). Padding after the records is
    /// ignored.
    public func listen(datagram: ByteBuffer, cookieToIssue makeCookie: @autoclosure () -> [UInt8],
                       acceptableCookies: [[UInt8]], requireCookie: Bool = true, mtu: Int,
                       now: NIODeadline) -> DTLSListenResult {
        guard isServer else { return .dropped("listen needs a server context") }
        // Made only where one may be issued (a cookie costs an HMAC); without requireCookie the
        // shim never issues one, and the placeholder only satisfies its argument checks.
        let cookieToIssue = requireCookie ? makeCookie() : [0]
        guard (1...255).contains(cookieToIssue.count) else {
            return .dropped("the cookie to issue must be 1...255 bytes")
        }
        guard let cMTU = Int32(exactly: mtu) else { return .dropped("MTU out of range") }
        var flat: [UInt8] = []
        var lengths: [Int] = []
        flat.reserveCapacity(acceptableCookies.reduce(0) { $0 + $1.count })
        for cookie in acceptableCookies where !cookie.isEmpty && cookie.count <= 255 {
            flat.append(contentsOf: cookie)
            lengths.append(cookie.count)
        }
        var message = [CChar](repeating: 0, count: 512)
        var hvr = ByteBuffer()
        var outcome: Int32 = 0
        var conn: OpaquePointer? = nil
        var datagram = datagram
        if let padding = DTLSRecords.paddingLength(of: datagram), padding > 0 {
            datagram.moveWriterIndex(to: datagram.writerIndex - padding)
        }
        let hvrCapacity = 13 + 12 + 3 + 255
        hvr.reserveCapacity(hvrCapacity)
        _ = datagram.withUnsafeReadableBytes { dgram in
            cookieToIssue.withUnsafeBufferPointer { issue in
                flat.withUnsafeBufferPointer { acc in
                    lengths.withUnsafeBufferPointer { lens in
                        hvr.writeWithUnsafeMutableBytes(minimumWritableBytes: hvrCapacity) { out in
                            var hvrLength = 0
                            outcome = tou_dtls_listen(
                                handle,
                                dgram.baseAddress?.assumingMemoryBound(to: UInt8.self), dgram.count,
                                issue.baseAddress, issue.count,
                                acc.baseAddress, lens.baseAddress, lens.count,
                                requireCookie ? 1 : 0, cMTU,
                                out.baseAddress?.assumingMemoryBound(to: UInt8.self), out.count, &hvrLength,
                                &conn, &message, message.count)
                            return hvrLength
                        }
                    }
                }
            }
        }
        switch outcome {
        case Int32(TOU_DTLS_LISTEN_HVR) where hvr.readableBytes > 0:
            return .helloVerifyRequest(hvr)
        case Int32(TOU_DTLS_LISTEN_ACCEPTED):
            guard let conn else { return .dropped("internal error: no connection") }
            return .accepted(DTLSConnection(acceptedHandle: conn, context: self, now: now))
        default:
            let text = cString(message)
            return .dropped(text.isEmpty ? "not a ClientHello" : text)
        }
    }
}

/// Runs `body` with the bytes of an optional array, or nil.
func withOptionalBytes<R>(_ bytes: [UInt8]?, _ body: (UnsafeBufferPointer<UInt8>?) -> R) -> R {
    guard let bytes else { return body(nil) }
    return bytes.withUnsafeBufferPointer { body($0) }
}

/// A Swift string from a NUL-terminated C buffer that may lack its terminator.
func cString(_ buffer: [CChar]) -> String {
    let end = buffer.firstIndex(of: 0) ?? buffer.endIndex
    return String(decoding: buffer[..<end].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
