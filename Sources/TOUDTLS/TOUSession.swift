import DTLS
import DequeModule
import NIOCore
import TCPEngine
import TOUWire

/// What a session tells the layer above it (the connection's async API).
enum SessionEvent: Equatable {
    case established
    case readable
    case writable
    case peerFinished
    /// The session is over; `nil` means it closed cleanly under the wire format's closing rules.
    case finished(TOUError?)
}

/// The parts of the configuration a session needs, fixed at creation.
struct SessionParameters {
    var security: TOUConfiguration.Security
    var pathMTU: Int
    var handshakeTimeout: TimeAmount
    var idleTimeout: TimeAmount
    var receiveBufferSize: Int
    var sendBufferSize: Int
    var noDelay: Bool
    var congestionControl: TCPCongestionControlAlgorithm
    var userTimeout: TimeAmount?
    var keepAlive: TCPKeepAlive?
    /// The wire format's "Fast setup" (padded ClientHello, SYN after the initiator's Finished with
    /// data on it, the target answering from SYN-RECEIVED). Off reproduces the earlier sequence,
    /// SYN after the whole DTLS handshake, which a peer may still use (interop tests).
    var fastSetup = true

    init(_ configuration: TOUConfiguration) {
        security = configuration.security
        pathMTU = configuration.pathMTU
        handshakeTimeout = configuration.handshakeTimeout
        idleTimeout = configuration.idleTimeout
        receiveBufferSize = configuration.receiveBufferSize
        sendBufferSize = configuration.sendBufferSize
        noDelay = configuration.noDelay
        userTimeout = configuration.userTimeout > .zero ? configuration.userTimeout : nil
        keepAlive = configuration.tcpKeepAlive
        switch configuration.congestionControl {
        case .newReno: congestionControl = .newReno
        case .cubic: congestionControl = .cubic
        }
    }
}

/// One TOU connection, sans-IO: one DTLS association carrying one TCP connection under a pair of
/// session IDs. The endpoint feeds it datagrams and time and sends what `pollDatagram` returns.
///
/// `@exclusivity(unchecked)` marks the stored properties touched for every datagram: no access
/// to them overlaps an inout access (the debug-build checks found none), and the runtime checks
/// took about 5% of a bulk receiver's CPU (perf: their share fell from 9.6% to 4.8%).
final class TOUSession {
    enum Role { case initiator, target }

    let role: Role
    let localSID: UInt64
    @exclusivity(unchecked) private(set) var remoteSID: UInt64?
    /// Once the initiator has processed a ServerHello (plain: SYN-ACK) the target's SID is fixed.
    @exclusivity(unchecked) private var remoteSIDLocked = false
    @exclusivity(unchecked) private(set) var peerAddress: SocketAddress
    private let parameters: SessionParameters
    private let ipHeaderLength: Int
    private let innerRemotePort: UInt16

    @exclusivity(unchecked) private var dtls: DTLSConnection?
    /// Initiator: what the application gave `connect` to send first, until TCP starts.
    private var initialData: ByteBuffer?
    @exclusivity(unchecked) private(set) var tcp: TCPConnection?

    @exclusivity(unchecked) private var outbound = OutboundQueue()
    /// The pump stopped after filling a run of datagrams so it can leave before more is
    /// encrypted; the endpoint sends what is queued and pumps again.
    @exclusivity(unchecked) private(set) var transmitPaused = false
    /// Bytes a data record adds to its plaintext, known once the handshake is done.
    @exclusivity(unchecked) private var dataRecordOverhead = 0
    @exclusivity(unchecked) private var events: Deque<SessionEvent> = []
    private let allocator = ByteBufferAllocator()

    @exclusivity(unchecked) private(set) var isFinished = false
    private(set) var finishError: TOUError?
    @exclusivity(unchecked) private var handshakeDeadline: NIODeadline?
    /// The shortened TIME-WAIT of the wire format's closing rules.
    @exclusivity(unchecked) private var lingerDeadline: NIODeadline?
    @exclusivity(unchecked) private var lastReceived: NIODeadline
    @exclusivity(unchecked) private var peerCloseNotifyReceived = false
    @exclusivity(unchecked) private var tcpClosedNormally = false
    @exclusivity(unchecked) private var establishedReported = false
    @exclusivity(unchecked) private(set) var droppedDatagrams = 0
    @exclusivity(unchecked) private(set) var malformedSegments = 0
    /// A peer address learnt from an authenticated datagram, not yet shown to be live.
    @exclusivity(unchecked) private var unvalidatedPath: UnvalidatedPath?
    /// One past the highest sequence number sent: ACKs beyond what was sent before a move prove the new path.
    @exclusivity(unchecked) private var highestSequenceSent: UInt32?
    private(set) var addressChanges = 0
    private(set) var amplificationLimitedDatagrams = 0

    /// A target admitted without a cookie, until the initiator's Finished verifies: the UDP payload
    /// bytes it received from the initiator and sent back, sent held to at most 3x received.
    @exclusivity(unchecked) private var unprovenAttempt: (received: Int, sent: Int)?
    /// The datagram at the head of the queue waits for more allowance.
    private var holdingForAllowance = false
    /// Largest sent / received ratio while unproven, for the listener's report.
    private(set) var largestAmplification = 0.0

    private struct UnvalidatedPath {
        var validationPoint: UInt32
        var bytesReceived: Int
        var bytesSent = 0
    }
    /// Everything this session refused: wrong SIDs, records DTLS rejected, undecodable segments.
    var droppedCount: Int { droppedDatagrams + malformedSegments + (dtls?.droppedRecords ?? 0) }

    private init(role: Role, localSID: UInt64, remoteSID: UInt64?, peer: SocketAddress,
                 parameters: SessionParameters, innerRemotePort: UInt16, now: NIODeadline) {
        self.role = role
        self.localSID = localSID
        self.remoteSID = remoteSID
        self.peerAddress = peer
        self.parameters = parameters
        self.ipHeaderLength = peer.isIPv4OrMapped ? 20 : 40
        self.innerRemotePort = innerRemotePort
        self.handshakeDeadline = now + parameters.handshakeTimeout
        self.lastReceived = now
    }

    // MARK: Creation

    /// A new connection attempt with a fresh SID (secure: starts the DTLS handshake; plain: sends the SYN).
    static func initiate(context: DTLSContext?, serverName: String, peer: SocketAddress,
                         parameters: SessionParameters, innerRemotePort: UInt16,
                         resuming saved: DTLSSavedSession? = nil, initialData: ByteBuffer? = nil,
                         now: NIODeadline) throws(TOUError) -> TOUSession {
        let session = TOUSession(role: .initiator, localSID: SessionID.random(), remoteSID: nil, peer: peer,
                                 parameters: parameters, innerRemotePort: innerRemotePort, now: now)
        if let initialData, initialData.readableBytes > 0 { session.initialData = initialData }
        switch parameters.security {
        case .dtls:
            guard let context else { throw .invalidConfiguration("DTLS session without a DTLS context") }
            do {
                session.dtls = try DTLSConnection(client: context, serverName: serverName,
                                                  mtu: session.handshakeMTU, resuming: saved)
            } catch {
                throw TOUError(error)
            }
            session.dtls?.startHandshake(now: now)
        case .plain:
            session.startTCP(now: now)
        }
        session.pump(now: now)
        return session
    }

    /// A target session for a ClientHello the endpoint admitted: with a valid cookie, or without
    /// one, in which case `unprovenBytesReceived` is the ClientHello datagram's UDP payload size and
    /// the anti-amplification limit holds until the initiator's Finished verifies.
    static func accept(dtls: DTLSConnection, localSID: UInt64, remoteSID: UInt64, peer: SocketAddress,
                       parameters: SessionParameters, unprovenBytesReceived: Int? = nil,
                       now: NIODeadline) -> TOUSession {
        let session = TOUSession(role: .target, localSID: localSID, remoteSID: remoteSID, peer: peer,
                                 parameters: parameters, innerRemotePort: 0, now: now)
        session.dtls = dtls
        session.unprovenAttempt = unprovenBytesReceived.map { (received: $0, sent: 0) }
        session.pump(now: now)
        return session
    }

    /// A plain-mode target session from a SYN (there is no cookie in plain mode).
    static func acceptPlain(syn: TCPSegment, localSID: UInt64, remoteSID: UInt64, peer: SocketAddress,
                            parameters: SessionParameters, now: NIODeadline) -> TOUSession? {
        let session = TOUSession(role: .target, localSID: localSID, remoteSID: remoteSID, peer: peer,
                                 parameters: parameters, innerRemotePort: 0, now: now)
        guard let tcp = TCPConnection.accept(syn: syn, configuration: session.tcpConfiguration(),
                                             initialSequenceNumber: SessionID.randomISN(), now: now) else {
            return nil
        }
        session.tcp = tcp
        session.pump(now: now)
        return session
    }

    // MARK: Sizes

    /// DTLS MTU = path MTU - IP header - UDP - the largest GUE header (T+S+D).
    var handshakeMTU: Int { parameters.pathMTU - ipHeaderLength - 8 - 24 }

    /// MSS so that a full segment never makes a datagram larger than the path MTU (wire format, "MSS").
    var maximumSegmentSize: Int {
        switch parameters.security {
        case .plain:
            return parameters.pathMTU - ipHeaderLength - 8 - 12 - 20
        case .dtls:
            let recordOverhead = dtls?.recordOverhead ?? (13 + 24)
            return parameters.pathMTU - ipHeaderLength - 8 - 16 - recordOverhead - 20
        }
    }

    private func tcpConfiguration() -> TCPConfiguration {
        var configuration = TCPConfiguration(maximumSegmentSize: maximumSegmentSize)
        configuration.receiveBufferSize = parameters.receiveBufferSize
        configuration.sendBufferSize = parameters.sendBufferSize
        configuration.noDelay = parameters.noDelay
        configuration.congestionControl = parameters.congestionControl
        configuration.userTimeout = parameters.userTimeout
        configuration.keepAlive = parameters.keepAlive
        // Data on the SYN needs no cookie here: every segment is authenticated and replay-protected.
        configuration.fastOpen = parameters.security == .dtls && parameters.fastSetup
        return configuration
    }

    private func startTCP(now: NIODeadline) {
        tcp = TCPConnection.connect(localPort: SessionID.randomEphemeralPort(), remotePort: innerRemotePort,
                                    configuration: tcpConfiguration(),
                                    initialSequenceNumber: SessionID.randomISN(), now: now)
        // The application's first bytes ride on the SYN (as much as it holds; the rest follows).
        if let data = initialData {
            initialData = nil
            _ = tcp?.write(data)
        }
    }

    // MARK: Network side

    /// A datagram the endpoint routed here, with its GUE header already parsed off. Only takes
    /// it in: replies (ACKs, new data) wait for `pump`, so a batch of datagrams gets one answer.
    func receive(header: GUEHeader, payload: ByteBuffer, from address: SocketAddress, now: NIODeadline) {
        guard !isFinished else { return }
        switch parameters.security {
        case .dtls:
            guard acceptSourceSID(header.sourceSID, answersHello: Self.serverHelloKind(payload)) else {
                droppedDatagrams += 1
                return
            }
            let droppedBefore = dtls?.droppedRecords ?? 0
            let datagramBytes = header.encodedLength + payload.readableBytes
            if unprovenAttempt != nil, address == peerAddress { unprovenAttempt?.received += datagramBytes }
            dtls?.receiveDatagram(payload, now: now)
            learnAddress(address, datagramBytes: datagramBytes)
            // Forged datagrams naming our SID must not keep a dead session from idling out.
            if (dtls?.droppedRecords ?? 0) == droppedBefore { lastReceived = now }
        case .plain:
            let segment: TCPSegment
            do {
                segment = try TCPSegment.parse(payload, checksum: .addressFree)
            } catch {
                malformedSegments += 1
                return
            }
            let kind: HelloKind? = segment.flags.contains(.syn) ? .final : nil
            guard acceptSourceSID(header.sourceSID, answersHello: kind) else {
                droppedDatagrams += 1
                return
            }
            deliver(segment, now: now)
            lastReceived = now
        }
        absorb(now: now)
    }

    private enum HelloKind { case provisional, final }

    /// The initiator learns the target's SID from HelloVerifyRequest (may change) and ServerHello (final).
    private func acceptSourceSID(_ source: UInt64?, answersHello kind: HelloKind?) -> Bool {
        guard let source else { return true }
        if role == .target || remoteSIDLocked {
            return source == remoteSID
        }
        switch kind {
        case .provisional:
            remoteSID = source
        case .final:
            remoteSID = source
            remoteSIDLocked = true
        case nil:
            // A handshake datagram that answers nothing we know yet (e.g. a later flight) must match.
            return remoteSID == nil || source == remoteSID
        }
        return true
    }

    /// Address learning (wire format): only an established session moves, and only on a datagram
    /// whose record authenticated and advanced the receive window, so replays never move it.
    private func learnAddress(_ address: SocketAddress, datagramBytes: Int) {
        if address != peerAddress, establishedReported, dtls?.lastDatagramAdvancedReceiveWindow == true {
            peerAddress = address
            addressChanges += 1
            tcp?.pathChanged()
            unvalidatedPath = UnvalidatedPath(validationPoint: highestSequenceSent ?? 0, bytesReceived: 0)
        }
        if address == peerAddress, unvalidatedPath != nil {
            unvalidatedPath?.bytesReceived += datagramBytes
        }
    }

    /// The new path is live once the peer acknowledges data first sent after the move.
    private func checkPathValidation(_ segment: TCPSegment) {
        guard let path = unvalidatedPath, segment.flags.contains(.ack) else { return }
        if Int32(bitPattern: segment.acknowledgmentNumber &- path.validationPoint) > 0 {
            unvalidatedPath = nil
        }
    }

    /// Looks at the first record of a cleartext handshake datagram: HelloVerifyRequest (3) or ServerHello (2).
    private static func serverHelloKind(_ payload: ByteBuffer) -> HelloKind? {
        let start = payload.readerIndex
        guard payload.readableBytes > 13,
              payload.getInteger(at: start, as: UInt8.self) == 22,
              payload.getInteger(at: start + 3, as: UInt16.self) == 0,
              let type = payload.getInteger(at: start + 13, as: UInt8.self) else { return nil }
        switch type {
        case 3: return .provisional
        case 2: return .final
        default: return nil
        }
    }

    /// The next run of framed datagrams to send to `peerAddress`.
    func pollRun() -> OutboundQueue.Run? {
        if unprovenAttempt != nil { return pollUnprovenRun() }
        guard unvalidatedPath != nil else { return outbound.pollRun() }
        // Judged one datagram at a time: at most three times what the unproven address sent us;
        // TCP resends what is held back.
        while let datagram = outbound.pollDatagram() {
            let size = datagram.readableBytes
            if let path = unvalidatedPath, path.bytesSent + size > 3 * path.bytesReceived {
                amplificationLimitedDatagrams += 1
                continue
            }
            unvalidatedPath?.bytesSent += size
            return .single(datagram)
        }
        return nil
    }

    /// Anti-amplification before the initiator has shown it receives at its address: what does not
    /// fit 3x what it sent waits (not dropped: a handshake flight has no other way to get there)
    /// until its retransmission adds to the allowance.
    private func pollUnprovenRun() -> OutboundQueue.Run? {
        guard let attempt = unprovenAttempt, let datagram = outbound.pollDatagram() else { return nil }
        guard attempt.sent + datagram.readableBytes <= 3 * attempt.received else {
            outbound.pushFront(.single(datagram))
            // Counted once per datagram held, however often it is looked at again.
            if !holdingForAllowance { amplificationLimitedDatagrams += 1 }
            holdingForAllowance = true
            return nil
        }
        holdingForAllowance = false
        unprovenAttempt?.sent += datagram.readableBytes
        largestAmplification = max(largestAmplification,
                                   Double(attempt.sent + datagram.readableBytes) / Double(max(1, attempt.received)))
        return .single(datagram)
    }

    /// The next framed datagram, one at a time (runs taken apart).
    func pollDatagram() -> ByteBuffer? {
        guard var run = pollRun() else { return nil }
        let first = run.removeFirst()
        if run.count > 0 { outbound.pushFront(run) }
        return first
    }

    func pollEvent() -> SessionEvent? {
        events.popFirst()
    }

    var nextDeadline: NIODeadline? {
        var deadline = handshakeDeadline
        func consider(_ candidate: NIODeadline?) {
            guard let candidate else { return }
            deadline = deadline.map { min($0, candidate) } ?? candidate
        }
        if isFinished { return nil }
        consider(lingerDeadline)
        if parameters.idleTimeout > .zero { consider(lastReceived + parameters.idleTimeout) }
        consider(dtls?.nextDeadline)
        consider(tcp.nextDeadlineInPlace())
        return deadline
    }

    func handleTimeout(now: NIODeadline) {
        guard !isFinished else { return }
        if let handshakeDeadline, now >= handshakeDeadline {
            fail(.timedOut("no handshake with the peer within \(parameters.handshakeTimeout.seconds) s"))
            return
        }
        if parameters.idleTimeout > .zero, now >= lastReceived + parameters.idleTimeout {
            fail(.timedOut("nothing received from the peer for \(parameters.idleTimeout.seconds) s"))
            return
        }
        if let lingerDeadline, now >= lingerDeadline {
            sendCloseNotifyAndFinish()
            return
        }
        if let deadline = dtls?.nextDeadline, now >= deadline {
            dtls?.handleTimeout(now: now)
        }
        if let deadline = tcp.nextDeadlineInPlace(), now >= deadline {
            tcp?.handleTimeout(now: now)
        }
        pump(now: now)
    }

    // MARK: Application side

    var isEstablished: Bool { establishedReported }

    /// A target still in its handshake answers a read at once, not after its application acts:
    /// its Finished and SYN-ACK go ahead of anything the application does with the connection
    /// (a refusal's reset included).
    var answersAtOnce: Bool { role == .target && (tcp == nil || tcp?.state == .synReceived) }

    /// A batch of datagrams has been taken in: the DTLS connection lets go of the rest of its
    /// receive arena (see `DTLSConnection.releaseReceiveArena`).
    func endReceiveBatch() {
        dtls?.releaseReceiveArena()
    }

    /// Bounds the TCP window this session offers (see `TCPConnection.receiveWindowCap`).
    func limitReceiveWindow(to cap: Int) {
        if let current = tcp?.receiveWindowCap, current != cap { tcp?.receiveWindowCap = cap }
    }
    var peerCertificateSubject: String? { dtls?.peerCertificateSubject }
    /// Whether the DTLS handshake resumed a saved session (abbreviated, no certificate).
    var isResumed: Bool { dtls?.isResumed ?? false }
    /// Initiator, after the handshake: the session to offer next time, if the target issued a ticket.
    var resumableSession: DTLSSavedSession? { dtls?.resumableSession }
    /// Why a saved session given to `initiate` was not offered.
    var resumptionRefusal: String? { dtls?.resumptionRefusal }
    var negotiatedCipherSuite: String? { dtls?.negotiatedCipherSuite }
    /// OpenSSL's object was freed after both handshakes (see `DTLSConnection.releaseHandshakeState`).
    var handshakeStateReleased: Bool { dtls?.handshakeStateReleased ?? false }
    var readableBytes: Int { tcp?.readableBytes ?? 0 }

    /// Queues as much of `data` as the send buffer takes; returns the number of bytes taken.
    /// `transmit: false` leaves the sending to a later `pump` (a batch of writes, then one pump).
    func write(_ data: ByteBuffer, now: NIODeadline, transmit: Bool = true) -> Int {
        guard !isFinished, tcp != nil else { return 0 }
        let taken = tcp?.write(data) ?? 0
        if taken > 0, transmit { pump(now: now) }
        return taken
    }

    func read(maximumBytes: Int, now: NIODeadline) -> ByteBuffer? {
        let acknowledgmentWasDue = tcp?.acknowledgmentDue ?? false
        guard let data = tcp?.read(maximumBytes: maximumBytes) else { return nil }
        // Reading opens the window: announce it if it grew enough. An ACK that was due already
        // leaves with the answer that follows every arrival, perhaps on the reader's own reply.
        if !acknowledgmentWasDue, tcp?.acknowledgmentDue == true { pump(now: now) }
        return data
    }

    func finishWriting(now: NIODeadline) {
        guard !isFinished else { return }
        tcp?.finishWriting()
        pump(now: now)
    }

    /// Resets the connection and ends the session with `error`.
    func abort(now: NIODeadline, error: TOUError) {
        guard !isFinished else { return }
        fail(error)
    }

    var stats: TOUConnectionStats {
        var stats = TOUConnectionStats(tcp: tcp?.stats, droppedDatagrams: droppedDatagrams + (dtls?.droppedRecords ?? 0),
                                       malformedSegments: malformedSegments, cipherSuite: negotiatedCipherSuite)
        stats.addressChanges = addressChanges
        stats.amplificationLimitedDatagrams = amplificationLimitedDatagrams
        return stats
    }

    // MARK: The pump

    /// False from `takeIn` until the next `pump`.
    private(set) var pumpedSinceTakeIn = true

    /// Moves everything that can move: DTLS events and plaintext into TCP, TCP output into DTLS
    /// records and GUE datagrams, and the closing rules.
    func pump(now: NIODeadline) {
        pumpedSinceTakeIn = true
        absorb(now: now)
        // Handshake records first: the target's Finished goes ahead of its SYN-ACK in one flight.
        drainDTLS()
        driveTCP(now: now)
        applyClosingRules(now: now)
        drainDTLS()
    }

    /// DTLS events and decrypted segments into TCP; nothing is sent.
    private func absorb(now: NIODeadline) {
        if dtls != nil {
            while let event = dtls?.pollEvent() {
                switch event {
                case .handshakeCompleted:
                    dataRecordOverhead = dtls?.recordOverhead ?? 0
                    if role == .initiator, tcp == nil, !parameters.fastSetup { startTCP(now: now) }
                    // The initiator's Finished verified: it receives at its address.
                    unprovenAttempt = nil
                case .closeNotifyReceived:
                    peerCloseNotifyReceived = true
                case .failed(let error):
                    fail(TOUError(error))
                }
            }
            // DTLS False Start (RFC 7918): the initiator's SYN follows its Finished at once, in
            // the same flight, without waiting for the target's Finished.
            if parameters.fastSetup, role == .initiator, tcp == nil, !isFinished, let dtls, dtls.canWriteApplicationData {
                dataRecordOverhead = dtls.recordOverhead
                startTCP(now: now)
            }
            while !isFinished, let plaintext = dtls?.readApplicationData() {
                do {
                    let segment = try TCPSegment.parse(plaintext, checksum: .zero)
                    deliver(segment, now: now)
                } catch {
                    malformedSegments += 1
                }
            }
        }
    }

    private func deliver(_ segment: TCPSegment, now: NIODeadline) {
        checkPathValidation(segment)
        if tcp != nil {
            tcp?.receive(segment, now: now)
        } else if role == .target {
            // The first segment must be the SYN; anything else before it is dropped.
            if let connection = TCPConnection.accept(syn: segment, configuration: tcpConfiguration(),
                                                     initialSequenceNumber: SessionID.randomISN(), now: now) {
                tcp = connection
                // Both DTLS Finished messages have verified: the application gets the connection
                // now, reads the SYN's data and may answer before TCP's last ACK (fast open).
                if parameters.security == .dtls, parameters.fastSetup, !establishedReported {
                    establishedReported = true
                    events.append(.established)
                }
            } else {
                malformedSegments += 1
            }
        }
    }

    /// Takes in what `receive` brought and reports its events (data to read, the connection
    /// established), sending nothing: the endpoint lets the application act on them before it
    /// pumps, so that an answer or a FIN written at once carries the ACK.
    func takeIn(now: NIODeadline) {
        pumpedSinceTakeIn = false
        absorb(now: now)
        reportTCPEvents()
    }

    private func driveTCP(now: NIODeadline) {
        guard tcp != nil else { return }
        reportTCPEvents()
        transmitPaused = false
        while let segment = tcp?.pollTransmit(now: now) {
            send(segment)
            if outbound.completedRuns > 0 {
                transmitPaused = true
                break
            }
        }
    }

    private func reportTCPEvents() {
        while let event = tcp?.pollEvent() {
            switch event {
            case .connected:
                handshakeDeadline = nil
                // The peer acknowledged our SYN or SYN-ACK, which it could only open after both
                // Finished messages verified: no flight will be resent, and OpenSSL can go.
                dtls?.releaseHandshakeState()
                if !establishedReported {
                    establishedReported = true
                    events.append(.established)
                }
            case .readable:
                events.append(.readable)
            case .writable:
                events.append(.writable)
            case .peerFinished:
                events.append(.peerFinished)
            case .closed(let reason):
                switch reason {
                case .normal: tcpClosedNormally = true
                case .reset: fail(.connectionReset)
                case .timedOut: fail(.timedOut("the peer stopped acknowledging data"))
                case .userTimeout:
                    let milliseconds = (parameters.userTimeout?.nanoseconds ?? 0) / 1_000_000
                    let seconds = milliseconds % 1000 == 0 ? "\(milliseconds / 1000)" : "\(Double(milliseconds) / 1000)"
                    fail(.timedOut("the peer acknowledged nothing for \(seconds) s (the user timeout)"))
                case .aborted: break
                }
            }
        }
    }

    private func applyClosingRules(now: NIODeadline) {
        // `tcp` is read in place, not bound: binding copies the whole connection struct, a
        // memcpy of all its state on every pump.
        guard !isFinished, tcp != nil else {
            if peerCloseNotifyReceived && !isFinished {
                fail(.protocolError("the peer closed the DTLS session before any TCP connection"))
            }
            return
        }
        if peerCloseNotifyReceived {
            // The peer only says close_notify once it has our FIN and its own FIN is done.
            if tcp?.hasReceivedFIN == true {
                sendCloseNotifyAndFinish()
            } else {
                fail(.truncated)
            }
            return
        }
        if tcpClosedNormally {
            // Passive closer: our FIN is acknowledged last, so nothing is left to send or resend.
            sendCloseNotifyAndFinish()
            return
        }
        if tcp?.state == .timeWait && lingerDeadline == nil, let rto = tcp?.retransmissionTimeout {
            // Active closer: keep re-acknowledging a retransmitted FIN for a while, not 2*MSL.
            let threeRTO = rto * 3
            lingerDeadline = now + max(.seconds(2), threeRTO)
        }
    }

    private func sendCloseNotifyAndFinish() {
        guard !isFinished else { return }
        // Only reached with TCP running, so DTLS is up; it refuses a second close_notify itself.
        dtls?.sendCloseNotify()
        drainDTLS()
        isFinished = true
        events.append(.finished(nil))
    }

    private func fail(_ error: TOUError) {
        guard !isFinished else { return }
        if let state = tcp?.state, state != .closed, error != .connectionReset {
            // Tell the peer at once rather than letting it time out.
            tcp?.abort()
            while let segment = tcp?.pollTransmit(now: lastReceived) {
                send(segment)
            }
        }
        drainDTLS()
        isFinished = true
        finishError = error
        events.append(.finished(error))
    }

    // MARK: Framing

    private func send(_ segment: TCPSegment) {
        let end = segment.sequenceNumber &+ UInt32(truncatingIfNeeded: segment.sequenceLength)
        if highestSequenceSent.map({ Int32(bitPattern: end &- $0) > 0 }) ?? true {
            highestSequenceSent = end
        }
        switch parameters.security {
        case .dtls:
            guard let dtls, dtls.canWriteApplicationData else { return }
            let header = GUEHeader.secure(carryingHandshake: false, localSID: localSID, remoteSID: remoteSID)
            let size = header.encodedLength + dataRecordOverhead + segment.headerLength + segment.payload.readableBytes
            var failure: DTLSError?
            // The TCP header on the stack; encrypted with the payload straight into the run that
            // leaves as one GSO write.
            withUnsafeTemporaryAllocation(byteCount: TCPSegment.maximumHeaderLength, alignment: 8) { scratch in
                let tcpHeader = UnsafeRawBufferPointer(rebasing: scratch[..<segment.writeHeader(to: scratch.baseAddress!)])
                outbound.appendDatagram(size: size) { buffer in
                    let start = buffer.writerIndex
                    header.write(into: &buffer)
                    do throws(DTLSError) {
                        try dtls.writeApplicationData(header: tcpHeader, payload: segment.payload, appendingTo: &buffer)
                    } catch {
                        buffer.moveWriterIndex(to: start)
                        failure = error
                    }
                }
            }
            if let failure {
                fail(TOUError(failure))
                return
            }
            drainDTLS()
        case .plain:
            let header = GUEHeader.plain(synSet: segment.flags.contains(.syn), localSID: localSID, remoteSID: remoteSID)
            let size = header.encodedLength + segment.headerLength + segment.payload.readableBytes
            outbound.appendDatagram(size: size) { buffer in
                header.write(into: &buffer)
                segment.write(into: &buffer, checksum: .addressFree)
            }
        }
    }

    /// Frames what DTLS queued itself (handshake flights, alerts); data records never pass here.
    /// The initiator pads a ClientHello without a cookie to 1,200 bytes of UDP payload, so that a
    /// target answering it at once cannot be used to amplify more than 3x.
    private func drainDTLS() {
        while let datagram = dtls?.pollDatagram() {
            let summary = DTLSDatagramSummary.scan(datagram)
            let header = summary.map {
                GUEHeader.secure(carrying: $0, localSID: localSID, remoteSID: remoteSID)
            } ?? GUEHeader.secure(source: localSID, destination: remoteSID)
            let size = header.encodedLength + datagram.readableBytes
            let padding = parameters.fastSetup && role == .initiator && summary?.clientHelloHasCookie == false
                ? max(0, DTLSDatagramSummary.paddedClientHelloSize - size) : 0
            var framed = allocator.buffer(capacity: size + padding)
            header.write(into: &framed)
            framed.writeImmutableBuffer(datagram)
            framed.writeRepeatingByte(0, count: padding)
            outbound.append(framed)
        }
    }
}

extension TCPConnection {
    /// Whether the peer's FIN has arrived (so every byte of its stream is here).
    var hasReceivedFIN: Bool {
        switch state {
        case .closeWait, .lastAck, .closing, .timeWait, .closed: return true
        default: return false
        }
    }
}

extension TimeAmount {
    var seconds: Int64 { nanoseconds / 1_000_000_000 }
}

extension SocketAddress {
    /// IPv4, or IPv4 seen through a dual-stack socket as ::ffff:a.b.c.d.
    var isIPv4OrMapped: Bool { IPAddressBytes(from: self)?.isIPv4Mapped ?? false }
}

extension Optional<TCPConnection> {
    /// `nextDeadline` read through an inout access: `tcp?.nextDeadline` on the session's stored
    /// property copies the whole connection struct (three memcpys and a retain per buffer) before
    /// calling the getter, about 5% of a request/response process's CPU.
    fileprivate mutating func nextDeadlineInPlace() -> NIODeadline? {
        self?.nextDeadline
    }
}
