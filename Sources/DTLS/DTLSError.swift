/// Why a DTLS context could not be built or a DTLS session failed.
public enum DTLSError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Bad or malformed PEM, a key that does not match its certificate, a bad server name, ...
    case invalidConfiguration(String)
    /// The peer's chain does not verify against the trust roots.
    case untrustedCertificate(String)
    /// The peer's certificate is valid but not for the name (or IP address) we asked for.
    case nameMismatch(expected: String, detail: String)
    /// A client certificate is required and the client sent none.
    case peerCertificateMissing
    /// Anything else during the handshake, including a fatal alert from the peer.
    case handshakeFailed(String)
    /// A fatal alert received after the handshake.
    case alertReceived(String)
    /// Any other fatal error.
    case protocolError(String)

    public var description: String {
        switch self {
        case .invalidConfiguration(let detail):
            return "invalid DTLS configuration: \(detail)"
        case .untrustedCertificate(let detail):
            return "peer certificate is not trusted (\(detail)); check the trust roots"
        case .nameMismatch(let expected, let detail):
            return "peer certificate is not valid for \"\(expected)\" (\(detail))"
        case .peerCertificateMissing:
            return "the peer sent no certificate, but this server requires one"
        case .handshakeFailed(let detail):
            return "DTLS handshake failed: \(detail)"
        case .alertReceived(let detail):
            return "DTLS session ended by the peer: \(detail)"
        case .protocolError(let detail):
            return "DTLS protocol error: \(detail)"
        }
    }
}
