import DTLS

/// Every failure a user of the library can see. One enum to switch over; each case's description
/// says what went wrong and, where it helps, what to do.
public enum TOUError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A configuration value is unusable (bad PEM, key that does not match the certificate, bad MTU...).
    case invalidConfiguration(String)
    /// A file named in the configuration cannot be read.
    case unreadableFile(path: String, reason: String)
    /// The DTLS handshake failed for a reason other than the certificate checks below.
    case handshakeFailed(String)
    /// The peer's certificate chain does not verify against the configured trust roots.
    case untrustedCertificate(String)
    /// The peer's certificate is valid but does not carry the expected name.
    case nameMismatch(expected: String, detail: String)
    /// A client certificate was required and the peer sent none.
    case peerCertificateMissing
    /// The server's public key is not one of the pinned keys.
    case pinMismatch(String)
    /// The peer could not be reached (no route, port unreachable, name does not resolve).
    case unreachable(String)
    /// The peer stopped answering (handshake, retransmissions or idle time ran out).
    case timedOut(String)
    /// The peer reset the connection.
    case connectionReset
    /// The peer ended the DTLS session before its TCP stream was complete.
    case truncated
    /// The connection's keys have protected as much as they safely can: DTLS 1.2 cannot rekey,
    /// so the connection ends (about 250 GB with AES-GCM). Open a new connection.
    case keyUsageLimitReached(String)
    /// The peer broke the protocol or sent a fatal alert.
    case protocolError(String)
    /// The connection or listener is already closed.
    case closed
    /// Binding or opening the local UDP socket failed.
    case socketError(String)

    public var description: String {
        switch self {
        case .invalidConfiguration(let what): return "invalid configuration: \(what)"
        case .unreadableFile(let path, let reason): return "cannot read \(path): \(reason)"
        case .handshakeFailed(let what): return "DTLS handshake failed: \(what)"
        case .untrustedCertificate(let what): return "peer certificate is not trusted: \(what)"
        case .nameMismatch(let expected, let detail):
            return "peer certificate does not match the name \"\(expected)\": \(detail)"
        case .peerCertificateMissing: return "the peer did not present the required client certificate"
        case .pinMismatch(let what): return "server public key is not pinned: \(what)"
        case .unreachable(let what): return "peer unreachable: \(what)"
        case .timedOut(let what): return "timed out: \(what)"
        case .connectionReset: return "connection reset by peer"
        case .truncated: return "the peer ended the secure session before finishing its data (truncation)"
        case .keyUsageLimitReached(let what): return "key usage limit reached: \(what)"
        case .protocolError(let what): return "protocol error: \(what)"
        case .closed: return "connection is closed"
        case .socketError(let what): return "socket error: \(what)"
        }
    }

    /// Whether the failure comes from authentication or the handshake (CLI exit code 3).
    public var isAuthenticationFailure: Bool {
        switch self {
        case .handshakeFailed, .untrustedCertificate, .nameMismatch, .peerCertificateMissing, .pinMismatch: return true
        default: return false
        }
    }

    init(_ error: DTLSError) {
        switch error {
        case .invalidConfiguration(let what): self = .invalidConfiguration(what)
        case .untrustedCertificate(let what): self = .untrustedCertificate(what)
        case .nameMismatch(let expected, let detail): self = .nameMismatch(expected: expected, detail: detail)
        case .peerCertificateMissing: self = .peerCertificateMissing
        case .pinMismatch(let what): self = .pinMismatch(what)
        case .handshakeFailed(let what): self = .handshakeFailed(what)
        case .alertReceived(let what): self = .protocolError("fatal alert from peer: \(what)")
        case .keyUsageLimitReached(let what): self = .keyUsageLimitReached(what)
        case .protocolError(let what): self = .protocolError(what)
        }
    }
}
