import DatagramIO
import NIOCore
import NIOPosix

/// Accepts TOU connections on one UDP port: one socket, or one per worker (SO_REUSEPORT), each
/// with its own event loop, session table and admission.
public final class TOUListener: Sendable {
    /// Worker 0's endpoint (the only one with one worker).
    var endpoint: TOUEndpoint { endpoints[0] }
    let endpoints: [TOUEndpoint]
    /// Each worker's socket, by worker.
    let sockets: [EndpointSocket]
    /// The bound address (useful with port 0).
    public let localAddress: SocketAddress
    /// Connections that completed both handshakes, in order. Ends when the listener is closed.
    public let connections: AsyncStream<TOUConnection>
    /// With several workers: whether the kernel steers each datagram to its session's worker by
    /// the SID in D (a classic BPF program on the port's socket group). Without it a datagram
    /// that the kernel's address hash sends elsewhere is handed over and counted as misrouted.
    public let steersBySessionID: Bool

    init(endpoints: [TOUEndpoint], sockets: [EndpointSocket], connections: AsyncStream<TOUConnection>,
         steersBySessionID: Bool) throws {
        self.endpoints = endpoints
        self.sockets = sockets
        guard let address = sockets.first?.localAddress else {
            throw TOUError.socketError("the socket has no local address")
        }
        self.localAddress = address
        self.connections = connections
        self.steersBySessionID = steersBySessionID
    }

    /// The number of workers `bind` uses by default: one per core.
    public static let defaultWorkers = min(255, max(1, System.coreCount))

    /// Binds a UDP socket on `host` (nil: all addresses, IPv6 and IPv4; an IPv6 address may be in
    /// brackets) and `port` (0: any). A port another socket holds fails with "address in use".
    ///
    /// `workers` > 1 binds that many sockets to the port with SO_REUSEPORT, each on its own event
    /// loop: each admits the attempts the kernel hashes to it and its SIDs name it; they share only
    /// the count of sessions and handshakes in progress the listener's limits apply to (changed
    /// when a session starts or ends, never per datagram).
    ///
    /// `steering: false` leaves every datagram to the kernel's address hash (the steering program
    /// is not attached): for measurements and tests of the hand-over between workers.
    public static func bind(host: String? = nil, port: Int, configuration: TOUConfiguration,
                            workers: Int = defaultWorkers, steering: Bool = true) async throws -> TOUListener {
        let (stream, continuation) = AsyncStream.makeStream(of: TOUConnection.self,
                                                            bufferingPolicy: .bufferingOldest(configuration.acceptBacklog))
        let listener = try await bind(host: host, port: port, configuration: configuration, workers: workers,
                                      steering: steering, group: configuration.datagramIO == .native
                                          ? IOLoopGroup.singleton : MultiThreadedEventLoopGroup.singleton,
                                      connections: stream) { connection in
            if case .dropped(let connection) = continuation.yield(connection) {
                // Nobody takes connections this fast: refuse rather than queue without bound.
                connection.abortOnLoop()
            }
        }
        let closed = EventLoopFuture.andAllComplete(listener.sockets.map(\.closeFuture), on: listener.endpoint.loop)
        closed.whenComplete { _ in continuation.finish() }
        return listener
    }

    /// `bind` with the workers on loops of `group` (NIOPosix), where `onAccept` is called with each
    /// connection that completed both handshakes, on its worker's loop (TOUNIO makes a channel of
    /// it); `connections` stays empty.
    package static func bind(host: String?, port: Int, configuration: TOUConfiguration, workers: Int,
                             group: EventLoopGroup,
                             onAccept: @escaping @Sendable (TOUConnection) -> Void) async throws -> TOUListener {
        try await bind(host: host, port: port, configuration: configuration, workers: workers, steering: true,
                       group: group, connections: AsyncStream { $0.finish() }, onAccept: onAccept)
    }

    private static func bind(host: String?, port: Int, configuration: TOUConfiguration, workers: Int, steering: Bool,
                             group: EventLoopGroup, connections stream: AsyncStream<TOUConnection>,
                             onAccept: @escaping @Sendable (TOUConnection) -> Void) async throws -> TOUListener {
        try configuration.validate()
        guard (0...65_535).contains(port) else {
            throw TOUError.invalidConfiguration("port \(port) is outside 0...65535")
        }
        guard (1...255).contains(workers) else {
            throw TOUError.invalidConfiguration("workers \(workers) is outside 1...255")
        }
        let context = configuration.security == .dtls ? try configuration.makeServerContext() : nil
        let perWorker = configuration.dividedAmong(workers: workers)
        let budget = SessionBudget()
        let endpoints = (0..<workers).map { index in
            TOUEndpoint(loop: group.next(), role: .listener,
                        configuration: perWorker, dtlsContext: context, worker: index, of: workers, budget: budget)
        }
        for endpoint in endpoints { endpoint.workers = endpoints.map { TOUEndpoint.WeakEndpoint(endpoint: $0) } }
        let address: SocketAddress
        do {
            // No HOST: "::", dual-stack on Linux by default.
            address = try host.map { try AddressText.resolve($0, port: port) } ?? SocketAddress(ipAddress: "::", port: port)
        } catch let error as AddressText.Failure {
            throw TOUError.socketError(error.message)
        }
        var sockets: [EndpointSocket] = []
        if workers > 1, address.port != 0 {
            // Another process of the same user could join a port whose sockets all say
            // SO_REUSEPORT: a socket without it must bind first, so that a port in use fails with
            // "address in use" as it does with one worker.
            try await probeUnused(address, fallbackToIPv4: host == nil)
        }
        do {
            // Worker 0 takes the port (or picks one); the others join it.
            var bound = address
            for endpoint in endpoints {
                let socket = try await bindSocket(endpoint, to: bound, fallbackToIPv4: host == nil, shared: workers > 1)
                sockets.append(socket)
                if let local = socket.localAddress { bound = local }
            }
        } catch {
            for endpoint in endpoints { endpoint.closeSocketIfOpen() }
            for socket in sockets { try? await socket.closeFuture.get() }
            throw error
        }
        var steers = false
        if workers > 1, steering {
            do {
                try await SessionSteering.attach(to: endpoints[0])
                steers = true
            } catch {
                // Misrouted datagrams are then handed over between workers, and counted.
                configuration.logger.info("datagrams reach workers by the kernel's address hash: \(error)")
            }
        }
        for endpoint in endpoints {
            try await endpoint.loop.submit { endpoint.onAccept = onAccept }.get()
        }
        return try TOUListener(endpoints: endpoints, sockets: sockets, connections: stream, steersBySessionID: steers)
    }

    /// Binds and closes a plain UDP socket on `address`: fails if the port is in use.
    private static func probeUnused(_ address: SocketAddress, fallbackToIPv4: Bool) async throws {
        let bootstrap = DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        let probe: Channel
        do {
            probe = try await bootstrap.bind(to: address).get()
        } catch let error as IOError where fallbackToIPv4 && (error.errnoCode == EAFNOSUPPORT || error.errnoCode == EADDRNOTAVAIL) {
            let ipv4 = try SocketAddress(ipAddress: "0.0.0.0", port: address.port ?? 0)
            do { probe = try await bootstrap.bind(to: ipv4).get() } catch { throw bindFailure(ipv4, error) }
        } catch {
            throw bindFailure(address, error)
        }
        try await probe.close()
    }

    /// One worker's socket (or a `TOUClientEndpoint`'s). No SO_REUSEADDR: on UDP it lets a second
    /// process bind the same port and take part of its traffic, so a port that is taken fails with
    /// "address in use". SO_REUSEPORT only where this listener's own workers share the port (the
    /// kernel lets only sockets of the same user join, and the first bind still fails on a port in
    /// use).
    static func bindSocket(_ endpoint: TOUEndpoint, to address: SocketAddress, fallbackToIPv4: Bool,
                           shared: Bool) async throws -> EndpointSocket {
        func bind(_ address: SocketAddress) async throws -> EndpointSocket {
            try await endpoint.openSocket(boundTo: address, reusePort: shared).get()
            return try await endpoint.loop.submit {
                guard let socket = endpoint.socket else { throw TOUError.socketError("the socket closed at once") }
                return socket
            }.get()
        }
        do {
            return try await bind(address)
        } catch let error as IOError where fallbackToIPv4 && (error.errnoCode == EAFNOSUPPORT || error.errnoCode == EADDRNOTAVAIL) {
            // IPv4 alone only where this host has no IPv6; never when the port is taken.
            let ipv4 = try SocketAddress(ipAddress: "0.0.0.0", port: address.port ?? 0)
            do {
                return try await bind(ipv4)
            } catch {
                throw bindFailure(ipv4, error)
            }
        } catch {
            throw bindFailure(address, error)
        }
    }

    private static func bindFailure(_ address: SocketAddress, _ error: Error) -> TOUError {
        .socketError("cannot bind UDP \(address.ipAndPort): \(AddressText.describe(error))")
    }

    /// Runs tasks on the event loop of the listener's first worker, where its connections run: a
    /// task there takes connections from `connections` without a thread switch, and
    /// `Task(executorPreference: connection.taskExecutor)` serves each on its own worker's loop.
    public var taskExecutor: any TaskExecutor { endpoint.taskExecutor }

    /// The number of workers (sockets and event loops) this listener runs.
    public var workerCount: Int { endpoints.count }

    /// Stops accepting new connections; the sockets close once every accepted connection has ended.
    public func close() async throws {
        let closed = endpoints.map { $0.stopAcceptingOnLoop() }
        for future in closed { try await future.get() }
    }

    /// Counters of all workers added up, including datagrams dropped by reason.
    public var counters: TOUEndpointCounters {
        get async { TOUEndpointCounters.sum(await workerCounters) }
    }

    /// Sessions and handshakes in progress over all workers (tests).
    var sessionCounts: (sessions: Int, halfOpen: Int) {
        get async throws {
            var total = (sessions: 0, halfOpen: 0)
            for endpoint in endpoints {
                let counts = try await endpoint.loop.submit { (endpoint.sessionCount, endpoint.halfOpenCount) }.get()
                total.sessions += counts.0
                total.halfOpen += counts.1
            }
            return total
        }
    }

    /// Per-source tables copied to take a token, over all workers (tests: 0).
    var sourceTableCopies: Int {
        get async throws {
            var total = 0
            for endpoint in endpoints { total += try await endpoint.loop.submit { endpoint.sourceTableCopies }.get() }
            return total
        }
    }

    /// Each worker's counters, by worker.
    public var workerCounters: [TOUEndpointCounters] {
        get async {
            var all: [TOUEndpointCounters] = []
            for endpoint in endpoints {
                all.append((try? await endpoint.loop.submit { endpoint.counters }.get()) ?? TOUEndpointCounters())
            }
            return all
        }
    }
}

extension TOUListener {
    /// Serves every connection with `handler`, each in a task of its own on the executor of the
    /// worker that accepted it, started from that worker's loop as the connection completes: no
    /// thread switch between accepting and serving. (Reading `connections` in one task costs two
    /// for each connection another worker accepted: to the reading task's loop and back.)
    /// Connections already waiting in `connections` are served too; use one or the other.
    /// Returns once the listener is closed and its sockets are shut, which is after every
    /// connection it accepted has ended.
    public func serve(_ handler: @escaping @Sendable (TOUConnection) async -> Void) async {
        let start: @Sendable (TOUConnection) -> Void = { connection in
            Task(executorPreference: connection.taskExecutor) { await handler(connection) }
        }
        for endpoint in endpoints {
            // A closed listener's workers have no onAccept any more, and get none back.
            try? await endpoint.loop.submit {
                if endpoint.onAccept != nil { endpoint.onAccept = start }
            }.get()
        }
        for await connection in connections { start(connection) }
    }

    /// `close()` without waiting, from any thread: no new connections; each worker's socket closes
    /// once every connection it accepted has ended.
    package func stopAccepting() {
        for endpoint in endpoints {
            if endpoint.loop.inEventLoop {
                endpoint.stopAccepting(promise: nil)
            } else {
                endpoint.loop.execute { endpoint.stopAccepting(promise: nil) }
            }
        }
    }
}
