import CTOUOpenSSL

/// A client's resumable session: what it needs for an abbreviated handshake with the same server
/// (its ticket and the session's secrets), bound to the server name and to the trust roots and
/// pins that verified the server. Secret: store it like a private key.
public struct DTLSSavedSession: Sendable, Equatable {
    /// The shim's envelope around OpenSSL's DER encoding.
    public let bytes: [UInt8]
    /// The name the session was made for (the server name verified, or an IP literal).
    public let serverName: String
    /// When the server's ticket lifetime ends, in seconds since 1970.
    public let expires: Int64
    /// OpenSSL's session, decoded once for every connection that offers it: decoding repeats the
    /// parse of the server's certificate, the largest cost of a resumed handshake's client side.
    /// nil when `bytes` do not decode (offering then says why).
    let decoded: DecodedSavedSession?

    public init(bytes: [UInt8], serverName: String, expires: Int64) {
        self.init(bytes: bytes, serverName: serverName, expires: expires, decoded: DecodedSavedSession(decoding: bytes))
    }

    init(bytes: [UInt8], serverName: String, expires: Int64, decoded: DecodedSavedSession?) {
        self.bytes = bytes
        self.serverName = serverName
        self.expires = expires
        self.decoded = decoded
    }

    public static func == (lhs: DTLSSavedSession, rhs: DTLSSavedSession) -> Bool {
        lhs.bytes == rhs.bytes && lhs.serverName == rhs.serverName && lhs.expires == rhs.expires
    }
}

/// The shim's decoded session: immutable once made, and OpenSSL reference-counts the session
/// inside, so connections on any thread may offer it at once.
final class DecodedSavedSession: @unchecked Sendable {
    let handle: OpaquePointer

    init?(decoding bytes: [UInt8]) {
        var error = [CChar](repeating: 0, count: 256)
        guard let handle = bytes.withUnsafeBufferPointer({
            tou_saved_session_decode($0.baseAddress, $0.count, &error, error.count)
        }) else { return nil }
        self.handle = handle
    }

    init(handle: OpaquePointer) {
        self.handle = handle
    }

    deinit {
        tou_saved_session_free(handle)
    }
}
