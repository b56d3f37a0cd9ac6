/// Why a DTLS context could not be built or a DTLS session failed.
public enum DTLSError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Bad or malformed PEM, a key that does not match its certificate, a bad server name, ...
    case invalidConfiguration(String)
    /// The peer's chain does not verify: unknown issuer, expired, not yet valid, bad signature...
    /// The message says which certificate and why (with dates for expired / not-yet-valid).
    case untrustedCertificate(String)
    /// The peer's certificate is valid but not for the name (or IP address) we asked for.
    case nameMismatch(expected: String, detail: String)
    /// The server's chain and name verified, but its leaf certificate's public key matches none
    /// of the client's pins. The message includes the actual `sha256:BASE64` pin.
    case pinMismatch(String)
    /// A client certificate is required and the client sent none.
    case peerCertificateMissing
    /// Anything else during the handshake, including a fatal alert from the peer.
    case handshakeFailed(String)
    /// A fatal alert received after the handshake.
    case alertReceived(String)
    /// The connection's keys have protected as much as they safely can (or too many forged records
    /// failed against them). DTLS 1.2 cannot rekey, so the connection ends; open a new one.
    case keyUsageLimitReached(String)
    /// Any other fatal error.
    case protocolError(String)

    public var description: String {
        switch self {
        case .invalidConfiguration(let detail):
            return "invalid DTLS configuration: \(detail)"
        case .untrustedCertificate(let detail):
            return "peer certificate is not trusted: \(detail)"
        case .nameMismatch(let expected, let detail):
            return "peer certificate is not valid for \"\(expected)\" (\(detail))"
        case .pinMismatch(let detail):
            return "server public key is not pinned: \(detail)"
        case .peerCertificateMissing:
            return "the peer sent no certificate, but this server requires one"
        case .handshakeFailed(let detail):
            return "DTLS handshake failed: \(detail)"
        case .alertReceived(let detail):
            return "DTLS session ended by the peer: \(detail)"
        case .keyUsageLimitReached(let detail):
            return "DTLS key usage limit reached: \(detail)"
        case .protocolError(let detail):
            return "DTLS protocol error: \(detail)"
        }
    }
}
