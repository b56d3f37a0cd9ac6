import CTOUOpenSSL
import NIOCore

/// The target's per-listener secrets for answering new-session attempts without keeping any
/// per-peer state before a valid cookie: the derived target SID and the DTLS cookie are both
/// HMAC-SHA-256 over `(address, port, S)`, under two separate keys that rotate together.
struct StatelessAdmission: Sendable {
    static let keyLength = 32
    static let cookieLength = 32

    private struct KeyPair: Sendable {
        var sidKey: HMACKey
        var cookieKey: HMACKey

        static func random() -> KeyPair {
            KeyPair(sidKey: HMACKey(secureRandomBytes(StatelessAdmission.keyLength)),
                    cookieKey: HMACKey(secureRandomBytes(StatelessAdmission.keyLength)))
        }
    }

    let rotationInterval: TimeAmount
    private var current: KeyPair
    private var previous: KeyPair?
    /// Start of the current key period; periods stay aligned to it so rotation is regular.
    private var periodStart: NIODeadline

    init(rotationInterval: TimeAmount = .seconds(60), now: NIODeadline) {
        // A non-positive interval would rotate on every call; one nanosecond is the floor.
        self.rotationInterval = max(rotationInterval, .nanoseconds(1))
        current = .random()
        previous = nil
        periodStart = now
    }

    /// Current keys become previous and fresh ones are drawn. If more than one period went by
    /// unobserved, the old current keys are older than two periods allow and are dropped too.
    mutating func rotateIfNeeded(now: NIODeadline) {
        let elapsed = now - periodStart
        guard elapsed >= rotationInterval else { return }
        let periods = elapsed.nanoseconds / rotationInterval.nanoseconds
        previous = periods == 1 ? current : nil
        current = .random()
        periodStart = periodStart + .nanoseconds(periods * rotationInterval.nanoseconds)
    }

    /// The target's SID for this attempt under the current key: never 0.
    func derivedSID(for peer: PeerKey) -> UInt64 {
        Self.derivedSID(key: current.sidKey, peer: peer)
    }

    /// The cookie to put in a HelloVerifyRequest now.
    func cookieToIssue(for peer: PeerKey) -> [UInt8] {
        Self.cookie(key: current.cookieKey, peer: peer)
    }

    /// Every cookie that admits this peer now: the current period's and the previous one's.
    func acceptableCookies(for peer: PeerKey) -> [[UInt8]] {
        var cookies = [Self.cookie(key: current.cookieKey, peer: peer)]
        if let previous { cookies.append(Self.cookie(key: previous.cookieKey, peer: peer)) }
        return cookies
    }

    /// Checks a received cookie against the current and previous keys without allocating
    /// (bogus cookies can arrive at line rate from spoofed sources), comparing in constant time
    /// so response timing reveals nothing about how much of a forged cookie was right.
    func isAcceptableCookie(_ cookie: some Collection<UInt8>, for peer: PeerKey) -> Bool {
        guard cookie.count == Self.cookieLength else { return false }
        var accepted = Self.matches(cookie, key: current.cookieKey, peer: peer)
        if let previous {
            accepted = Self.matches(cookie, key: previous.cookieKey, peer: peer) || accepted
        }
        return accepted
    }

    private static func matches(_ cookie: some Collection<UInt8>, key: HMACKey, peer: PeerKey) -> Bool {
        withDigest(key: key, peer: peer) { digest -> Bool in
            guard let digest else { return false }
            var difference: UInt8 = 0
            for (expected, received) in zip(digest.prefix(cookieLength), cookie) {
                difference |= expected ^ received
            }
            return difference == 0
        }
    }

    // MARK: - HMAC

    /// The first 8 bytes of the digest, big-endian, with 0 (reserved: "no session") mapped to 1.
    static func sid(fromDigestPrefix prefix: UInt64) -> UInt64 {
        prefix == 0 ? 1 : prefix
    }

    private static func derivedSID(key: HMACKey, peer: PeerKey) -> UInt64 {
        let prefix = withDigest(key: key, peer: peer) { digest -> UInt64? in
            guard let digest else { return nil }
            var value: UInt64 = 0
            for index in 0..<8 { value = value << 8 | UInt64(digest[index]) }
            return value
        }
        // HMAC cannot fail with valid arguments; if OpenSSL ever does, a random SID matches no
        // later attempt, so the peer just gets another HelloVerifyRequest (fail closed).
        return sid(fromDigestPrefix: prefix ?? UInt64.random(in: 1...UInt64.max))
    }

    private static func cookie(key: HMACKey, peer: PeerKey) -> [UInt8] {
        let cookie = withDigest(key: key, peer: peer) { digest -> [UInt8]? in
            guard let digest else { return nil }
            return Array(digest.prefix(cookieLength))
        }
        // Same fail-closed reasoning: an unverifiable random cookie admits no one.
        return cookie ?? secureRandomBytes(cookieLength)
    }

    /// Runs HMAC-SHA-256(key, peer's MAC input) into a stack buffer; `body` gets nil on failure.
    private static func withDigest<Result>(key: HMACKey, peer: PeerKey,
                                           _ body: (UnsafeBufferPointer<UInt8>?) -> Result) -> Result {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 32) { digest in
            let ok = peer.withMACInput { input in
                tou_hmac_key_sha256(key.handle, input.bindMemory(to: UInt8.self).baseAddress, input.count,
                                    digest.baseAddress)
            }
            return body(ok == 1 ? UnsafeBufferPointer(digest) : nil)
        }
    }
}

/// An HMAC-SHA-256 key OpenSSL has set up once (see `tou_hmac_key_new`); never changed afterwards,
/// so it may be shared. A key OpenSSL could not set up (nil handle) fails every HMAC: fail closed.
final class HMACKey: @unchecked Sendable {
    let handle: OpaquePointer?

    init(_ key: [UInt8]) {
        handle = key.withUnsafeBufferPointer { tou_hmac_key_new($0.baseAddress, $0.count) }
    }

    deinit {
        tou_hmac_key_free(handle)
    }
}

/// Key material from OpenSSL's CSPRNG, falling back to the system CSPRNG (getrandom/arc4random)
/// rather than crashing if OpenSSL's refuses.
func secureRandomBytes(_ count: Int) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    let ok = bytes.withUnsafeMutableBufferPointer { tou_random_bytes($0.baseAddress, $0.count) }
    if ok != 1 {
        var generator = SystemRandomNumberGenerator()
        for index in bytes.indices { bytes[index] = generator.next() }
    }
    return bytes
}
