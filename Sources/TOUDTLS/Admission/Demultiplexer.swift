import DTLS
import NIOCore
import TCPEngine
import TOUWire

/// An endpoint's session table and admission, without I/O: for each datagram it says what to do
/// (deliver it to a session, start a new session, send a stateless reply, or drop it for a
/// reason) and counts what it decided. The endpoint feeds it datagrams from its socket; tests
/// feed it datagrams from sessions in memory. `Handle` is what the caller keeps per session.
///
/// Datagrams are matched by session ID, never by address: D names a local session; a datagram
/// with S and no known D is a new-session attempt keyed by (address, port, S) (wire format,
/// "Session identifiers" and "Fast setup").
final class Demultiplexer<Handle: AnyObject> {
    enum Role { case client, listener }

    /// What to do with one datagram.
    enum Verdict {
        /// For this session, whatever the source address (the session follows an address change).
        case deliver(Handle, GUEHeader, ByteBuffer)
        /// Admitted: a new session the caller registers with `insert(_:sid:admissionKey:)` and drives.
        case newSession(TOUSession, admissionKey: PeerKey)
        /// For a session of another worker of the same listener (by the worker byte of D): hand it there.
        case handOver(toWorker: Int, GUEHeader, ByteBuffer)
        /// A stateless answer to the source (a HelloVerifyRequest with its GUE header); `refused`
        /// when it also refuses the attempt (a replayed ClientHello).
        case reply(ByteBuffer, refused: Refusal?)
        case drop(Drop)
    }

    /// Why a datagram was not used. Counted; `refusal` is what a log line may say of it.
    enum Drop: Equatable {
        case malformed(Refusal?)
        case unknownSession
        /// For a session that ended moments ago (the peer's close_notify after ours): expected,
        /// counted apart from drops.
        case afterEnd
        case badAttempt(Refusal)
        /// Over a limit; nil while the listener is closing (nothing worth a log line).
        case overLimit(Refusal?)
        /// A repeat of an admitted attempt (a captured ClientHello and cookie).
        case replayed

        var refusal: Refusal? {
            switch self {
            case .malformed(let refusal), .overLimit(let refusal): return refusal
            case .badAttempt(let refusal): return refusal
            case .replayed: return .replayed
            case .unknownSession, .afterEnd: return nil
            }
        }
    }

    /// Why an attempt was refused; its text is made only when a log line wants it.
    enum Refusal: Equatable, CustomStringConvertible {
        case modeMismatch(listenerIsSecure: Bool)
        case notAClientHello, notASYN, unusableSYN
        case unusableClientHello(String)
        case halfOpenLimit(Int), sessionLimit(Int), sourceRate, sessionExists
        case replayed

        var description: String {
            switch self {
            case .modeMismatch(true): return "it sends cleartext (plain mode) and this listener requires DTLS"
            case .modeMismatch(false): return "it sends DTLS and this listener is in plain mode"
            case .notAClientHello: return "its first datagram is not a ClientHello"
            case .notASYN: return "its first datagram is not a TCP SYN"
            case .unusableSYN: return "its SYN is unusable"
            case .unusableClientHello(let reason): return "unusable ClientHello: \(reason)"
            case .halfOpenLimit(let limit): return "\(limit) handshakes are in progress already (the limit)"
            case .sessionLimit(let limit): return "\(limit) sessions are open already (the limit)"
            case .sourceRate: return "its address is over the limit of new sessions per second"
            case .sessionExists: return "its session exists already"
            case .replayed: return "a replayed ClientHello (a cookie opens one session only)"
            }
        }
    }

    let role: Role
    /// This listener worker's index among `workers`, which its SIDs carry (see `SessionID.onWorker`).
    let worker: Int
    let workers: Int
    let mode: TOUMode
    let parameters: SessionParameters
    let dtlsContext: DTLSContext?
    private let maximumHalfOpenSessions: Int
    private let maximumSessions: Int
    private let configuration: TOUConfiguration

    @exclusivity(unchecked) private var sessions: [UInt64: Handle] = [:]
    private var halfOpen: [PeerKey: UInt64] = [:]
    /// A listener's sessions that ended in the last seconds: the peer's last datagrams (its
    /// close_notify always arrives after ours ended the session) are expected, not drops.
    private var recentlyEnded = RecentSessionIDs()
    // Built on a listener's first attempt, so a client (one endpoint per connect) neither draws
    // keys nor allocates the per-source table. A class, so the tables change in place.
    private lazy var admission = ListenerAdmission(configuration, now: .now())
    /// No new sessions once false (the listener is closing).
    var accepting = true
    /// What this endpoint decided, plus the I/O counts its endpoint adds.
    @exclusivity(unchecked) var counters = TOUEndpointCounters()

    /// Sessions and handshakes in progress at the whole listener (shared by its workers).
    let budget: SessionBudget

    init(role: Role, configuration: TOUConfiguration, parameters: SessionParameters, dtlsContext: DTLSContext?,
         worker: Int = 0, of workers: Int = 1, budget: SessionBudget = SessionBudget()) {
        self.role = role
        self.budget = budget
        self.worker = worker
        self.workers = max(1, workers)
        self.configuration = configuration
        self.mode = configuration.security == .dtls ? .secure : .plain
        self.parameters = parameters
        self.dtlsContext = dtlsContext
        self.maximumHalfOpenSessions = configuration.maximumHalfOpenSessions
        self.maximumSessions = configuration.maximumSessions
    }

    // MARK: The session table

    var count: Int { sessions.count }
    /// Sessions whose handshakes are still in progress.
    var halfOpenCount: Int { halfOpen.count }
    var handles: Dictionary<UInt64, Handle>.Values { sessions.values }

    subscript(sid: UInt64) -> Handle? { sessions[sid] }

    /// Registers a session under its local SID; an admitted one also under its attempt's key
    /// until `established`.
    func insert(_ handle: Handle, sid: UInt64, admissionKey: PeerKey? = nil) {
        let new = sessions.updateValue(handle, forKey: sid) == nil
        let newAttempt = admissionKey.map { halfOpen.updateValue(sid, forKey: $0) == nil } ?? false
        budget.add(sessions: new ? 1 : 0, halfOpen: newAttempt ? 1 : 0)
    }

    /// The session's handshakes completed: its attempt's key no longer reaches it.
    func established(admissionKey: PeerKey) {
        if halfOpen.removeValue(forKey: admissionKey) != nil { budget.add(halfOpen: -1) }
    }

    /// The session ended; a listener remembers its SID for a while (see `Drop.afterEnd`).
    func remove(sid: UInt64, admissionKey: PeerKey?, now: NIODeadline) {
        let endedAttempt = admissionKey.map { halfOpen.removeValue(forKey: $0) != nil } ?? false
        let ended = sessions.removeValue(forKey: sid) != nil
        budget.add(sessions: ended ? -1 : 0, halfOpen: endedAttempt ? -1 : 0)
        if role == .listener { recentlyEnded.insert(sid, now: now) }
    }

    /// The socket closed: every session is gone at once.
    func removeAll() {
        budget.add(sessions: -sessions.count, halfOpen: -halfOpen.count)
        sessions.removeAll()
        halfOpen.removeAll()
    }

    /// Times the per-source table was copied to take a token (tests: 0).
    var sourceTableCopies: Int { admission.rateLimiter.sharedMutations }

    // MARK: Datagrams

    /// What to do with a datagram from `address`, counted.
    func route(_ datagram: ByteBuffer, from address: SocketAddress, now: NIODeadline) -> Verdict {
        counters.datagramsReceived += 1
        var payload = datagram
        let header: GUEHeader
        do {
            header = try GUEHeader.parse(from: &payload, mode: mode)
        } catch {
            counters.droppedMalformed += 1
            return .drop(.malformed(error == .modeMismatch ? .modeMismatch(listenerIsSecure: mode == .secure) : nil))
        }
        return route(header: header, payload: payload, from: address, now: now)
    }

    /// As `route(_:from:now:)`, for a datagram whose GUE header is parsed already (not counted
    /// as received again).
    func route(header: GUEHeader, payload: ByteBuffer, from address: SocketAddress, now: NIODeadline) -> Verdict {
        // 1. D names a local session: that session, whatever the source address.
        if let destination = header.destinationSID {
            if let handle = sessions[destination] { return .deliver(handle, header, payload) }
            if workers > 1, role == .listener {
                let owner = SessionID.worker(of: destination)
                if owner != worker, owner < workers {
                    counters.misroutedDatagrams += 1
                    return .handOver(toWorker: owner, header, payload)
                }
            }
            // Without S it is no new attempt (a replayed ClientHello carries S: admission answers it).
            if header.sourceSID == nil, recentlyEnded.contains(destination, now: now) {
                counters.datagramsAfterEnd += 1
                return .drop(.afterEnd)
            }
        }
        // 2. S present: a new-session attempt keyed by (address, port, S).
        guard role == .listener, let source = header.sourceSID,
              let bytes = IPAddressBytes(from: address), let port = address.port else {
            counters.droppedUnknownSession += 1
            return .drop(.unknownSession)
        }
        let key = PeerKey(address: bytes, port: UInt16(truncatingIfNeeded: port), sid: source)
        if let sid = halfOpen[key], let handle = sessions[sid] { return .deliver(handle, header, payload) }
        guard accepting else {
            counters.droppedOverLimit += 1
            return .drop(.overLimit(nil))
        }
        switch mode {
        case .secure: return admitSecure(header: header, payload: payload, key: key, from: address, now: now)
        case .plain: return admitPlain(payload: payload, key: key, from: address, now: now)
        }
    }

    private func admitSecure(header: GUEHeader, payload: ByteBuffer, key: PeerKey, from address: SocketAddress,
                             now: NIODeadline) -> Verdict {
        guard let dtlsContext, let summary = DTLSDatagramSummary.scan(payload), summary.isClientHello else {
            return badAttempt(.notAClientHello)
        }
        let admission = self.admission
        admission.keys.rotateIfNeeded(now: now)
        let derivedSID = SessionID.onWorker(admission.keys.derivedSID(for: key), worker: worker, of: workers)
        // A D that is not the SID we would derive now means a stale attempt: cookie it again.
        let destinationCurrent = header.destinationSID == derivedSID
        let acceptable = destinationCurrent ? admission.keys.acceptableCookies(for: key) : []
        let mtu = parameters.pathMTU - (address.isIPv4OrMapped ? 20 : 40) - 8 - 24
        let udpPayloadBytes = header.encodedLength + payload.readableBytes
        let withoutCookie = admission.cookieless.admitsWithoutCookie(
            summary, udpPayloadBytes: udpPayloadBytes, halfOpen: budget.halfOpen, now: now,
            sourceAllows: { admission.rateLimiter.allow(key.address, now: now) })
        let result = dtlsContext.listen(datagram: payload, cookieToIssue: admission.keys.cookieToIssue(for: key),
                                        acceptableCookies: acceptable, requireCookie: !withoutCookie, mtu: mtu, now: now)
        switch result {
        case .helloVerifyRequest(let request):
            return helloVerifyRequest(request, derivedSID: derivedSID, key: key, refused: nil)
        case .dropped(let reason):
            return badAttempt(.unusableClientHello(reason))
        case .accepted(let connection):
            // Limits first: a refused attempt must not burn its (address, port, S) in the replay cache.
            // A cookieless admission has taken its source's token already.
            if let limit = limitReached(key: key, chargingSource: !withoutCookie, now: now)
                ?? (sessions[derivedSID] == nil ? nil : .sessionExists) {
                counters.droppedOverLimit += 1
                return .drop(.overLimit(limit))
            }
            guard admission.admitted.insertIfNew(key, now: now) else {
                // A captured ClientHello+cookie replayed: never a second session from it.
                counters.replayedAttempts += 1
                if case .helloVerifyRequest(let request) = dtlsContext.listen(
                    datagram: payload, cookieToIssue: admission.keys.cookieToIssue(for: key),
                    acceptableCookies: [], mtu: mtu, now: now) {
                    return helloVerifyRequest(request, derivedSID: derivedSID, key: key, refused: .replayed)
                }
                return .drop(.replayed)
            }
            if withoutCookie { counters.cookielessAdmissions += 1 }
            let session = TOUSession.accept(dtls: connection, localSID: derivedSID, remoteSID: key.sid,
                                            peer: address, parameters: parameters,
                                            unprovenBytesReceived: withoutCookie ? udpPayloadBytes : nil, now: now)
            return .newSession(session, admissionKey: key)
        }
    }

    private func admitPlain(payload: ByteBuffer, key: PeerKey, from address: SocketAddress,
                            now: NIODeadline) -> Verdict {
        guard let syn = try? TCPSegment.parse(payload, checksum: .addressFree),
              syn.flags.contains(.syn), !syn.flags.contains(.ack) else {
            return badAttempt(.notASYN)
        }
        if let limit = limitReached(key: key, now: now) {
            counters.droppedOverLimit += 1
            return .drop(.overLimit(limit))
        }
        var localSID = SessionID.onWorker(SessionID.random(), worker: worker, of: workers)
        while sessions[localSID] != nil { localSID = SessionID.onWorker(SessionID.random(), worker: worker, of: workers) }
        guard let session = TOUSession.acceptPlain(syn: syn, localSID: localSID, remoteSID: key.sid,
                                                   peer: address, parameters: parameters, now: now) else {
            return badAttempt(.unusableSYN)
        }
        return .newSession(session, admissionKey: key)
    }

    private func badAttempt(_ refusal: Refusal) -> Verdict {
        counters.droppedBadAttempt += 1
        return .drop(.badAttempt(refusal))
    }

    private func helloVerifyRequest(_ request: ByteBuffer, derivedSID: UInt64, key: PeerKey,
                                    refused: Refusal?) -> Verdict {
        counters.helloVerifyRequestsSent += 1
        let header = GUEHeader.secure(source: derivedSID, destination: key.sid)
        var datagram = ByteBufferAllocator().buffer(capacity: header.encodedLength + request.readableBytes)
        header.write(into: &datagram)
        datagram.writeImmutableBuffer(request)
        return .reply(datagram, refused: refused)
    }

    /// Which admission limit refuses a new session, or nil when it may start.
    private func limitReached(key: PeerKey, chargingSource: Bool = true, now: NIODeadline) -> Refusal? {
        if budget.halfOpen >= maximumHalfOpenSessions { return .halfOpenLimit(maximumHalfOpenSessions) }
        if budget.sessions >= maximumSessions { return .sessionLimit(maximumSessions) }
        if chargingSource, !admission.rateLimiter.allow(key.address, now: now) { return .sourceRate }
        return nil
    }
}
