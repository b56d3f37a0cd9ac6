import CTOUOpenSSL
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// One sans-IO DTLS 1.2 session: datagrams and time in; datagrams, plaintext records and events
/// out. Confined to one event loop; not Sendable.
///
/// `@exclusivity(unchecked)` marks the stored properties touched for every datagram: no access
/// to them overlaps an inout access (the debug-build checks found none), and the runtime checks
/// took about 5% of a bulk receiver's CPU (perf: their share fell from 9.6% to 4.8%). What other
/// modules read is a getter over such storage: their direct reads of a stored property would check
/// it at run time all the same.
public final class DTLSConnection {
    private let handle: OpaquePointer
    private let context: DTLSContext
    private let serverName: String?
    private let allocator = ByteBufferAllocator()

    @exclusivity(unchecked) private var outgoing = CircularBuffer<ByteBuffer>(initialCapacity: 8)
    @exclusivity(unchecked) private var inbound = CircularBuffer<ByteBuffer>(initialCapacity: 8)
    @exclusivity(unchecked) private var events = CircularBuffer<DTLSEvent>(initialCapacity: 4)
    @exclusivity(unchecked) private var deadline: NIODeadline?
    @exclusivity(unchecked) private var closeSent = false
    @exclusivity(unchecked) private var closeReceived = false
    @exclusivity(unchecked) private var replayMirror = ReplayMirror()
    /// Protects application data once the handshake is done (nil before, or for a suite it lacks).
    @exclusivity(unchecked) private var records: RecordLayer?
    /// Application-data records of epoch 1 that arrived before our handshake completed (the
    /// peer finished first): opened by the record layer once it exists, so they pass its replay
    /// window like any other. OpenSSL never sees application data.
    private var early: [ByteBuffer] = []
    /// At most this many early records are held; more are dropped (TCP resends them).
    public static let maximumEarlyRecords = 8
    /// What is still asked of a connection whose OpenSSL object was freed (`releaseHandshakeState`).
    private struct Released {
        var peerCertificateSubject: String?
        var resumableSession: DTLSSavedSession?
    }
    private var released: Released?

    public var state: DTLSConnectionState { _state }
    @exclusivity(unchecked) private var _state: DTLSConnectionState = .handshaking
    /// Records dropped: undecodable headers, bad MAC, replays, too old.
    public var droppedRecords: Int { _droppedRecords }
    @exclusivity(unchecked) private var _droppedRecords: Int = 0
    /// Of `droppedRecords`: exact repeats of an application-data record already delivered.
    public var replayedRecords: Int { _replayedRecords }
    @exclusivity(unchecked) private var _replayedRecords: Int = 0
    /// Of `droppedRecords`: application-data records more than 64 behind the newest delivered.
    public var tooOldRecords: Int { _tooOldRecords }
    @exclusivity(unchecked) private var _tooOldRecords: Int = 0
    /// True if the last `receiveDatagram` delivered an authenticated epoch-1+ record whose
    /// sequence number is the highest seen so far (the condition for learning a new peer address).
    public var lastDatagramAdvancedReceiveWindow: Bool { _lastDatagramAdvancedReceiveWindow }
    @exclusivity(unchecked) private var _lastDatagramAdvancedReceiveWindow: Bool = false

    /// A client connection to `serverName`: a DNS name (verified against the certificate and sent
    /// as SNI) or an IP literal (verified against IP SANs, no SNI). `mtu` is the room for one
    /// DTLS datagram during the handshake. A `resuming` session made for the same name and trust
    /// is offered for an abbreviated handshake; `resumptionRefusal` says why one was not.
    public init(client context: DTLSContext, serverName: String, mtu: Int,
                resuming saved: DTLSSavedSession? = nil, now unixTime: Int64 = Int64(time(nil))) throws(DTLSError) {
        guard !context.isServer else { throw .invalidConfiguration("a client connection needs a client context") }
        guard let cMTU = Int32(exactly: mtu) else { throw .invalidConfiguration("MTU \(mtu) out of range") }
        var error = [CChar](repeating: 0, count: 512)
        guard let handle = tou_dtls_conn_new_client(context.handle, serverName, cMTU, &error, error.count) else {
            throw .invalidConfiguration(cString(error))
        }
        self.handle = handle
        self.context = context
        self.serverName = serverName
        if let saved {
            var reason = [CChar](repeating: 0, count: 512)
            let offered = if let decoded = saved.decoded {
                tou_dtls_conn_offer_decoded_session(handle, decoded.handle, unixTime, &reason, reason.count)
            } else {
                saved.bytes.withUnsafeBufferPointer {
                    tou_dtls_conn_offer_session(handle, $0.baseAddress, $0.count, unixTime, &reason, reason.count)
                }
            }
            if offered != 1 { resumptionRefusal = cString(reason) }
        }
    }

    /// Why the session passed to `init(client:...resuming:)` was not offered (then the handshake
    /// is a full one); nil if it was offered or none was given.
    public private(set) var resumptionRefusal: String?

    /// Whether the completed handshake resumed a session: abbreviated, no certificate sent.
    public var isResumed: Bool { tou_dtls_conn_session_reused(handle) == 1 }

    /// Frees OpenSSL's connection object once both sides are known to have completed the
    /// handshake (the caller's evidence: the peer acknowledged data it could only open after both
    /// Finished messages verified, as TCP's handshake does), keeping only the record layer: OpenSSL keeps its handshake buffer and state,
    /// about 40 KB, for the life of a DTLS connection in case a flight must be resent, and that was
    /// most of what an idle connection held. Afterwards the peer's alerts are opened here, and a
    /// late copy of a handshake flight is dropped and counted. What the connection still answers
    /// (suite, resumption, the peer's subject, the session to resume) is kept.
    public func releaseHandshakeState() {
        guard released == nil, state == .established, records != nil else { return }
        let kept = Released(peerCertificateSubject: peerCertificateSubject, resumableSession: resumableSession)
        guard tou_dtls_conn_release_handshake(handle) == 1 else { return }
        released = kept
        deadline = nil
    }

    /// Lets go of the unused rest of the memory full-size records are decrypted into (the
    /// plaintext already read out keeps its part), so that a connection gone quiet holds none.
    /// Call it at the end of a batch of datagrams, not after each.
    public func releaseReceiveArena() {
        records?.releaseArena()
    }

    /// True once `releaseHandshakeState` freed OpenSSL's object.
    public var handshakeStateReleased: Bool { released != nil }

    /// Client, after the handshake: the session to offer next time, if the server issued a ticket
    /// (nil after a resumption under the offered ticket: that session is still the one to keep).
    public var resumableSession: DTLSSavedSession? {
        if let released { return released.resumableSession }
        var expires: Int64 = 0
        // Asked for its size first: a session holds the server's certificate, of any size.
        let needed = tou_dtls_conn_export_session(handle, nil, 0, &expires)
        guard needed < 0, let serverName else { return nil }
        var bytes = [UInt8](repeating: 0, count: Int(-needed))
        let length = tou_dtls_conn_export_session(handle, &bytes, bytes.count, &expires)
        guard length > 0 else { return nil }
        // The live session serves the next offer as it is: no decode of what was just encoded.
        let live = tou_dtls_conn_live_session(handle).map(DecodedSavedSession.init(handle:))
        return DTLSSavedSession(bytes: Array(bytes[0..<length]), serverName: serverName, expires: expires,
                                decoded: live)
    }

    /// A server connection created by `DTLSContext.listen`, which already processed the ClientHello.
    init(acceptedHandle: OpaquePointer, context: DTLSContext, now: NIODeadline) {
        self.handle = acceptedHandle
        self.context = context
        self.serverName = nil
        if tou_dtls_conn_error_kind(handle) != Int32(TOU_DTLS_E_NONE) {
            fail()
        }
        drainOutput()
        updateDeadline(now: now)
    }

    deinit {
        tou_dtls_conn_free(handle)
    }

    /// Client: queues the ClientHello.
    public func startHandshake(now: NIODeadline) {
        guard state == .handshaking else { return }
        handle(step: tou_dtls_conn_start(handle))
        drainOutput()
        updateDeadline(now: now)
    }

    /// Feeds one received datagram: every DTLS record in it is processed in order. Records that do
    /// not parse, authenticate or pass the replay check are dropped and counted.
    public func receiveDatagram(_ datagram: ByteBuffer, now: NIODeadline) {
        _lastDatagramAdvancedReceiveWindow = false
        guard state != .failed, !closeReceived else { return }
        // Only records that went to OpenSSL can have queued output or moved its timer.
        var reachedOpenSSL = false
        datagram.withUnsafeReadableBytes { raw in
            var offset = 0
            // A zero where a record type would be starts padding (a padded ClientHello): the rest is ignored.
            while offset < raw.count, state != .failed, raw[offset] != 0 {
                let remaining = raw.count - offset
                guard remaining >= 13 else {
                    _droppedRecords += 1
                    break
                }
                let type = raw[offset]
                let length = Int(raw[offset + 11]) << 8 | Int(raw[offset + 12])
                guard length <= remaining - 13 else {
                    _droppedRecords += 1
                    break
                }
                let epoch = UInt16(raw[offset + 3]) << 8 | UInt16(raw[offset + 4])
                var sequence: UInt64 = 0
                for i in 5..<11 { sequence = sequence << 8 | UInt64(raw[offset + i]) }
                let record = UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + 13 + length)])
                offset += 13 + length
                // OpenSSL 3.0 fails the whole session on a protected record shorter than the AEAD
                // nonce + tag instead of discarding it; such a record can only be forged.
                let shortest = records?.shortestBody ?? Int(tou_dtls_conn_aead_expansion(handle))
                guard epoch == 0 || length >= shortest else {
                    _droppedRecords += 1
                    continue
                }
                // Only the four DTLS 1.2 content types, and never unprotected application data:
                // OpenSSL would treat such a record as fatal, which would let anyone kill a session.
                guard (20...23).contains(type), !(type == 23 && epoch == 0) else {
                    _droppedRecords += 1
                    continue
                }
                guard type == 23 else {
                    if released != nil {
                        // OpenSSL is gone: alerts are opened here; handshake records can only be
                        // a late copy of a flight both sides have finished with.
                        if type == 21, let records, epoch == records.epoch {
                            openAlert(record: record, with: records, sequence: sequence)
                        } else {
                            _droppedRecords += 1
                        }
                        continue
                    }
                    reachedOpenSSL = true
                    process(record: record, type: type)
                    continue
                }
                if let records, state != .handshaking {
                    if epoch == records.epoch {
                        open(record: record, with: records, sequence: sequence)
                    } else {
                        _droppedRecords += 1
                    }
                } else if epoch == 1, state == .handshaking, early.count < Self.maximumEarlyRecords {
                    early.append(ByteBuffer(bytes: record))
                } else {
                    _droppedRecords += 1
                }
            }
        }
        if reachedOpenSSL {
            startFalseStartIfReady()
            drainOutput()
            updateDeadline(now: now)
        }
    }

    /// A client whose Finished is out may protect data before the server's Finished arrives
    /// (RFC 7918: all our suites are ECDHE with an AEAD). The peer's records are still held
    /// until its Finished has verified.
    private func startFalseStartIfReady() {
        guard records == nil, state == .handshaking, tou_dtls_conn_can_false_start(handle) != 0 else { return }
        records = RecordLayer(connection: handle)
    }

    /// Whether `writeApplicationData` may be called: after the handshake, or for a client from
    /// its Finished on (DTLS False Start), until a close_notify has been sent.
    public var canWriteApplicationData: Bool {
        records != nil && !closeSent && state != .failed
    }

    /// Application data in the current epoch: the replay window is checked before the AEAD, and a
    /// record counts as delivered only once it authenticates.
    private func open(record: UnsafeRawBufferPointer, with records: RecordLayer, sequence: UInt64) {
        switch replayMirror.classify(epoch: records.epoch, sequence: sequence) {
        case .tooOld:
            _droppedRecords += 1
            _tooOldRecords += 1
        case .replay:
            _droppedRecords += 1
            _replayedRecords += 1
        case .unseen:
            guard let plaintext = records.open(record, allocator: allocator) else {
                _droppedRecords += 1
                if records.integrityLimitReached {
                    fail(.keyUsageLimitReached("\(records.failedOpens) records failed authentication, more than "
                                               + "the key may be exposed to; open a new connection"))
                }
                return
            }
            inbound.append(plaintext)
            if replayMirror.markDelivered(epoch: records.epoch, sequence: sequence) {
                _lastDatagramAdvancedReceiveWindow = true
            }
        }
    }

    /// An alert after `releaseHandshakeState`, checked against the same replay window as data:
    /// close_notify ends the peer's writing, a fatal alert fails the connection, warnings are ignored.
    private func openAlert(record: UnsafeRawBufferPointer, with records: RecordLayer, sequence: UInt64) {
        guard case .unseen = replayMirror.classify(epoch: records.epoch, sequence: sequence) else {
            _droppedRecords += 1
            return
        }
        guard let plaintext = records.open(record, allocator: allocator) else {
            _droppedRecords += 1
            return
        }
        _ = replayMirror.markDelivered(epoch: records.epoch, sequence: sequence)
        var body = plaintext
        guard body.readableBytes == 2, let level = body.readInteger(as: UInt8.self),
              let description = body.readInteger(as: UInt8.self) else {
            fail(.protocolError("an alert of \(plaintext.readableBytes) bytes; alerts have 2"))
            return
        }
        if description == 0 {
            closeReceived = true
            _state = .closed
            events.append(.closeNotifyReceived)
        } else if level == 2 {
            let name = tou_alert_description(Int32(description)).map { String(cString: $0) } ?? "\(description)"
            fail(.alertReceived("received fatal alert: \(name)"))
        }
    }

    /// Handshake, change_cipher_spec and alert records go to OpenSSL.
    private func process(record: UnsafeRawBufferPointer, type: UInt8) {
        // After the handshake a control record that changes nothing (no alert surfaced, no flight
        // answered) was discarded by OpenSSL: forged, replayed or a duplicate. Count it.
        let controlAfterHandshake = state != .handshaking
        let eventsBefore = events.count
        let outputBefore = tou_dtls_conn_out_count(handle)
        tou_dtls_conn_set_input(handle, record.baseAddress?.assumingMemoryBound(to: UInt8.self), record.count)
        defer { tou_dtls_conn_clear_input(handle) }
        // OpenSSL is never given application data, so a read hands over none; the scratch is
        // only where SSL_read would put it.
        withUnsafeTemporaryAllocation(byteCount: 16_384 + 256, alignment: 16) { scratch in
            while state != .failed {
                var length = 0
                let result = tou_dtls_conn_step(handle, scratch.baseAddress?.assumingMemoryBound(to: UInt8.self),
                                                scratch.count, &length)
                if result == Int32(TOU_DTLS_STEP_DATA) { continue }
                if result == Int32(TOU_DTLS_STEP_WANT) { break }
                handle(step: result)
            }
        }
        if controlAfterHandshake, state != .failed, events.count == eventsBefore,
           tou_dtls_conn_out_count(handle) == outputBefore {
            _droppedRecords += 1
        }
    }

    private func handle(step result: Int32) {
        switch result {
        case Int32(TOU_DTLS_STEP_HANDSHAKE_DONE):
            if state == .handshaking {
                // Our cipher list offers only the three AEADs the record layer has; without it
                // (a key expansion that failed) the session cannot carry data.
                guard let layer = records ?? RecordLayer(connection: handle) else {
                    fail(.protocolError("cannot set up the record layer for \(negotiatedCipherSuite ?? "the suite")"))
                    return
                }
                _state = .established
                records = layer
                events.append(.handshakeCompleted)
                openEarlyRecords(with: layer)
            }
        case Int32(TOU_DTLS_STEP_CLOSE_NOTIFY):
            closeReceived = true
            if state != .failed { _state = .closed }
            events.append(.closeNotifyReceived)
        case Int32(TOU_DTLS_STEP_FATAL):
            fail()
        default:
            break
        }
    }

    /// Early records in arrival order, as if they had arrived now.
    private func openEarlyRecords(with records: RecordLayer) {
        let held = early
        early = []
        for record in held {
            record.withUnsafeReadableBytes { raw in
                let epoch = UInt16(raw[3]) << 8 | UInt16(raw[4])
                let sequence = (5..<11).reduce(UInt64(0)) { $0 << 8 | UInt64(raw[$1]) }
                if epoch == records.epoch {
                    open(record: raw, with: records, sequence: sequence)
                } else {
                    _droppedRecords += 1
                }
            }
        }
    }

    private func fail(_ error: DTLSError) {
        guard state != .failed else { return }
        _state = .failed
        deadline = nil
        events.append(.failed(error))
    }

    private func fail() {
        guard state != .failed else { return }
        let message = String(cString: tou_dtls_conn_error_message(handle))
        let error: DTLSError
        switch Int(tou_dtls_conn_error_kind(handle)) {
        case TOU_DTLS_E_CONFIG: error = .invalidConfiguration(message)
        case TOU_DTLS_E_UNTRUSTED: error = .untrustedCertificate(message)
        case TOU_DTLS_E_NAME: error = .nameMismatch(expected: serverName ?? "", detail: message)
        case TOU_DTLS_E_NO_PEER_CERT: error = .peerCertificateMissing
        case TOU_DTLS_E_HANDSHAKE: error = .handshakeFailed(message)
        case TOU_DTLS_E_ALERT: error = .alertReceived(message)
        case TOU_DTLS_E_PIN: error = .pinMismatch(message)
        default: error = .protocolError(message)
        }
        fail(error)
    }

    /// Moves datagrams the shim queued (flights, alerts) to `outgoing`.
    private func drainOutput() {
        let count = tou_dtls_conn_out_count(handle)
        guard count > 0 else { return }
        for index in 0..<count {
            var length = 0
            guard let bytes = tou_dtls_conn_out_get(handle, index, &length), length > 0 else { continue }
            var buffer = allocator.buffer(capacity: length)
            buffer.writeBytes(UnsafeRawBufferPointer(start: bytes, count: length))
            outgoing.append(buffer)
        }
        tou_dtls_conn_out_reset(handle)
    }

    /// OpenSSL's DTLS timer reads its own clock, so the deadline is `now` plus the time OpenSSL
    /// says is left, and `handleTimeout` just lets OpenSSL check its own timer.
    private func updateDeadline(now: NIODeadline) {
        guard state != .failed else {
            deadline = nil
            return
        }
        var remaining: Int64 = 0
        if tou_dtls_conn_get_timeout(handle, &remaining) == 1 {
            deadline = now + .microseconds(remaining)
        } else {
            deadline = nil
        }
    }

    /// Next outgoing datagram: whole records; during the handshake it fits the MTU.
    public func pollDatagram() -> ByteBuffer? {
        outgoing.popFirst()
    }

    public func pollEvent() -> DTLSEvent? {
        events.popFirst()
    }

    /// Plaintext of one received application-data record, in arrival order.
    public func readApplicationData() -> ByteBuffer? {
        inbound.popFirst()
    }

    /// Encrypts `plaintext` (1...16,384 bytes) as exactly one record, queued as one datagram for
    /// `pollDatagram()`. Not limited by the handshake MTU: the caller sizes what it writes.
    public func writeApplicationData(_ plaintext: ByteBuffer) throws(DTLSError) {
        var record = allocator.buffer(capacity: plaintext.readableBytes + 64)
        try writeApplicationData(plaintext, appendingTo: &record)
        outgoing.append(record)
    }

    /// Encrypts `plaintext` (1...16,384 bytes) as exactly one record appended to `buffer` (for a
    /// caller that packs datagrams back to back); returns the record's length. On failure nothing
    /// is appended.
    @discardableResult
    public func writeApplicationData(_ plaintext: ByteBuffer, appendingTo buffer: inout ByteBuffer) throws(DTLSError) -> Int {
        try writeApplicationData(header: plaintext, payload: ByteBuffer(), appendingTo: &buffer)
    }

    /// Encrypts a TCP header and its payload as exactly one record appended to `buffer`, without
    /// joining them first; returns the record's length. On failure nothing is appended.
    @discardableResult
    public func writeApplicationData(header: ByteBuffer, payload: ByteBuffer,
                                     appendingTo buffer: inout ByteBuffer) throws(DTLSError) -> Int {
        try header.withUnsafeReadableBytes { header throws(DTLSError) in
            try writeApplicationData(header: header, payload: payload, appendingTo: &buffer)
        }
    }

    /// The same, with the header in memory of the caller's (its stack, say): no buffer per record.
    @discardableResult
    public func writeApplicationData(header: UnsafeRawBufferPointer, payload: ByteBuffer,
                                     appendingTo buffer: inout ByteBuffer) throws(DTLSError) -> Int {
        guard let records, canWriteApplicationData else {
            throw .protocolError("cannot write application data in state \(state)")
        }
        let length = header.count + payload.readableBytes
        guard (1...16_384).contains(length) else {
            throw .protocolError("plaintext of \(length) bytes; one record carries 1...16384")
        }
        return try payload.withUnsafeReadableBytes { second throws(DTLSError) in
            try seal(type: 23, header, second, with: records, appendingTo: &buffer)
        }
    }

    private func seal(type: UInt8, _ first: UnsafeRawBufferPointer,
                      _ second: UnsafeRawBufferPointer = .init(start: nil, count: 0),
                      with records: RecordLayer, appendingTo buffer: inout ByteBuffer) throws(DTLSError) -> Int {
        do {
            return try records.seal(type: type, first, second, appendingTo: &buffer)
        } catch {
            // A used-up key ends the session: nothing more may be sealed with it.
            if case .keyUsageLimitReached = error { fail(error) }
            throw error
        }
    }

    /// Tests only: lower the key's limits (AEAD usage in cipher blocks plus records, records that
    /// failed authentication), to reach them without 250 GB of data.
    func lowerKeyLimitsForTesting(usage: UInt64, failedOpens: UInt64) {
        records?.setLimits(usage: usage, failedOpens: failedOpens)
    }

    /// Tests only: queues an alert sealed by the record layer (no such alert is sent otherwise).
    func sendAlertForTesting(level: UInt8, description: UInt8) throws(DTLSError) {
        guard let records else { throw .protocolError("no record layer yet") }
        var alert = allocator.buffer(capacity: 2 + records.overhead)
        try withUnsafeBytes(of: (level, description)) { body throws(DTLSError) in
            _ = try seal(type: 21, body, with: records, appendingTo: &alert)
        }
        outgoing.append(alert)
    }

    /// Tests only: restart the epoch's counter at `sequence` (to reach the end of its space).
    func moveSequenceForTesting(to sequence: UInt64) {
        records?.moveSequence(to: sequence)
    }

    /// Tests only: the sequence number the next record of the epoch will carry.
    var nextSequenceForTesting: UInt64? { records?.nextSequence }

    /// True once the handshake is done: application data (and our close_notify) is then protected
    /// by our own record layer with OpenSSL's keys, never by SSL_write.
    public var protectsRecordsItself: Bool { records != nil }

    /// When the handshake retransmission timer wants `handleTimeout`; nil when it is not running.
    public var nextDeadline: NIODeadline? { deadline }

    /// Lets OpenSSL retransmit its last flight if its timer has expired (by its own clock).
    public func handleTimeout(now: NIODeadline) {
        guard state != .failed, deadline != nil else { return }
        handle(step: tou_dtls_conn_handle_timeout(handle))
        drainOutput()
        updateDeadline(now: now)
    }

    /// Queues a close_notify alert. Application data can no longer be written afterwards.
    public func sendCloseNotify() {
        guard state != .failed, !closeSent else { return }
        closeSent = true
        // Once our record layer writes the epoch, the alert continues its sequence numbers too.
        if let records {
            var alert = allocator.buffer(capacity: 2 + records.overhead)
            let closeNotify: (UInt8, UInt8) = (1, 0)  // warning, close_notify
            do throws(DTLSError) {
                try withUnsafeBytes(of: closeNotify) { body throws(DTLSError) in
                    _ = try seal(type: 21, body, with: records, appendingTo: &alert)
                }
                outgoing.append(alert)
                _state = .closed
            } catch {
                fail(error)
            }
            return
        }
        if tou_dtls_conn_shutdown(handle) < 0 {
            fail()
        } else if state != .handshaking {
            _state = .closed
        }
        drainOutput()
    }

    /// OpenSSL's name for the negotiated suite, e.g. "ECDHE-ECDSA-AES256-GCM-SHA384".
    public var negotiatedCipherSuite: String? {
        guard let name = tou_dtls_conn_cipher(handle) else { return nil }
        return String(cString: name)
    }

    /// Bytes a record adds to its plaintext: 13 + 24 (AES-GCM) or 13 + 16 (ChaCha20-Poly1305);
    /// 0 before the handshake.
    public var recordOverhead: Int {
        records?.overhead ?? 0
    }

    /// The peer certificate's subject in RFC 2253 form, e.g. "CN=localhost".
    public var peerCertificateSubject: String? {
        if let released { return released.peerCertificateSubject }
        var buffer = [CChar](repeating: 0, count: 512)
        guard tou_dtls_conn_peer_subject(handle, &buffer, buffer.count) == 1 else { return nil }
        return cString(buffer)
    }
}
