import NIOCore

/// What happened on a `DTLSConnection`, in order; fetched with `pollEvent()`.
public enum DTLSEvent: Sendable, Equatable {
    case handshakeCompleted
    case closeNotifyReceived
    case failed(DTLSError)
}

/// Life cycle of a `DTLSConnection`.
///
/// `.closed` means a close_notify was sent or received. After only *receiving* one, application
/// data can still be written (OpenSSL allows it); after sending one, it cannot.
public enum DTLSConnectionState: Sendable, Equatable {
    case handshaking
    case established
    case closed
    case failed
}

/// The outcome of `DTLSContext.listen`.
public enum DTLSListenResult {
    /// Send this HelloVerifyRequest back to the datagram's source; no state was kept.
    case helloVerifyRequest(ByteBuffer)
    /// The ClientHello carried an acceptable cookie: a server connection that has processed it.
    /// Its first flight (or, if it already failed, its alert) is waiting in `pollDatagram()`.
    case accepted(DTLSConnection)
    /// Not a usable ClientHello; nothing to send.
    case dropped(String)
}

/// The AEAD suites a context offers (always with ECDHE; ECDSA or RSA as the certificate says).
/// The record layer implements exactly these three.
public enum DTLSCipherSuite: String, Sendable, CaseIterable {
    case aes256GCM = "AES256-GCM"
    case chacha20Poly1305 = "CHACHA20-POLY1305"
    case aes128GCM = "AES128-GCM"

    /// OpenSSL's name for the suite with an ECDSA or RSA certificate, e.g. "ECDHE-ECDSA-AES256-GCM-SHA384".
    public func openSSLName(rsa: Bool) -> String {
        let hash = self == .aes256GCM ? "-SHA384" : self == .aes128GCM ? "-SHA256" : ""
        return "ECDHE-\(rsa ? "RSA" : "ECDSA")-\(rawValue)\(hash)"
    }

    /// An OpenSSL cipher list offering `suites` in the given order.
    static func cipherList(_ suites: [DTLSCipherSuite]) -> String {
        suites.flatMap { [$0.openSSLName(rsa: false), $0.openSSLName(rsa: true)] }.joined(separator: ":")
    }
}
