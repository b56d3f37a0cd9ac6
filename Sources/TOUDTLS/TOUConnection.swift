import DatagramIO
import DTLS
import NIOCore
import NIOConcurrencyHelpers
import NIOPosix

/// One secure (or plain) TOU connection: a TCP byte stream inside DTLS inside GUE over UDP.
///
/// Writes suspend under backpressure and never drop; `inbound` yields the peer's bytes until its FIN;
/// `finishWriting()` half-closes; `close()` returns once everything written has been acknowledged and
/// the session has ended as the wire format's closing rules say.
public final class TOUConnection: Sendable {
    // All access to `core` happens on `endpoint.loop`.
    let core: ConnectionCore
    let endpoint: TOUEndpoint

    /// The subject of the peer's certificate (e.g. "CN=localhost"), nil in plain mode or without one.
    public let peerCertificateSubject: String?
    /// The negotiated DTLS cipher suite, nil in plain mode.
    public let cipherSuite: String?
    public let localAddress: SocketAddress?
    /// Whether the DTLS handshake resumed a saved session (abbreviated: the server sent no certificate).
    public let isResumed: Bool
    /// Client: the session to offer next time (it is also saved in `TOUConfiguration.sessionCache`),
    /// if the server issued a new ticket; nil after a resumption that kept its ticket, since the
    /// session offered is still the one to keep.
    public let resumableSession: TOUSavedSession?
    /// Client: why the saved session for this server was not offered (another server name or
    /// trust, expired, unreadable), or nil.
    public let resumptionRefusal: String?
    /// The peer's current address: it follows the peer when its address changes (NAT rebinding).
    public var remoteAddress: SocketAddress { core.peerAddress.withLockedValue { $0 } }

    init(core: ConnectionCore, endpoint: TOUEndpoint) {
        self.core = core
        self.endpoint = endpoint
        self.peerCertificateSubject = core.session.peerCertificateSubject
        self.cipherSuite = core.session.negotiatedCipherSuite
        self.localAddress = endpoint.socket?.localAddress
        self.isResumed = core.session.isResumed
        self.resumableSession = core.session.resumableSession.map(TOUSavedSession.init)
        self.resumptionRefusal = core.session.resumptionRefusal
    }

    // MARK: Connecting

    /// Connects to `host`:`port` over UDP and completes the DTLS and TCP handshakes. `host` is a
    /// name or an IP address; an IPv6 address may be in brackets (`[::1]`).
    ///
    /// Called under `withTaskExecutorPreference(TOUConnection.nextTaskExecutor())`, the connection
    /// runs on that executor's event loop, and connecting, reading and writing there need no thread
    /// switch: the fastest set-up. That code then runs on the event loop: it must not block (a
    /// `host` that is a name is resolved with a blocking lookup; pass an address there).
    ///
    /// `initialData` (say, a request) is sent first: with DTLS, as much of it as one segment holds
    /// rides on the TCP SYN, which leaves with the client's DTLS Finished, so a server that
    /// answers at once gets its answer here two round trips after `connect` starts (three if the
    /// listener asks for a cookie). The rest follows as ordinary data. At most `sendBufferSize` bytes.
    /// When HOST resolves to both IPv6 and IPv4 addresses, both are tried (Happy Eyeballs,
    /// RFC 8305): IPv6 first, the next address 250 ms later if no handshake has completed; the
    /// first to complete both handshakes is kept, the others are closed.
    ///
    /// Cancelling the task ends `connect` promptly with `CancellationError` and leaves nothing
    /// behind: the handshakes in progress are abandoned and their UDP sockets closed. (A
    /// connection that completed before the cancellation arrived is returned.)
    /// - Throws: `TOUError` (configuration, unreachable, handshake or certificate failures,
    ///   timeout), or `CancellationError`.
    public static func connect(host: String, port: Int, configuration: TOUConfiguration,
                               initialData: ByteBuffer? = nil) async throws -> TOUConnection {
        try await connect(host: host, port: port, configuration: configuration, initialData: initialData,
                          on: EventLoopTaskExecutor.currentLoop())
    }

    /// `connect` with the connection on `loop` (a NIOPosix loop; nil: the singleton group's next).
    /// A channel built on the connection (TOUNIO) runs there.
    package static func connect(host: String, port: Int, configuration: TOUConfiguration,
                                initialData: ByteBuffer? = nil, on loop: EventLoop?) async throws -> TOUConnection {
        try configuration.validate()
        try checkConnect(port: port, initialData: initialData, configuration: configuration)
        let context: DTLSContext? = configuration.security == .dtls ? try configuration.makeClientContext() : nil
        try Task.checkCancellation()
        let addresses: [SocketAddress]
        do {
            addresses = try AddressText.resolveAll(host, port: port)
        } catch {
            throw TOUError.unreachable(error.message)
        }
        return try await connect(to: addresses, host: host, port: port, configuration: configuration,
                                 context: context, initialData: initialData, loop: loop)
    }

    /// The peer's port and the initial data fit.
    static func checkConnect(port: Int, initialData: ByteBuffer?, configuration: TOUConfiguration) throws {
        guard (1...65_535).contains(port) else {
            throw TOUError.invalidConfiguration("port \(port) is outside 1...65535")
        }
        if let initialData, initialData.readableBytes > configuration.sendBufferSize {
            throw TOUError.invalidConfiguration("initial data of \(initialData.readableBytes) bytes exceeds the "
                                                + "\(configuration.sendBufferSize)-byte send buffer")
        }
    }

    /// One connection attempt to `remote`: its own endpoint and UDP socket, closed again unless
    /// the attempt succeeds.
    /// On `loop` (the caller's preferred executor's, see `nextTaskExecutor()`), else any.
    static func attempt(_ remote: SocketAddress, host: String, port: Int, configuration: TOUConfiguration,
                        context: DTLSContext?, initialData: ByteBuffer?, loop: EventLoop? = nil) async throws -> TOUConnection {
        let loop = loop ?? nextLoop(configuration.datagramIO)
        let endpoint = TOUEndpoint(loop: loop, role: .client, configuration: configuration, dtlsContext: context)
        // The session starts on the loop as soon as the socket is there: one hop for both.
        let opened = endpoint.openSocket(connectingTo: remote)
        return try await handshake(on: endpoint, once: opened, to: remote, host: host, port: port,
                                   configuration: configuration, initialData: initialData) {
            opened.whenSuccess { endpoint.closeSocketIfOpen() }
        }
    }

    /// Starts a session to `remote` on `endpoint` once `ready` succeeds (its socket is open) and
    /// returns the connection once both handshakes are done; calls `abandon` when it fails.
    static func handshake(on endpoint: TOUEndpoint, once ready: EventLoopFuture<Void>, to remote: SocketAddress,
                          host: String, port: Int, configuration: TOUConfiguration, initialData: ByteBuffer?,
                          abandon: () -> Void) async throws -> TOUConnection {
        let loop = endpoint.loop
        let serverName = configuration.serverName(connectingTo: host)
        let promise = loop.makePromise(of: TOUConnection.self)
        let cache = configuration.security == .dtls ? configuration.sessionCache : nil
        let saved = cache?.session(serverName: serverName, port: port)
        ready.whenComplete { result in
            switch result {
            case .success:
                endpoint.startClientSession(serverName: serverName, peer: remote, innerRemotePort: UInt16(port),
                                            resuming: saved, initialData: initialData, promise: promise)
            case .failure(let error):
                promise.fail(TOUError.unreachable("cannot open a UDP socket to \(remote.ipAndPort): \(AddressText.describe(error))"))
            }
        }
        do {
            // Both run on the loop: a cancellation before the session starts keeps it from starting.
            let connection = try await withTaskCancellationHandler {
                try await promise.futureResult.get()
            } onCancel: {
                loop.execute { endpoint.cancelConnect(promise) }
            }
            if let fresh = connection.resumableSession { cache?.insert(fresh, port: port) }
            return connection
        } catch let error as CancellationError {
            abandon()
            throw error
        } catch let error as TOUError {
            abandon()
            // A session that led to a failed handshake is not offered again; one that never met the
            // server (unreachable, no answer, one family in Happy Eyeballs, abandoned) still may be.
            switch error {
            case .unreachable, .timedOut, .socketError, .closed: break
            default: if saved != nil { cache?.remove(serverName: serverName, port: port) }
            }
            throw error
        } catch {
            abandon()
            throw TOUError.socketError("\(error)")
        }
    }

    // MARK: Data

    /// Sends `buffer`, suspending while the send buffer is full. Returns once every byte is queued
    /// for TCP (which will deliver it or fail the connection).
    ///
    /// Cancelling the task while the write waits for room ends it with `CancellationError` and
    /// resets the connection (the peer sees a reset; later operations throw `TOUError.closed`):
    /// how much of `buffer` went out is unknown, so the stream cannot go on.
    ///
    /// Under `withTaskExecutorPreference(taskExecutor)`, a write TCP takes at once completes
    /// without suspending and without a thread switch.
    public nonisolated(nonsending) func write(_ buffer: ByteBuffer) async throws {
        let core = self.core
        var rest = buffer
        if endpoint.loop.inEventLoop {
            // Already on the loop and TCP has room: done without suspending.
            var immediate: Result<Void, TOUError>?
            endpoint.withCore(core) { core, now in immediate = core.writeWithoutWaiting(&rest, now: now) }
            if let immediate { return try immediate.get() }
        }
        let promise = endpoint.loop.makePromise(of: Void.self)
        onLoop { [endpoint, rest] in
            endpoint.withCore(core) { core, now in core.write(rest, promise: promise, now: now) }
        }
        try await cancellable(promise.futureResult)
    }

    /// Awaits an operation's `future`; cancelling the task cancels the operation (see `cancel`).
    /// The operation is queued on the loop before this runs, so the cancellation finds it there.
    private nonisolated(nonsending) func cancellable<Value: Sendable>(_ future: EventLoopFuture<Value>) async throws -> Value {
        try await withTaskCancellationHandler {
            try await Self.value(of: future)
        } onCancel: {
            cancelOnLoop(ObjectIdentifier(future))
        }
    }

    /// Ends the waiting operation named `waiter` with `CancellationError` and resets the connection.
    private func cancelOnLoop(_ waiter: ObjectIdentifier) {
        let core = self.core
        endpoint.loop.execute { [endpoint] in
            endpoint.withCore(core) { core, now in core.cancel(waiter, now: now) }
        }
    }

    /// Awaits `future` and resumes where the caller runs (under `taskExecutor`: on the loop).
    private nonisolated(nonsending) static func value<Value: Sendable>(of future: EventLoopFuture<Value>) async throws -> Value {
        try await withUnsafeThrowingContinuation { continuation in
            future.whenComplete { continuation.resume(with: $0) }
        }
    }

    /// A task executor on the event loop the next connection would use: connecting under it puts
    /// the connection on that loop (see `connect`), so a task can connect, write and read without
    /// a thread switch.
    public static func nextTaskExecutor() -> any TaskExecutor {
        nextTaskExecutor(datagramIO: .default)
    }

    /// `nextTaskExecutor()` on a loop of the given I/O layer.
    package static func nextTaskExecutor(datagramIO: TOUDatagramIO) -> any TaskExecutor {
        EventLoopTaskExecutor.of(nextLoop(datagramIO))
    }

    /// The loop a connection runs on when its caller's executor names none.
    static func nextLoop(_ datagramIO: TOUDatagramIO) -> EventLoop {
        switch datagramIO {
        case .nio: MultiThreadedEventLoopGroup.singleton.next()
        case .native: IOLoopGroup.singleton.next()
        }
    }

    /// Runs tasks on this connection's event loop. Code under
    /// `withTaskExecutorPreference(connection.taskExecutor) { ... }` reads and writes without a
    /// thread switch: the lowest latency for request/response.
    public var taskExecutor: any TaskExecutor { endpoint.taskExecutor }

    /// Runs `body` on the endpoint's loop: at once when already there, else queued.
    private func onLoop(_ body: @escaping @Sendable () -> Void) {
        if endpoint.loop.inEventLoop {
            body()
        } else {
            endpoint.loop.execute(body)
        }
    }

    /// Half-closes: a FIN follows everything written so far. Reading goes on.
    public nonisolated(nonsending) func finishWriting() async throws {
        let core = self.core
        if endpoint.loop.inEventLoop {
            // On the loop already: the FIN joins what the loop sends next (an ACK, say).
            endpoint.withCore(core) { core, now in core.finishWriting(now: now) }
            return
        }
        try await endpoint.loop.submit { [endpoint] in
            endpoint.withCore(core) { core, now in core.finishWriting(now: now) }
        }.get()
    }

    /// Ends the connection gracefully: finishes writing, discards unread inbound bytes, and returns
    /// once our data is acknowledged and the peer has finished too (TCP's TIME-WAIT, whose linger
    /// and close_notify the connection sees to by itself; `waitUntilEnded` waits for those as well),
    /// or throws; after `configuration.closeTimeout` the connection is reset and
    /// `TOUError.timedOut` thrown.
    /// Cancelling the task while it waits resets the connection at once and throws `CancellationError`.
    public nonisolated(nonsending) func close() async throws {
        let promise = endpoint.loop.makePromise(of: Void.self)
        onLoop { self.closeOnLoop(promise: promise) }
        try await withTaskCancellationHandler {
            try await promise.futureResult.get()
        } onCancel: {
            cancelOnLoop(ObjectIdentifier(promise.futureResult))
        }
    }

    /// Returns once the connection has ended, by `close()` or the peer, or throws how it failed
    /// (reset, timed out, ...). For noticing a failure while nothing is being read or written,
    /// say after the peer's FIN while our side still waits for something to send. Cancelling the
    /// task only stops the waiting; the connection goes on.
    public func waitUntilEnded() async throws {
        let promise = endpoint.loop.makePromise(of: Void.self)
        let core = self.core
        endpoint.loop.execute { core.whenEnded(promise) }
        try await withTaskCancellationHandler {
            try await promise.futureResult.get()
        } onCancel: {
            promise.fail(CancellationError())
        }
    }

    /// Resets the connection at once (TCP RST); pending and later operations fail. Returns once
    /// the reset has been handed to the socket, so a process may exit right after.
    public func abort() async {
        let core = self.core
        try? await endpoint.loop.submit { [endpoint] in
            endpoint.withCore(core) { core, now in core.session.abort(now: now, error: .closed) }
        }.get()
    }

    /// `abort()` for callers already on the endpoint's loop.
    package func abortOnLoop() {
        endpoint.withCore(core) { core, now in core.session.abort(now: now, error: .closed) }
    }

    /// A snapshot of the connection's counters.
    public var stats: TOUConnectionStats {
        get async {
            let core = self.core
            return (try? await endpoint.loop.submit { core.session.stats }.get())
                ?? TOUConnectionStats(tcp: nil, droppedDatagrams: 0, malformedSegments: 0, cipherSuite: nil)
        }
    }

    /// Counters of the UDP endpoint this connection runs on (for a client, its own socket; for an
    /// accepted connection, the listener's), including datagrams dropped by reason.
    public var endpointCounters: TOUEndpointCounters {
        get async {
            (try? await endpoint.loop.submit { [endpoint] in endpoint.counters }.get()) ?? TOUEndpointCounters()
        }
    }

    /// The peer's bytes, in order, until its FIN. Throws `TOUError` if the connection fails.
    ///
    /// Cancelling the task while a read waits for bytes ends it with `CancellationError` and
    /// resets the connection (the peer sees a reset; later operations throw `TOUError.closed`).
    /// Bytes already there are still returned to a cancelled task.
    public var inbound: Inbound { Inbound(connection: self) }

    fileprivate nonisolated(nonsending) func read() async throws -> ByteBuffer? {
        let core = self.core
        if endpoint.loop.inEventLoop {
            var immediate: Result<ByteBuffer?, TOUError>?
            endpoint.withCore(core) { core, now in immediate = core.readWithoutWaiting(now: now) }
            if let immediate { return try immediate.get() }
            // Still on the loop (the body runs before the task suspends): wait on a continuation.
            // A cancellation hops to the loop, so it runs after the read is registered.
            let token = WaiterToken()
            return try await withTaskCancellationHandler {
                try await withUnsafeThrowingContinuation { continuation in
                    endpoint.withCore(core) { core, now in core.read(continuation: continuation, token: token, now: now) }
                }
            } onCancel: {
                cancelOnLoop(ObjectIdentifier(token))
            }
        }
        let promise = endpoint.loop.makePromise(of: ByteBuffer?.self)
        onLoop { [endpoint] in
            endpoint.withCore(core) { core, now in core.read(promise: promise, now: now) }
        }
        return try await cancellable(promise.futureResult)
    }

    public struct Inbound: AsyncSequence, Sendable {
        public typealias Element = ByteBuffer
        let connection: TOUConnection

        public struct AsyncIterator: AsyncIteratorProtocol {
            let connection: TOUConnection
            var done = false

            public nonisolated(nonsending) mutating func next() async throws -> ByteBuffer? {
                if done { return nil }
                let chunk = try await connection.read()
                if chunk == nil { done = true }
                return chunk
            }

            /// What `for try await` calls; it runs where the caller runs, like `next()`.
            public mutating func next(isolation actor: isolated (any Actor)?) async throws -> ByteBuffer? {
                try await next()
            }
        }

        public func makeAsyncIterator() -> AsyncIterator {
            AsyncIterator(connection: connection)
        }
    }
}
