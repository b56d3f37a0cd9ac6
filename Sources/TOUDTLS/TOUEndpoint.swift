import DatagramIO
import DTLS
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import TCPEngine
import TOUWire

/// One UDP socket and its sessions. Demultiplexes by session ID (never by address), admits new
/// sessions statelessly until a valid cookie, and drives every session's timers. All mutable state
/// lives on `loop`; the public API hops here.
///
/// `@exclusivity(unchecked)` marks the stored properties touched for every datagram: no access
/// to them overlaps an inout access (the debug-build checks found none), and the runtime checks
/// took about 5% of a bulk receiver's CPU (perf: their share fell from 9.6% to 4.8%).
final class TOUEndpoint: @unchecked Sendable {
    enum Role { case client, listener }

    let loop: EventLoop
    let role: Role
    /// Client: many connections share the socket (`TOUClientEndpoint`), which is bound, not
    /// connected, and outlives each of them; otherwise it is one connection's and closes with it.
    let isShared: Bool
    /// Many peers at once: a listener, or a client endpoint its connections share. They read in
    /// bulk, share out the receive queue, and read more per wakeup as sessions add up.
    private let servesManyPeers: Bool
    let configuration: TOUConfiguration
    let parameters: SessionParameters
    let dtlsContext: DTLSContext?
    private var logger: Logger { configuration.logger }
    private var mode: TOUMode { configuration.security == .dtls ? .secure : .plain }

    /// The UDP socket, once open (SwiftNIO's channel or DatagramIO's socket, as the loop says).
    @exclusivity(unchecked) var socket: EndpointSocket?
    /// Task executor on `loop`, for callers that want their connection code there. Made on first
    /// use: the registry of executors keeps each loop for good, and TOUNIO's endpoints may run on
    /// loops of groups their users shut down.
    var taskExecutor: EventLoopTaskExecutor { EventLoopTaskExecutor.of(loop) }
    /// The session table and admission: what to do with each datagram.
    let demultiplexer: Demultiplexer<ConnectionCore>
    /// Client: the task awaiting `connect` was cancelled (see `cancelConnect`).
    private var connectCancelled = false
    /// Times the per-source table was copied to take a token (tests: 0).
    var sourceTableCopies: Int { demultiplexer.sourceTableCopies }
    /// Listener: refused and failed connection attempts worth a (rate-limited) log line.
    private var refusedAttempts = RefusedAttemptLog()
    private(set) var counters: TOUEndpointCounters {
        get { demultiplexer.counters }
        _modify { yield &demultiplexer.counters }
    }

    /// Listener: called with each connection that completed both handshakes.
    var onAccept: ((TOUConnection) -> Void)?
    /// Listener: no new sessions once closed; the socket closes when the last session ends.
    private var accepting: Bool {
        get { demultiplexer.accepting }
        set { demultiplexer.accepting = newValue }
    }
    private var closePromise: EventLoopPromise<Void>?
    @exclusivity(unchecked) private var inReadBatch = false
    @exclusivity(unchecked) private var needsFlush = false
    /// Listener: payload the socket's receive queue holds before it drops, shared out among the
    /// sessions as TCP windows so that together they cannot overflow it.
    private var receiveQueueBudget = 4 << 20
    private var windowShare: Int { receiveQueueBudget / max(1, demultiplexer.count) }
    /// Sessions that took datagrams in this read batch and have not answered yet.
    @exclusivity(unchecked) private var batchSessions: [ConnectionCore] = []
    @exclusivity(unchecked) private var datagramsInBatch = 0
    @exclusivity(unchecked) private var flushQueued = false
    /// About one GSO run: sessions answer at least this often while a read batch lasts.
    static let datagramsPerAnswer = 64

    /// A listener's workers, this one included, by index: where a datagram for another worker's
    /// session is handed. Set before the socket opens, never changed.
    var workers: [WeakEndpoint] = []

    /// Endpoints refer to their sibling workers weakly: the listener owns them all.
    struct WeakEndpoint {
        weak var endpoint: TOUEndpoint?
    }

    init(loop: EventLoop, role: Role, configuration: TOUConfiguration, dtlsContext: DTLSContext?,
         worker: Int = 0, of workerCount: Int = 1, budget: SessionBudget = SessionBudget(), shared: Bool = false) {
        self.loop = loop
        self.role = role
        self.isShared = role == .client && shared
        self.servesManyPeers = role == .listener || isShared
        self.readsPerWakeup = servesManyPeers ? 1 : 4
        self.receivesInBulk = servesManyPeers
        self.configuration = configuration
        self.parameters = SessionParameters(configuration)
        self.dtlsContext = dtlsContext
        self.demultiplexer = Demultiplexer(role: role == .client ? .client : .listener, configuration: configuration,
                                           parameters: parameters, dtlsContext: dtlsContext,
                                           worker: worker, of: workerCount, budget: budget)
    }

    var sessionCount: Int { demultiplexer.count }
    /// Sessions whose handshakes are still in progress.
    var halfOpenCount: Int { demultiplexer.halfOpenCount }

    // MARK: Client

    /// Starts a client session (the only one, unless the endpoint is shared); the promise
    /// completes once TCP is established.
    func startClientSession(serverName: String, peer: SocketAddress, innerRemotePort: UInt16,
                            resuming saved: TOUSavedSession? = nil, initialData: ByteBuffer? = nil,
                            promise: EventLoopPromise<TOUConnection>) {
        if isShared {
            guard accepting, socket != nil else {
                promise.fail(TOUError.closed)
                return
            }
        } else if connectCancelled {
            promise.fail(CancellationError())
            closeSocket()
            return
        }
        let now = NIODeadline.now()
        let session: TOUSession
        do {
            session = try TOUSession.initiate(context: dtlsContext, serverName: serverName, peer: peer,
                                              parameters: parameters, innerRemotePort: innerRemotePort,
                                              resuming: saved?.saved, initialData: initialData, now: now)
        } catch {
            promise.fail(error)
            if !isShared { closeSocket() }
            return
        }
        let core = ConnectionCore(session: session)
        core.connectPromise = promise
        demultiplexer.insert(core, sid: session.localSID)
        adaptReadsPerWakeup()
        drive(core, now: now)
    }

    /// The task awaiting `promise` in `connect` was cancelled: a handshake still in progress for
    /// it is abandoned (the session ends, the socket closes) and `promise` fails with
    /// `CancellationError`. A connection already established is left to its owner.
    func cancelConnect(_ promise: EventLoopPromise<TOUConnection>) {
        // The socket may still be opening: the session must then not start at all. (A shared
        // socket is open: the session started before this ran.)
        if !isShared { connectCancelled = true }
        promise.fail(CancellationError())
        let target = ObjectIdentifier(promise.futureResult)
        for core in Array(demultiplexer.handles) {
            guard let waiting = core.connectPromise, ObjectIdentifier(waiting.futureResult) == target else { continue }
            core.connectPromise = nil
            waiting.fail(CancellationError())
            let now = NIODeadline.now()
            core.session.abort(now: now, error: .closed)
            drive(core, now: now)
        }
    }

    // MARK: Datagrams in

    /// What the socket read: one datagram, or with `segmentSize` > 0 several the kernel joined.
    func datagramArrived(_ data: ByteBuffer, segmentSize: Int, from remoteAddress: SocketAddress) {
        beginReadBatch()
        // Read per datagram: a long batch answers (and sends) as it goes, and an ACK read later in
        // it may cover a segment sent after the batch began.
        let now = NIODeadline.now()
        guard segmentSize > 0, data.readableBytes > segmentSize else {
            receive(data, from: remoteAddress, now: now)
            return
        }
        // GRO: the kernel joined several datagrams from one source; all but the last are full size.
        counters.coalescedReads += 1
        bulkReceiveWanted = true
        var rest = data
        while rest.readableBytes > 0, let datagram = rest.readSlice(length: min(segmentSize, rest.readableBytes)) {
            receive(datagram, from: remoteAddress, now: now)
        }
    }

    private func receive(_ datagram: ByteBuffer, from remoteAddress: SocketAddress, now: NIODeadline) {
        act(on: demultiplexer.route(datagram, from: remoteAddress, now: now), from: remoteAddress, now: now)
    }

    /// A datagram another worker of this listener received for one of this worker's SIDs.
    private func receiveHandedOver(header: GUEHeader, payload: ByteBuffer, from remoteAddress: SocketAddress) {
        let now = NIODeadline.now()
        act(on: demultiplexer.route(header: header, payload: payload, from: remoteAddress, now: now),
            from: remoteAddress, now: now)
    }

    private func act(on verdict: Demultiplexer<ConnectionCore>.Verdict, from remoteAddress: SocketAddress,
                     now: NIODeadline) {
        switch verdict {
        case .deliver(let core, let header, let payload):
            deliver(header: header, payload: payload, from: remoteAddress, to: core, now: now)
        case .newSession(let session, let key):
            register(session, key: key, now: now)
        case .handOver(let worker, let header, let payload):
            // Without the steering program the kernel hashes by address, so a session whose client
            // moved reaches another worker: its own takes it, on its own loop.
            guard let owner = workers[worker].endpoint else { return }
            owner.loop.execute { owner.receiveHandedOver(header: header, payload: payload, from: remoteAddress) }
        case .reply(let datagram, let refusal):
            if let refusal { refused(remoteAddress, refusal.description, now: now) }
            emit(datagram, to: remoteAddress)
            flushIfOutsideReadBatch()
        case .drop(let drop):
            if let refusal = drop.refusal { refused(remoteAddress, refusal.description, now: now) }
        }
    }

    private func deliver(header: GUEHeader, payload: ByteBuffer, from address: SocketAddress,
                         to core: ConnectionCore, now: NIODeadline) {
        let droppedBefore = core.session.droppedCount
        core.session.receive(header: header, payload: payload, from: address, now: now)
        counters.droppedBySession += core.session.droppedCount - droppedBefore
        if inReadBatch {
            // Answer once per batch: one ACK for many segments, new data for all ACKs at once.
            if !core.awaitingBatchEnd {
                core.awaitingBatchEnd = true
                batchSessions.append(core)
            }
            datagramsInBatch += 1
            // A read can bring megabytes; a sender waiting that long for an ACK would stall.
            if datagramsInBatch >= Self.datagramsPerAnswer { answerBatch() }
        } else {
            core.session.pump(now: now)
            drive(core, now: now)
        }
    }

    /// One log line per refused attempt, rate-limited; nothing at all, not even the reason's text,
    /// unless the logger shows info (a flood of refused attempts costs no formatting).
    private func refused(_ address: SocketAddress, _ reason: @autoclosure () -> String, now: NIODeadline) {
        logAttempt(from: address, "refused", reason(), now: now)
    }

    private func logAttempt(from address: SocketAddress, _ outcome: String, _ reason: @autoclosure () -> String,
                            now: NIODeadline) {
        guard role == .listener, logger.logLevel <= .info, let bytes = IPAddressBytes(from: address) else { return }
        let reason = reason()
        guard let omitted = refusedAttempts.admit(address: bytes, port: UInt16(truncatingIfNeeded: address.port ?? 0),
                                                  reason: reason, now: now) else { return }
        let more = omitted > 0 ? " (\(omitted) more not logged)" : ""
        logger.info("connection attempt from \(address.ipAndPort) \(outcome): \(reason)\(more)")
    }

    private func register(_ session: TOUSession, key: PeerKey, now: NIODeadline) {
        let core = ConnectionCore(session: session)
        core.admissionKey = key
        demultiplexer.insert(core, sid: session.localSID, admissionKey: key)
        adaptReadsPerWakeup()
        logger.debug("new session attempt", metadata: ["sid": "\(session.localSID)", "peer": "\(session.peerAddress.ipAndPort)"])
        drive(core, now: now)
    }

    // MARK: Driving sessions

    /// After any input to a session: send its datagrams, hand its events on, re-arm its timer.
    func drive(_ core: ConnectionCore, now: NIODeadline) {
        let session = core.session
        if session.addressChanges != core.knownAddressChanges {
            core.knownAddressChanges = session.addressChanges
            core.peerAddress.withLockedValue { $0 = session.peerAddress }
            logger.info("peer address changed", metadata: ["sid": "\(session.localSID)", "peer": "\(session.peerAddress.ipAndPort)"])
        }
        sendAll(session, now: now)
        if session.largestAmplification > counters.largestAmplification {
            counters.largestAmplification = session.largestAmplification
        }
        while let event = session.pollEvent() {
            if event == .established { established(core) }
            if case .finished = event {
                // Flush before the application hears of it: it may exit the process at once,
                // and the close_notify or RST must be on the wire by then.
                sendQueued(session)
                flush()
            }
            core.handle(event, now: now)
            // Handling it may have produced output (a window update after a read, new data).
            sendAll(session, now: now)
        }
        if session.isFinished {
            // Events may have produced more output (a final ACK, close_notify).
            sendQueued(session)
            if !session.isEstablished, let error = session.finishError, error != .closed {
                // A handshake that failed (our close of the listener is no failure).
                logAttempt(from: session.peerAddress, "failed", "\(error)", now: now)
            }
            remove(core)
        } else {
            if servesManyPeers { session.limitReceiveWindow(to: windowShare) }
            core.completeCloseIfLingering()
            armTimer(core)
        }
        flushIfOutsideReadBatch()
    }

    private func established(_ core: ConnectionCore) {
        let connection = TOUConnection(core: core, endpoint: self)
        if let key = core.admissionKey {
            demultiplexer.established(admissionKey: key)
            core.admissionKey = nil
        }
        switch role {
        case .client:
            if let promise = core.connectPromise {
                core.connectPromise = nil
                promise.succeed(connection)
            }
        case .listener:
            counters.sessionsAccepted += 1
            onAccept?(connection)
        }
    }

    private func remove(_ core: ConnectionCore) {
        core.timer?.cancel()
        core.timer = nil
        demultiplexer.remove(sid: core.session.localSID, admissionKey: core.admissionKey, now: .now())
        adaptReadsPerWakeup()
        if !servesManyPeers || (!accepting && demultiplexer.count == 0) {
            // Let the final datagrams leave before the socket goes.
            flush()
            closeSocket()
        }
    }

    private func armTimer(_ core: ConnectionCore) {
        guard let deadline = core.session.nextDeadline else { return }
        // A timer that fires early does no harm; re-arming on every segment would.
        if let current = core.timerDeadline, current <= deadline { return }
        core.timer?.cancel()
        core.timerDeadline = deadline
        let handler = core.timerHandler ?? SessionTimer(core: core) { [weak self] core in
            core.timer = nil
            core.timerDeadline = nil
            let now = NIODeadline.now()
            core.session.handleTimeout(now: now)
            self?.drive(core, now: now)
        }
        core.timerHandler = handler
        // Throws only once the loop is shutting down, when nothing is left to time.
        core.timer = try? loop.assumeIsolated().scheduleCallback(at: deadline, handler: handler)
    }

    /// Runs an application request on the loop, then drives the session it touched.
    func withCore(_ core: ConnectionCore, _ body: (ConnectionCore, NIODeadline) -> Void) {
        let now = NIODeadline.now()
        body(core, now)
        if demultiplexer[core.session.localSID] === core {
            drive(core, now: now)
        }
    }

    // MARK: Socket

    /// Everything the session has to send, pumping again while it paused after a full run.
    private func sendAll(_ session: TOUSession, now: NIODeadline) {
        sendQueued(session)
        while session.transmitPaused, !session.isFinished {
            session.pump(now: now)
            sendQueued(session)
        }
    }

    private func sendQueued(_ session: TOUSession) {
        while let run = session.pollRun() {
            emit(run, to: session.peerAddress)
        }
    }

    private func emit(_ datagram: ByteBuffer, to address: SocketAddress) {
        emit(.single(datagram), to: address)
    }

    private func emit(_ run: OutboundQueue.Run, to address: SocketAddress) {
        guard let socket else { return }
        counters.datagramsSent += run.count
        needsFlush = true
        guard run.count > 1 else {
            socket.send(run.datagrams, to: address)
            return
        }
        if socket.send(run: run, to: address) { counters.segmentationWrites += 1 }
        // A full run leaves now: holding a whole window until the pump ends would leave the
        // receiver idle while we encrypt, then us idle while it decrypts.
        socket.flush()
    }

    /// A write failed: ECONNREFUSED is an ICMP port unreachable the socket reported.
    func noteWriteError(_ error: Error) {
        if (error as? IOError)?.errnoCode == ECONNREFUSED { portUnreachableSeen = true }
    }

    private func flush() {
        guard needsFlush, let socket else { return }
        needsFlush = false
        socket.flush()
    }

    /// Outside a read batch, the flush waits for the loop's queued tasks: writes that many
    /// connections make in one turn of the loop (echoes after a read) leave in one sendmmsg.
    private func flushIfOutsideReadBatch() {
        guard !inReadBatch, needsFlush, !flushQueued else { return }
        flushQueued = true
        loop.execute { [self] in
            flushQueued = false
            flush()
        }
    }

    private func beginReadBatch() {
        inReadBatch = true
        readsInWakeup += 1
    }

    /// A client starts with a small receive buffer (a connection that only sets up and exchanges
    /// a little needs no more), and takes the bulk batch of recvmmsg slots once data arrives
    /// faster: a coalesced read, or a wakeup that brought `readsPerWakeup` datagrams.
    private(set) var receivesInBulk: Bool
    @exclusivity(unchecked) private var bulkReceiveWanted = false
    @exclusivity(unchecked) private var readsInWakeup: UInt = 0

    private func receiveInBulkIfWanted() {
        if readsInWakeup >= readsPerWakeup { bulkReceiveWanted = true }
        readsInWakeup = 0
        guard bulkReceiveWanted, !receivesInBulk, let socket else { return }
        receivesInBulk = true
        let batch = configuration.receiveBatch(coalescing: receiveCoalescing, onePeer: !servesManyPeers)
        socket.receiveInBulk(batch: batch.count, slot: configuration.receiveSlot(coalescing: receiveCoalescing),
                             coalescing: receiveCoalescing)
    }

    private var receiveCoalescing: Bool { configuration.segmentationOffload && System.supportsUDPReceiveOffload }

    /// The receive batch a new socket starts with (see `receivesInBulk`). A client's own socket
    /// turns GRO on only for bulk, so until then it reads a few datagrams per call into small
    /// slots: a read that finds fewer than a batch needs no second call to learn the socket is
    /// empty. SwiftNIO's channel takes GRO from its bootstrap, so there a client reads one
    /// coalesced slot per call from the start.
    func receiveBatch() -> (count: Int, slot: Int, coalescing: Bool) {
        if !receivesInBulk, loop is IOLoop {
            return (Self.smallReceiveBatch, configuration.receiveSlot(coalescing: false), false)
        }
        let slot = configuration.receiveSlot(coalescing: receiveCoalescing)
        guard receivesInBulk else { return (1, slot, receiveCoalescing) }
        return (configuration.receiveBatch(coalescing: receiveCoalescing, onePeer: false).count, slot, receiveCoalescing)
    }

    /// A handshake flight or a small response: a client's datagrams before it reads in bulk.
    static let smallReceiveBatch = 4

    /// The socket is open: a listener asks for a deep receive queue (all its sessions share it)
    /// and learns what it got.
    func socketActive() {
        guard servesManyPeers, let socket else { return }
        // Beyond net.core.rmem_max only with CAP_NET_ADMIN; otherwise SO_RCVBUF's 4 MiB stands.
        if let granted = socket.requestReceiveQueue(16 << 20), granted > 0 {
            // The kernel doubles the request for its own overhead; about half carries payload.
            receiveQueueBudget = granted / 2
        }
    }

    /// recvmmsg calls per socket wakeup: SwiftNIO reads until a call finds the socket empty or this
    /// many have run. A listener with a few peers rarely finds the next datagram there yet, so that
    /// last, empty call is pure cost on a request/response path; with many peers it finds more
    /// work. A client keeps 4: with its 4 GRO slots that is 1 MiB per wakeup from its one peer.
    private(set) var readsPerWakeup: UInt

    private func adaptReadsPerWakeup() {
        guard servesManyPeers else { return }
        let wanted: UInt = demultiplexer.count > 8 ? 4 : 1
        guard wanted != readsPerWakeup, let socket else { return }
        readsPerWakeup = wanted
        socket.setReadsPerWakeup(wanted)
    }

    func endReadBatch() {
        answerBatch(afterApplications: datagramsInBatch <= Self.datagramsInShortRead)
        inReadBatch = false
        if !receivesInBulk { receiveInBulkIfWanted() }
    }

    static let datagramsInShortRead = 8
    /// Sessions that told their applications what arrived and answer once those have acted.
    @exclusivity(unchecked) private var answersDue: [ConnectionCore] = []
    @exclusivity(unchecked) private var answerQueued = false

    /// Lets every session that took datagrams since the last answer reply (ACKs, new data).
    ///
    /// `afterApplications` (a short read): the sessions report what arrived (waking the readers)
    /// and answer only once the tasks that woke have run, so an application that reacts at once
    /// (an echo, a request's reply, a FIN after a response) sends its data with the ACK in one
    /// segment, and everything leaves in one sendmmsg. After a long read the ACKs leave at once,
    /// so that a sender in bulk is not kept waiting on our reader. A target still in its handshake
    /// answers at once either way (see `TOUSession.answersAtOnce`); only its flush waits.
    private func answerBatch(afterApplications: Bool = false) {
        datagramsInBatch = 0
        let deferring = afterApplications && !batchSessions.isEmpty
        if !batchSessions.isEmpty {
            let now = NIODeadline.now()
            for core in batchSessions {
                core.awaitingBatchEnd = false
                guard demultiplexer[core.session.localSID] === core else { continue }
                core.session.endReceiveBatch()
                if deferring, !core.session.answersAtOnce {
                    core.session.takeIn(now: now)
                    answersDue.append(core)
                } else {
                    core.session.pump(now: now)
                }
                drive(core, now: now)
            }
            batchSessions.removeAll(keepingCapacity: true)
        }
        guard deferring else { return flush() }
        if !answerQueued {
            answerQueued = true
            loop.execute { [self] in answerDue() }
        }
    }

    /// The answers `answerBatch(afterApplications:)` left for later; a session whose application
    /// already wrote (which pumped it) has nothing left to answer.
    private func answerDue() {
        var now: NIODeadline?
        for core in answersDue where !core.session.pumpedSinceTakeIn && demultiplexer[core.session.localSID] === core {
            let time = now ?? .now()
            now = time
            core.session.pump(now: time)
            drive(core, now: time)
        }
        answersDue.removeAll(keepingCapacity: true)
        answerQueued = false
        flush()
    }

    /// The socket reported an error: port unreachable (ICMP) ends a client's handshake at once.
    func socketError(_ error: Error) {
        if let ioError = error as? IOError, ioError.errnoCode == ECONNREFUSED { portUnreachableSeen = true }
        // Only a client's own, connected socket: on a shared one the error names no peer.
        guard !servesManyPeers, let ioError = error as? IOError, ioError.errnoCode == ECONNREFUSED else {
            logger.debug("socket error", metadata: ["error": "\(error)"])
            return
        }
        for core in demultiplexer.handles where !core.session.isEstablished {
            let now = NIODeadline.now()
            core.session.abort(now: now, error: .unreachable("\(core.session.peerAddress.ipAndPort) refused (ICMP port unreachable)"))
            drive(core, now: now)
        }
    }

    /// `stopAccepting` from any thread; the future completes once the socket has closed.
    func stopAcceptingOnLoop() -> EventLoopFuture<Void> {
        let promise = loop.makePromise(of: Void.self)
        loop.execute { [self] in stopAccepting(promise: promise) }
        return promise.futureResult
    }

    /// Listener close: stop admitting; the socket closes once the last session has ended.
    func stopAccepting(promise: EventLoopPromise<Void>?) {
        accepting = false
        onAccept = nil
        if let promise {
            if let existing = closePromise { existing.futureResult.cascade(to: promise) } else { closePromise = promise }
        }
        for core in demultiplexer.handles where !core.session.isEstablished {
            core.session.abort(now: .now(), error: .closed)
            drive(core, now: .now())
        }
        if demultiplexer.count == 0 { closeSocket() }
    }

    /// Closes the socket from any thread (an abandoned connection attempt); the sessions end as
    /// when the socket closes under them.
    func closeSocketIfOpen() {
        loop.execute { [self] in socket?.close() }
    }

    private func closeSocket() {
        guard let socket else {
            closePromise?.succeed(())
            closePromise = nil
            return
        }
        self.socket = nil
        let promise = closePromise
        closePromise = nil
        socket.close()
        promise?.succeed(())
    }

    /// An ICMP port unreachable was reported: SwiftNIO closes a connected UDP socket when a send
    /// hits the pending error, and the user should hear why.
    @exclusivity(unchecked) private var portUnreachableSeen = false

    func channelClosed() {
        socket = nil
        let error: TOUError = role == .client && portUnreachableSeen
            ? .unreachable("the peer's port is closed (ICMP port unreachable)")
            : .socketError("the UDP socket was closed")
        for core in Array(demultiplexer.handles) {
            core.session.abort(now: .now(), error: error)
            core.handle(.finished(error), now: .now())
        }
        demultiplexer.removeAll()
        closePromise?.succeed(())
        closePromise = nil
    }
}

/// Feeds the endpoint from the UDP channel.
final class EndpointHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    let endpoint: TOUEndpoint

    init(endpoint: TOUEndpoint) {
        self.endpoint = endpoint
    }

    func handlerAdded(context: ChannelHandlerContext) {
        endpoint.socket = NIOEndpointSocket(context: context, endpoint: endpoint)
    }

    func channelActive(context: ChannelHandlerContext) {
        endpoint.socketActive()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        endpoint.datagramArrived(envelope.data, segmentSize: envelope.metadata?.segmentSize ?? 0,
                                 from: envelope.remoteAddress)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        endpoint.endReadBatch()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        endpoint.socketError(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        endpoint.channelClosed()
    }
}

extension DatagramBootstrap {
    /// A UDP socket on the endpoint's loop feeding the endpoint, with buffers sized for bulk
    /// transfer and batched receives.
    static func endpoint(_ endpoint: TOUEndpoint) -> DatagramBootstrap {
        let receiveOffload = endpoint.configuration.segmentationOffload && System.supportsUDPReceiveOffload
        let batch = endpoint.receiveBatch()
        // A batch of one reads by plain recvmsg: SwiftNIO's vector read of one slot costs more.
        return DatagramBootstrap(group: endpoint.loop)
            .channelOption(.maxMessagesPerRead, value: endpoint.readsPerWakeup)
            .channelOption(.socketOption(.so_rcvbuf), value: 4 << 20)
            .channelOption(.socketOption(.so_sndbuf), value: 4 << 20)
            .channelOption(.datagramVectorReadMessageCount, value: endpoint.receivesInBulk ? batch.count : 0)
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: batch.count * batch.slot))
            .channelOption(.datagramReceiveOffload, value: receiveOffload)
            .channelOption(.datagramReceiveSegmentSize, value: receiveOffload)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(EndpointHandler(endpoint: endpoint))
                }
            }
    }
}

/// A Swift task executor on a NIO event loop: jobs run as loop tasks, so a task preferring it
/// resumes from the loop's own I/O without a wakeup of another thread.
final class EventLoopTaskExecutor: TaskExecutor, Sendable {
    let loop: EventLoop
    /// `loop` when it is DatagramIO's: jobs go into its queue as they are.
    private let ioLoop: IOLoop?

    private init(loop: EventLoop) {
        self.loop = loop
        self.ioLoop = loop as? IOLoop
    }

    /// One executor per loop, so a task's preference tells which loop it runs on. TOUConnection's
    /// endpoints run on the singleton group's loops, so this holds as many entries as that group has
    /// loops, plus the loops of other groups whose connections (TOUNIO) were asked for an executor.
    private static let known = NIOLockedValueBox<[ObjectIdentifier: EventLoopTaskExecutor]>([:])

    static func of(_ loop: EventLoop) -> EventLoopTaskExecutor {
        known.withLockedValue { known in
            if let executor = known[ObjectIdentifier(loop)] { return executor }
            let executor = EventLoopTaskExecutor(loop: loop)
            known[ObjectIdentifier(loop)] = executor
            return executor
        }
    }

    /// The loop of the executor the current task prefers, if it is one of ours.
    static func currentLoop() -> EventLoop? {
        guard let current = withUnsafeCurrentTask(body: { $0?.unownedTaskExecutor }) else { return nil }
        return known.withLockedValue { known in
            known.values.first { $0.asUnownedTaskExecutor() == current }?.loop
        }
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        if let ioLoop {
            ioLoop.enqueue(job, on: asUnownedTaskExecutor())
        } else {
            loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
        }
    }
}
