import NIOCore
import NIOPosix

/// Accepts TOU connections on one UDP socket.
public final class TOUListener: Sendable {
    let endpoint: TOUEndpoint
    let channel: Channel
    /// The bound address (useful with port 0).
    public let localAddress: SocketAddress
    /// Connections that completed both handshakes, in order. Ends when the listener is closed.
    public let connections: AsyncStream<TOUConnection>

    init(endpoint: TOUEndpoint, channel: Channel, connections: AsyncStream<TOUConnection>) throws {
        self.endpoint = endpoint
        self.channel = channel
        guard let address = channel.localAddress else {
            throw TOUError.socketError("the socket has no local address")
        }
        self.localAddress = address
        self.connections = connections
    }

    /// Binds a UDP socket on `host` (nil: all addresses, IPv6 and IPv4; an IPv6 address may be in
    /// brackets) and `port` (0: any). A port another socket holds fails with "address in use".
    public static func bind(host: String? = nil, port: Int, configuration: TOUConfiguration) async throws -> TOUListener {
        let (stream, continuation) = AsyncStream.makeStream(of: TOUConnection.self,
                                                            bufferingPolicy: .bufferingOldest(configuration.acceptBacklog))
        let listener = try await bind(host: host, port: port, configuration: configuration,
                                      on: MultiThreadedEventLoopGroup.singleton.next(), connections: stream) { connection in
            if case .dropped(let connection) = continuation.yield(connection) {
                // Nobody takes connections this fast: refuse rather than queue without bound.
                connection.abortOnLoop()
            }
        }
        listener.channel.closeFuture.whenComplete { _ in continuation.finish() }
        return listener
    }

    /// `bind` on `loop` (a NIOPosix loop), where `onAccept` is called with each connection that
    /// completed both handshakes (TOUNIO makes a channel of it there); `connections` stays empty.
    package static func bind(host: String?, port: Int, configuration: TOUConfiguration, on loop: EventLoop,
                             onAccept: @escaping @Sendable (TOUConnection) -> Void) async throws -> TOUListener {
        try await bind(host: host, port: port, configuration: configuration, on: loop,
                       connections: AsyncStream { $0.finish() }, onAccept: onAccept)
    }

    private static func bind(host: String?, port: Int, configuration: TOUConfiguration, on loop: EventLoop,
                             connections stream: AsyncStream<TOUConnection>,
                             onAccept: @escaping @Sendable (TOUConnection) -> Void) async throws -> TOUListener {
        try configuration.validate()
        guard (0...65_535).contains(port) else {
            throw TOUError.invalidConfiguration("port \(port) is outside 0...65535")
        }
        let context = configuration.security == .dtls ? try configuration.makeServerContext() : nil
        let endpoint = TOUEndpoint(loop: loop, role: .listener, configuration: configuration, dtlsContext: context)
        // No SO_REUSEADDR: on UDP it lets a second process bind the same port and take part of
        // its traffic, so a port that is taken fails here with "address in use". Sharing a port
        // on purpose is for one listener's own workers (SO_REUSEPORT), set where they are made.
        let bootstrap = DatagramBootstrap.endpoint(endpoint)
        let address: SocketAddress
        do {
            // No HOST: "::", dual-stack on Linux by default.
            address = try host.map { try AddressText.resolve($0, port: port) } ?? SocketAddress(ipAddress: "::", port: port)
        } catch let error as AddressText.Failure {
            throw TOUError.socketError(error.message)
        }
        let channel: Channel
        do {
            channel = try await bootstrap.bind(to: address).get()
        } catch let error as IOError where host == nil && (error.errnoCode == EAFNOSUPPORT || error.errnoCode == EADDRNOTAVAIL) {
            // IPv4 alone only where this host has no IPv6; never when the port is taken.
            let ipv4 = try SocketAddress(ipAddress: "0.0.0.0", port: port)
            do {
                channel = try await bootstrap.bind(to: ipv4).get()
            } catch {
                throw bindFailure(ipv4, error)
            }
        } catch {
            throw bindFailure(address, error)
        }
        try await loop.submit { endpoint.onAccept = onAccept }.get()
        return try TOUListener(endpoint: endpoint, channel: channel, connections: stream)
    }

    private static func bindFailure(_ address: SocketAddress, _ error: Error) -> TOUError {
        .socketError("cannot bind UDP \(address.ipAndPort): \(AddressText.describe(error))")
    }

    /// Runs tasks on the listener's event loop, where its connections run: a task there takes
    /// connections from `connections` without a thread switch, and
    /// `Task(executorPreference: connection.taskExecutor)` serves each on it.
    public var taskExecutor: any TaskExecutor { endpoint.taskExecutor }

    /// Stops accepting new connections; the socket closes once every accepted connection has ended.
    public func close() async throws {
        let promise = endpoint.loop.makePromise(of: Void.self)
        endpoint.loop.execute { [endpoint] in endpoint.stopAccepting(promise: promise) }
        try await promise.futureResult.get()
    }

    /// Per-endpoint counters, including datagrams dropped by reason.
    public var counters: TOUEndpointCounters {
        get async {
            (try? await endpoint.loop.submit { [endpoint] in endpoint.counters }.get()) ?? TOUEndpointCounters()
        }
    }
}

extension TOUListener {
    package var eventLoop: EventLoop { endpoint.loop }

    /// On the loop: `close()` without waiting (no new connections; the socket closes once every
    /// accepted connection has ended).
    package func stopAcceptingOnLoop() {
        endpoint.stopAccepting(promise: nil)
    }
}
