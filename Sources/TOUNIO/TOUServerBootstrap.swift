import NIOCore
import NIOPosix
import TOUDTLS

/// Binds a TOU listener as a `TOUServerChannel`, shaped like NIO's `ServerBootstrap`: each
/// accepted connection becomes a `TOUChannel` with the child options applied and the child
/// initializer run before it is registered and active.
///
/// ```swift
/// let server = try await TOUServerBootstrap(group: group, configuration: .server(...))
///     .childChannelInitializer { channel in
///         channel.pipeline.configureHTTPServerPipeline().flatMap { channel.pipeline.addHandler(Hello()) }
///     }
///     .bind(host: "127.0.0.1", port: 0).get()          // server.localAddress has the port
/// ```
///
/// The listener runs `workers(_:)` UDP sockets on the port (SO_REUSEPORT; one per core by
/// default, as `TOUListener`), each on a loop of `group` (a NIOPosix `MultiThreadedEventLoopGroup`);
/// each accepted channel runs on its worker's loop.
public struct TOUServerBootstrap: Sendable {
    private let group: EventLoopGroup
    private let configuration: TOUConfiguration
    private var serverInitializer: (@Sendable (Channel) -> EventLoopFuture<Void>)?
    private var childInitializer: (@Sendable (Channel) -> EventLoopFuture<Void>)?
    private var serverOptions = ChannelOptions.Storage()
    private var childOptions = ChannelOptions.Storage()
    private var workers = TOUListener.defaultWorkers

    public init(group: EventLoopGroup, configuration: TOUConfiguration) {
        self.group = group
        self.configuration = configuration
    }

    /// How many UDP sockets, each on its own loop, share the port (1...255; default one per core).
    public func workers(_ count: Int) -> Self {
        var copy = self
        copy.workers = count
        return copy
    }

    /// Runs on the server channel before it is registered and bound.
    public func serverChannelInitializer(_ initializer: @escaping @Sendable (Channel) -> EventLoopFuture<Void>) -> Self {
        var copy = self
        copy.serverInitializer = initializer
        return copy
    }

    /// Runs on each accepted channel before it is registered and active: add handlers here.
    public func childChannelInitializer(_ initializer: @escaping @Sendable (Channel) -> EventLoopFuture<Void>) -> Self {
        var copy = self
        copy.childInitializer = initializer
        return copy
    }

    /// Options of the server channel; ones TOU cannot honour fail the bind with `operationUnsupported`.
    public func serverChannelOption<Option: ChannelOption>(_ option: Option, value: Option.Value) -> Self {
        var copy = self
        copy.serverOptions.append(key: option, value: value)
        return copy
    }

    /// Options of each accepted channel; one TOU cannot honour closes that channel (the error goes
    /// through the server channel's `errorCaught`).
    public func childChannelOption<Option: ChannelOption>(_ option: Option, value: Option.Value) -> Self {
        var copy = self
        copy.childOptions.append(key: option, value: value)
        return copy
    }

    /// Binds UDP `host`:`port` (port 0: any; the server channel's `localAddress` tells which).
    public func bind(host: String, port: Int) -> EventLoopFuture<Channel> {
        let loop = group.next()
        let childInitializer = self.childInitializer
        return bind(host: host, port: port, on: loop) { _ in
            AcceptHandler<Void>(childOptions: childOptions, initializer: { channel in
                childInitializer?(channel) ?? channel.eventLoop.makeSucceededVoidFuture()
            }, forwardsOutput: false)
        }.map { $0 as Channel }
    }

    /// Binds UDP on an IP address and port.
    public func bind(to address: SocketAddress) -> EventLoopFuture<Channel> {
        guard let host = address.ipAddress, let port = address.port else {
            return group.next().makeFailedFuture(TOUError.invalidConfiguration("\(address) is not an IP address and port"))
        }
        return bind(host: host, port: port)
    }

    /// The async variant, as NIO's: each accepted channel's `childChannelInitializer` result (say,
    /// `NIOAsyncChannel(wrappingChannelSynchronously: channel)`) is an element of the returned
    /// channel's inbound stream. The bootstrap's own child initializer runs first.
    public func bind<Output: Sendable>(
        host: String, port: Int,
        childChannelInitializer: @escaping @Sendable (Channel) -> EventLoopFuture<Output>
    ) async throws -> NIOAsyncChannel<Output, Never> {
        let loop = group.next()
        let baseInitializer = self.childInitializer
        let server = try await bind(host: host, port: port, on: loop) { server in
            let acceptor = AcceptHandler<Output>(childOptions: childOptions, initializer: { channel in
                (baseInitializer?(channel) ?? channel.eventLoop.makeSucceededVoidFuture()).flatMap {
                    childChannelInitializer(channel)
                }
            }, forwardsOutput: true)
            return acceptor
        } wrap: { server in
            try NIOAsyncChannel<Output, Never>(wrappingChannelSynchronously: server)
        }.get()
        return server.1
    }

    private func bind(host: String, port: Int, on loop: EventLoop,
                      acceptor: @escaping @Sendable (Channel) -> any ChannelHandler)
        -> EventLoopFuture<TOUServerChannel> {
        bind(host: host, port: port, on: loop, acceptor: acceptor, wrap: { _ in () }).map { $0.0 }
    }

    /// Options, initializer, the acceptor (and `wrap`, for the async variant) on the server
    /// channel, then registration, then the listener's bind.
    private func bind<Wrapped: Sendable>(
        host: String, port: Int, on loop: EventLoop,
        acceptor: @escaping @Sendable (Channel) -> any ChannelHandler,
        wrap: @escaping @Sendable (Channel) throws -> Wrapped
    ) -> EventLoopFuture<(TOUServerChannel, Wrapped)> {
        guard DatagramBootstrap(validatingGroup: loop) != nil else {
            return loop.makeFailedFuture(TOUError.invalidConfiguration(
                "TOU channels need a NIOPosix MultiThreadedEventLoopGroup; \(type(of: loop)) is not one of its loops"))
        }
        let server = TOUServerChannel(eventLoop: loop, acceptBacklog: configuration.acceptBacklog)
        let options = serverOptions
        let initializer = serverInitializer
        let configuration = self.configuration
        let workers = self.workers
        let group = self.group
        return loop.flatSubmit {
            options.applyAllChannelOptions(to: server).flatMap {
                initializer?(server) ?? loop.makeSucceededVoidFuture()
            }.flatMapThrowing {
                try server.pipeline.syncOperations.addHandler(acceptor(server))
                return try wrap(server)
            }.flatMap { wrapped in
                server.register().map { wrapped }
            }.flatMap { wrapped in
                loop.makeFutureWithTask {
                    try await TOUListener.bind(host: host, port: port, configuration: configuration, workers: workers,
                                               group: group) { connection in
                        server.accept(connection)
                    }
                }.map { listener in
                    server.bound(to: listener)
                    return (server, wrapped)
                }
            }.flatMapError { error in
                server.bindFailed(error)
                return loop.makeFailedFuture(error)
            }
        }
    }
}

/// At the end of a server channel's pipeline: applies the child options to each accepted
/// channel, runs the child initializer, registers it (it becomes active and starts reading),
/// and for the async bind passes the initializer's result on.
private final class AcceptHandler<Output: Sendable>: ChannelInboundHandler {
    typealias InboundIn = TOUChannel
    typealias InboundOut = Output

    private let childOptions: ChannelOptions.Storage
    private let initializer: @Sendable (Channel) -> EventLoopFuture<Output>
    private let forwardsOutput: Bool

    init(childOptions: ChannelOptions.Storage, initializer: @escaping @Sendable (Channel) -> EventLoopFuture<Output>,
         forwardsOutput: Bool) {
        self.childOptions = childOptions
        self.initializer = initializer
        self.forwardsOutput = forwardsOutput
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let child = unwrapInboundIn(data)
        let initializer = self.initializer
        let forwardsOutput = self.forwardsOutput
        let childOptions = self.childOptions
        let contextBox = NIOLoopBound(context, eventLoop: context.eventLoop)
        // The child's set-up runs on its own loop (its worker's), the outcome back on the server's.
        let childLoop = child.eventLoop
        childLoop.flatSubmit {
            childOptions.applyAllChannelOptions(to: child).flatMap {
                initializer(child)
            }.flatMap { output in
                let registered = childLoop.makePromise(of: Void.self)
                child.registerAlreadyConfigured0(promise: registered)
                return registered.futureResult.map { output }
            }
        }.hop(to: context.eventLoop).whenComplete { result in
            let context = contextBox.value
            switch result {
            case .success(let output):
                if forwardsOutput {
                    // Set up on another loop, it arrives after the read that brought its channel has
                    // completed: a read of its own, so NIOAsyncChannel's handler passes it on now.
                    context.fireChannelRead(self.wrapInboundOut(output))
                    context.fireChannelReadComplete()
                }
            case .failure(let error):
                context.fireErrorCaught(error)
                child.close(promise: nil)
            }
        }
    }
}

extension AcceptHandler: @unchecked Sendable {}  // used on the server channel's loop only
