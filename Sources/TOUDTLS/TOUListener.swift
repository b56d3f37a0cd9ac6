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

    /// Binds a UDP socket on `host` (nil: all addresses, IPv6 and IPv4) and `port` (0: any).
    public static func bind(host: String? = nil, port: Int, configuration: TOUConfiguration) async throws -> TOUListener {
        try configuration.validate()
        guard (0...65_535).contains(port) else {
            throw TOUError.invalidConfiguration("port \(port) is outside 0...65535")
        }
        let context = configuration.security == .dtls ? try configuration.makeServerContext() : nil
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let endpoint = TOUEndpoint(loop: loop, role: .listener, configuration: configuration, dtlsContext: context)
        let (stream, continuation) = AsyncStream.makeStream(of: TOUConnection.self,
                                                            bufferingPolicy: .bufferingOldest(configuration.acceptBacklog))
        let bootstrap = DatagramBootstrap.endpoint(endpoint)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
        let channel: Channel
        do {
            if let host {
                channel = try await bootstrap.bind(host: host, port: port).get()
            } else {
                // "::" is dual-stack on Linux by default; fall back to IPv4 where IPv6 is absent.
                do {
                    channel = try await bootstrap.bind(host: "::", port: port).get()
                } catch {
                    channel = try await bootstrap.bind(host: "0.0.0.0", port: port).get()
                }
            }
        } catch {
            throw TOUError.socketError("cannot bind UDP \(host ?? "*"):\(port): \(error)")
        }
        try await loop.submit {
            endpoint.onAccept = { connection in
                if case .dropped(let connection) = continuation.yield(connection) {
                    // Nobody takes connections this fast: refuse rather than queue without bound.
                    connection.abortOnLoop()
                }
            }
        }.get()
        channel.closeFuture.whenComplete { _ in continuation.finish() }
        return try TOUListener(endpoint: endpoint, channel: channel, connections: stream)
    }

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
