import DTLS
import FoundationEssentials
import NIOConcurrencyHelpers

/// A session a client saved for resumption: the next connection to the same server name and port
/// offers it and, if the server still accepts its ticket, makes an abbreviated handshake (no
/// certificate, no key exchange). It holds the session's secrets: keep it like a private key.
public struct TOUSavedSession: Sendable, Equatable {
    let saved: DTLSSavedSession

    /// The server name the session was made for (the name verified, or an IP literal).
    public var serverName: String { saved.serverName }
    /// When the server's ticket lifetime ends; the session is not offered after that.
    public var expires: Date { Date(timeIntervalSince1970: TimeInterval(saved.expires)) }

    init(_ saved: DTLSSavedSession) {
        self.saved = saved
    }

    private static let magic = Array("TOUDTLS-SESSION\n".utf8)
    private static let version: UInt8 = 1

    /// A portable form, e.g. for a file: a magic line, a version, the expiry, the server name and
    /// the session as the DTLS layer keeps it (bound to the server name and the client's trust).
    public func serialized() -> [UInt8] {
        var bytes = Self.magic + [Self.version]
        withUnsafeBytes(of: saved.expires.bigEndian) { bytes += $0 }
        let name = Array(saved.serverName.utf8.prefix(255))
        bytes += [UInt8(name.count)] + name + saved.bytes
        return bytes
    }

    /// Reads `serialized()` output back; throws `.invalidConfiguration` saying what is wrong with it.
    public init(serialized bytes: [UInt8]) throws(TOUError) {
        let header = Self.magic.count + 1 + 8 + 1
        guard bytes.count > header, bytes.starts(with: Self.magic) else {
            throw .invalidConfiguration("not a saved toudtls session")
        }
        guard bytes[Self.magic.count] == Self.version else {
            throw .invalidConfiguration("a saved session of another version (\(bytes[Self.magic.count]))")
        }
        let expires = bytes[(Self.magic.count + 1)..<(Self.magic.count + 9)].reduce(Int64(0)) { $0 << 8 | Int64($1) }
        let nameLength = Int(bytes[Self.magic.count + 9])
        guard bytes.count > header + nameLength else { throw .invalidConfiguration("a truncated saved session") }
        let name = String(decoding: bytes[header..<(header + nameLength)], as: UTF8.self)
        self.saved = DTLSSavedSession(bytes: Array(bytes[(header + nameLength)...]), serverName: name, expires: expires)
    }
}

/// Saved sessions of one client configuration, for resumption: keyed by server name and port,
/// at most `capacity` (the least recently used goes first), each dropped when its ticket expires.
/// `TOUConfiguration.sessionCache` holds one, shared by every copy of that configuration;
/// `TOUConnection.connect` looks it up and fills it. Thread-safe.
public final class TOUSessionCache: Sendable {
    private struct Key: Hashable {
        var serverName: String
        var port: Int
    }

    private struct State {
        var entries: [Key: (session: TOUSavedSession, lastUsed: UInt64)] = [:]
        var clock: UInt64 = 0
    }

    public let capacity: Int
    private let state = NIOLockedValueBox(State())

    public init(capacity: Int = 256) {
        self.capacity = max(1, capacity)
    }

    /// The session saved for `serverName` and `port`, unless it has expired (then it is dropped).
    public func session(serverName: String, port: Int, now: Date = Date()) -> TOUSavedSession? {
        state.withLockedValue { state in
            let key = Key(serverName: serverName, port: port)
            guard let entry = state.entries[key] else { return nil }
            guard entry.session.expires > now else {
                state.entries[key] = nil
                return nil
            }
            state.clock += 1
            state.entries[key]?.lastUsed = state.clock
            return entry.session
        }
    }

    /// Saves `session` for its server name and `port`, replacing what was there.
    public func insert(_ session: TOUSavedSession, port: Int) {
        state.withLockedValue { state in
            let key = Key(serverName: session.serverName, port: port)
            if state.entries[key] == nil, state.entries.count >= capacity,
               let oldest = state.entries.min(by: { $0.value.lastUsed < $1.value.lastUsed })?.key {
                state.entries[oldest] = nil
            }
            state.clock += 1
            state.entries[key] = (session, state.clock)
        }
    }

    public func remove(serverName: String, port: Int) {
        state.withLockedValue { $0.entries[Key(serverName: serverName, port: port)] = nil }
    }

    public var count: Int { state.withLockedValue { $0.entries.count } }
}
