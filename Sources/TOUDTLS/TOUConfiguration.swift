import DTLS
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import TCPEngine

/// Where PEM material comes from.
public enum PEMSource: Sendable, Hashable {
    case pemFile(String)
    case pemBytes([UInt8])
    /// Trust roots only: the system's trust store, as curl and the `openssl` command use it
    /// (OpenSSL's default file and directory, Debian's /etc/ssl/certs; the `SSL_CERT_FILE` and
    /// `SSL_CERT_DIR` environment variables override them). Read once per configuration, not per
    /// connection. As a certificate chain or key it is an invalid configuration.
    case system

    func load() throws(TOUError) -> [UInt8] {
        switch self {
        case .system:
            throw .invalidConfiguration("the system trust store holds trust roots, not a certificate chain or key")
        case .pemBytes(let bytes):
            return bytes
        case .pemFile(let path):
            return try Self.readWhole(path)
        }
    }

    /// The whole file, or why it cannot be read (the system's own words: "No such file or directory").
    private static func readWhole(_ path: String) throws(TOUError) -> [UInt8] {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw .unreadableFile(path: path, reason: String(cString: strerror(errno))) }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 << 10)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw .unreadableFile(path: path, reason: String(cString: strerror(errno)))
            }
            if count == 0 { return bytes }
            bytes += chunk[0..<count]
            // A PEM file is small; a device or a huge file is not one.
            guard bytes.count <= 16 << 20 else { throw .unreadableFile(path: path, reason: "larger than 16 MiB") }
        }
    }

    /// What identifies this material without reading it: the bytes, or the file's identity and
    /// change times (nil when the file cannot be examined: `load()` then says why).
    var stamp: PEMStamp? {
        switch self {
        case .system:
            return .system
        case .pemBytes(let bytes):
            return .bytes(bytes)
        case .pemFile(let path):
            var info = stat()
            guard stat(path, &info) == 0 else { return nil }
            return .file(path: path, device: UInt64(info.st_dev), inode: UInt64(info.st_ino), size: Int64(info.st_size),
                         modified: [Int64(info.st_mtim.tv_sec), Int64(info.st_mtim.tv_nsec)],
                         changed: [Int64(info.st_ctim.tv_sec), Int64(info.st_ctim.tv_nsec)])
        }
    }

    var displayName: String {
        switch self {
        case .pemFile(let path): return path
        case .pemBytes: return "the configured PEM bytes"
        case .system: return "the system trust store"
        }
    }
}

/// PEM material as last seen: a file that still has the same identity, size and change times
/// has not changed, so a connect need not read it again.
enum PEMStamp: Hashable, Sendable {
    case absent
    case system
    case bytes([UInt8])
    case file(path: String, device: UInt64, inode: UInt64, size: Int64, modified: [Int64], changed: [Int64])
}

/// How a connection or listener behaves. Build one with `.client(...)`, `.server(...)` or `.plain`.
public struct TOUConfiguration: Sendable {
    public enum Security: Sendable, Hashable {
        /// TCP inside DTLS 1.2 (the default and the only authenticated mode).
        case dtls
        /// Cleartext TCP in GUE, for debugging and baselines. No authentication at all.
        case plain
    }

    public var security: Security
    /// Trust anchors for the peer's certificate (client: the server's; server: clients').
    /// `.system` is the system's trust store; `.client(...)` uses it unless told otherwise.
    public var trustRoots: PEMSource?
    /// Our own certificate chain and key (required on a server; optional client certificate).
    public var certificateChain: PEMSource?
    public var privateKey: PEMSource?
    /// Client: the name the server certificate must carry; defaults to the host connected to.
    public var serverName: String?
    /// Server: refuse clients without a certificate trusted by `trustRoots`.
    public var requireClientCertificate: Bool
    /// Client: SHA-256 pins of the server's public key ("sha256:BASE64", the hash of its DER
    /// SubjectPublicKeyInfo). When set, the server's key must match one, on top of the usual checks.
    public var pinnedPublicKeys: [String] = []

    /// Path MTU assumed for sizing the handshake and TCP segments.
    public var pathMTU: Int = 1500
    /// How long a connection attempt (DTLS and TCP handshakes) may take.
    public var handshakeTimeout: TimeAmount = .seconds(10)
    /// A session with no traffic for this long is ended; `.zero` means never.
    public var idleTimeout: TimeAmount = .minutes(5)
    /// RFC 5482's user timeout: a connection fails with `TOUError.timedOut` once data it sent has
    /// stayed unacknowledged this long (each acknowledgment of new data restarts the wait; into
    /// a closed receive window, only the peer's silence counts). It bounds how long writing to a
    /// dead peer goes unnoticed. `.zero` turns it off, leaving TCP's retry limit (minutes).
    public var userTimeout: TimeAmount = .seconds(30)
    /// Keepalive: after this long without hearing from the peer, an idle connection sends a probe
    /// the peer must answer, keeping NAT mappings and the peer's idle timeout from ending a quiet
    /// connection, and noticing a dead peer: unanswered for `userTimeout`, the connection fails
    /// with `TOUError.timedOut`. nil (the default) sends none, as TCP does; then a dead peer of an
    /// idle connection is noticed by `idleTimeout`. Behind NAT, 25 s is a common choice.
    public var keepAliveInterval: TimeAmount? = nil
    /// How long `close()` waits for the peer to finish before it resets the connection.
    public var closeTimeout: TimeAmount = .seconds(30)
    /// TCP buffer sizes; the receive buffer bounds the advertised window.
    public var receiveBufferSize: Int = 4 << 20
    public var sendBufferSize: Int = 4 << 20
    /// Send small writes at once instead of coalescing them while data is unacknowledged (Nagle off).
    public var noDelay: Bool = false
    public enum CongestionControl: Sendable, Hashable { case newReno, cubic }
    public var congestionControl: CongestionControl = .cubic
    /// UDP segmentation and receive offload (GSO/GRO) where the kernel has them: a run of datagrams
    /// crosses the socket layer once. Off sends and receives one datagram at a time.
    public var segmentationOffload: Bool = true
    /// The datagram I/O layer of the sockets whose event loops the library picks (`connect`, and
    /// `bind` without a group): our own (`.native`, the default) or SwiftNIO's channel (`.nio`,
    /// for code that opens SwiftNIO channels on the connection's loop). A socket opened on a loop
    /// the caller chose follows that loop (TOUNIO's run on SwiftNIO's).
    public var datagramIO: TOUDatagramIO = .default

    /// Listener limits (wire format defaults).
    public var maximumHalfOpenSessions: Int = 1024
    public var maximumSessions: Int = 10_000
    public var newSessionsPerSecondPerSource: Double = 100
    public var newSessionBurstPerSource: Double = 200
    /// Listener: how many accepted connections may wait for the application to take them.
    public var acceptBacklog: Int = 128
    /// Listener: ask every new attempt for a cookie first (a round trip more), as a listener under
    /// pressure does anyway; for deployments that never want to answer an unproven address.
    public var alwaysRequireCookie: Bool = false
    /// Listener: while fewer handshakes than this are in progress, a padded ClientHello is answered
    /// at once, without a cookie exchange; nil means a quarter of `maximumHalfOpenSessions`.
    public var cookielessHandshakeThreshold: Int? = nil
    /// Listener: at most this many attempts per second are admitted without a cookie, since each
    /// costs a key exchange and a signature; beyond it attempts are asked for a cookie.
    public var cookielessAdmissionsPerSecond: Int = 1000

    /// Client: sessions saved for abbreviated handshakes with servers that issue tickets, shared
    /// by the copies of this configuration; nil makes every handshake a full one.
    public var sessionCache: TOUSessionCache? = TOUSessionCache()
    /// Client: the DTLS context built from the PEM material, reused while that material is the same
    /// (parsing a CA bundle for every connect cost more than a handshake's own cryptography).
    let clientContexts = ClientContextCache()

    /// Where the library logs; silent unless the application provides a logger.
    public var logger: Logger = Logger(label: "toudtls", factory: { _ in SwiftLogNoOpLogHandler() })

    public init(security: Security, trustRoots: PEMSource? = nil, certificateChain: PEMSource? = nil,
                privateKey: PEMSource? = nil, serverName: String? = nil,
                requireClientCertificate: Bool = false) {
        self.security = security
        self.trustRoots = trustRoots
        self.certificateChain = certificateChain
        self.privateKey = privateKey
        self.serverName = serverName
        self.requireClientCertificate = requireClientCertificate
    }

    /// A client that verifies the server against `trustRoots` (default: the system trust store,
    /// like curl) and `serverName` (default: the host). Trust roots given replace the system store.
    public static func client(trustRoots: PEMSource = .system, serverName: String? = nil,
                              certificateChain: PEMSource? = nil, privateKey: PEMSource? = nil) -> TOUConfiguration {
        TOUConfiguration(security: .dtls, trustRoots: trustRoots, certificateChain: certificateChain,
                         privateKey: privateKey, serverName: serverName)
    }

    /// A server presenting `certificateChain`; with `requireClientCertificate`, clients must present a
    /// certificate trusted by `clientTrustRoots`.
    public static func server(certificateChain: PEMSource, privateKey: PEMSource,
                              clientTrustRoots: PEMSource? = nil,
                              requireClientCertificate: Bool = false) -> TOUConfiguration {
        TOUConfiguration(security: .dtls, trustRoots: clientTrustRoots, certificateChain: certificateChain,
                         privateKey: privateKey, requireClientCertificate: requireClientCertificate)
    }

    /// Cleartext TCP in GUE: no DTLS, no authentication. For debugging and measurements only.
    public static var plain: TOUConfiguration { TOUConfiguration(security: .plain) }

    /// recvmmsg batching: NIO splits one receive buffer evenly across the messages of a batch, so
    /// each slot must hold a whole datagram of the path MTU or the kernel truncates it.
    /// recvmmsg slots: one datagram each, or up to 64 KiB of coalesced datagrams with GRO. A client
    /// hears one peer, whose datagrams GRO joins, so 4 slots (times SwiftNIO's 4 reads per wakeup)
    /// still take 1 MiB per wakeup; every slot costs setup on each recvmmsg, including the last
    /// one that finds the socket empty.
    func receiveBatch(coalescing: Bool, onePeer: Bool) -> (count: Int, allocator: FixedSizeRecvByteBufferAllocator) {
        let slot = receiveSlot(coalescing: coalescing)
        let count = max(1, min(onePeer && coalescing ? 4 : 32, (1 << 20) / slot))
        return (count, FixedSizeRecvByteBufferAllocator(capacity: slot * count))
    }

    func receiveSlot(coalescing: Bool) -> Int {
        coalescing ? 65_536 : max(2048, pathMTU)
    }

    /// One worker's share of what a listener allows per second: each worker's token bucket runs
    /// on its own (the session and handshake limits are counted for the whole listener).
    func dividedAmong(workers: Int) -> TOUConfiguration {
        guard workers > 1 else { return self }
        var copy = self
        // The threshold stays the listener's, against its whole count of handshakes in progress.
        copy.cookielessHandshakeThreshold = cookielessHandshakeThreshold ?? maximumHalfOpenSessions / 4
        // Rounded up: a worker never gets a budget of 0 from a budget that is not 0.
        copy.cookielessAdmissionsPerSecond = (max(0, cookielessAdmissionsPerSecond) + workers - 1) / workers
        return copy
    }

    func validate() throws(TOUError) {
        guard pathMTU >= 576, pathMTU <= 65_535 else {
            throw .invalidConfiguration("path MTU \(pathMTU) is outside 576...65535")
        }
        guard receiveBufferSize >= 16 << 10, sendBufferSize >= 16 << 10 else {
            throw .invalidConfiguration("TCP buffers must be at least 16 KiB")
        }
        guard maximumSessions > 0, maximumHalfOpenSessions > 0, acceptBacklog > 0 else {
            throw .invalidConfiguration("session limits and the accept backlog must be positive")
        }
        if let keepAliveInterval, keepAliveInterval <= .zero {
            throw .invalidConfiguration("the keepalive interval must be positive (nil turns keepalive off)")
        }
        guard userTimeout >= .zero else { throw .invalidConfiguration("the user timeout cannot be negative") }
        guard (cookielessHandshakeThreshold ?? 0) >= 0, cookielessAdmissionsPerSecond >= 0 else {
            throw .invalidConfiguration("the cookieless threshold and budget cannot be negative")
        }
    }

    /// The TCP keepalive of `keepAliveInterval`: after that much silence a probe, then probes a
    /// quarter of the user timeout apart (at most the interval) until the user timeout says the
    /// peer is gone; without a user timeout, 9 probes as TCP's default.
    var tcpKeepAlive: TCPKeepAlive? {
        guard let interval = keepAliveInterval, interval > .zero else { return nil }
        guard userTimeout > .zero else { return TCPKeepAlive(idle: interval, interval: interval, count: 9) }
        let quarter = TimeAmount.nanoseconds(max(userTimeout.nanoseconds / 4, 100_000_000))
        return TCPKeepAlive(idle: interval, interval: min(interval, quarter), count: Int.max)
    }

    /// Client: the name a connection to `host` verifies the server's certificate against and saves
    /// its session under: `serverName`, else `host` (an IPv6 address without its brackets).
    public func serverName(connectingTo host: String) -> String {
        serverName ?? AddressText.unbracketed(host)
    }

    func makeClientContext() throws(TOUError) -> DTLSContext {
        guard let trustRoots else {
            throw .invalidConfiguration("a DTLS client needs trust roots (--ca) to verify the server")
        }
        // New files on disk take effect: looked at on every connect, read and parsed only when changed.
        // The system store (nil roots) is read when its context is built, once per configuration.
        let stamps = [trustRoots, certificateChain, privateKey].compactMap { source in
            source.map { $0.stamp } ?? PEMStamp.absent
        }
        if stamps.count == 3, let context = clientContexts.context(for: stamps, pins: pinnedPublicKeys) {
            return context
        }
        let roots = trustRoots == .system ? nil : try trustRoots.load()
        let chain = try certificateChain?.load()
        let key = try privateKey?.load()
        if (chain == nil) != (key == nil) {
            throw .invalidConfiguration("a client certificate needs both a certificate chain and a private key")
        }
        let material = ClientContextCache.Material(trustRoots: roots, certificateChain: chain, privateKey: key,
                                                   pins: pinnedPublicKeys)
        if let context = clientContexts.context(for: material, stamps: stamps.count == 3 ? stamps : nil) {
            return context
        }
        do {
            let pins = try pinnedPublicKeys.map { pin throws(DTLSError) in try DTLSContext.publicKeyPin(parsing: pin) }
            let context = try DTLSContext.client(trustRootsPEM: roots, certificateChainPEM: chain, privateKeyPEM: key,
                                                 pinnedPublicKeySHA256: pins)
            clientContexts.store(context, for: material, stamps: stamps.count == 3 ? stamps : nil)
            return context
        } catch {
            throw TOUError(error)
        }
    }

    func makeServerContext() throws(TOUError) -> DTLSContext {
        guard let certificateChain, let privateKey else {
            throw .invalidConfiguration("a DTLS server needs a certificate chain and a private key (--cert, --key)")
        }
        let chain = try certificateChain.load()
        let key = try privateKey.load()
        if trustRoots == .system {
            throw .invalidConfiguration("a server verifies client certificates against a CA file (--ca), not the system store")
        }
        let roots = try trustRoots?.load()
        if requireClientCertificate && roots == nil {
            throw .invalidConfiguration("requiring client certificates needs trust roots (--ca) to verify them")
        }
        do {
            return try DTLSContext.server(certificateChainPEM: chain, privateKeyPEM: key,
                                          clientTrustRootsPEM: roots,
                                          requireClientCertificate: requireClientCertificate)
        } catch {
            throw TOUError(error)
        }
    }
}
