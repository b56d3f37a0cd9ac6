import NIOCore
import NIOPosix
import TOUDTLS

/// Connects a `TOUChannel`, shaped like NIO's `ClientBootstrap`: options, then the initializer,
/// then registration, then the connection (DTLS and TCP handshakes) under a connect timeout.
///
/// ```swift
/// let channel = try await TOUClientBootstrap(group: group, configuration: .client(...))
///     .channelInitializer { channel in channel.pipeline.addHTTPClientHandlers() }
///     .connect(host: "127.0.0.1", port: 8443).get()
/// ```
///
/// `group` must be a NIOPosix `MultiThreadedEventLoopGroup` (TOU's UDP socket is a NIOPosix
/// datagram channel); the channel and its connection run on one of its loops.
public struct TOUClientBootstrap: Sendable {
    private let group: EventLoopGroup
    private let configuration: TOUConfiguration
    private var initializer: (@Sendable (Channel) -> EventLoopFuture<Void>)?
    private var options = ChannelOptions.Storage()

    public init(group: EventLoopGroup, configuration: TOUConfiguration) {
        self.group = group
        self.configuration = configuration
    }

    /// Runs on the channel's loop before it is registered and connected: add handlers here.
    public func channelInitializer(_ handler: @escaping @Sendable (Channel) -> EventLoopFuture<Void>) -> Self {
        var copy = self
        copy.initializer = handler
        return copy
    }

    /// Applied before the initializer runs. Options TOU cannot honour fail the connect with
    /// `ChannelError.operationUnsupported`.
    public func channelOption<Option: ChannelOption>(_ option: Option, value: Option.Value) -> Self {
        var copy = self
        copy.options.append(key: option, value: value)
        return copy
    }

    /// How long the DTLS and TCP handshakes may take before the connect fails with
    /// `ChannelError.connectTimeout` (default 10 s; the configuration's `handshakeTimeout` applies too).
    public func connectTimeout(_ timeout: TimeAmount) -> Self {
        channelOption(.connectTimeout, value: timeout)
    }

    /// Connects to `host`:`port` (a name or an IP address; both families tried as
    /// `TOUConnection.connect` does) and returns the active channel.
    public func connect(host: String, port: Int) -> EventLoopFuture<Channel> {
        let loop = group.next()
        return connect(host: host, port: port, on: loop, extraInitializer: nil).map { $0 as Channel }
    }

    /// Connects to an IP address and port (the configuration's server name, or the address, is the
    /// name the server's certificate must carry).
    public func connect(to address: SocketAddress) -> EventLoopFuture<Channel> {
        guard let host = address.ipAddress, let port = address.port else {
            return group.next().makeFailedFuture(TOUError.invalidConfiguration("\(address) is not an IP address and port"))
        }
        return connect(host: host, port: port)
    }

    /// The async variant, as NIO's: `channelInitializer` runs after the bootstrap's own and its
    /// result (say, `NIOAsyncChannel(wrappingChannelSynchronously: channel)`) is returned once connected.
    public func connect<Output: Sendable>(
        host: String, port: Int,
        channelInitializer: @escaping @Sendable (Channel) -> EventLoopFuture<Output>
    ) async throws -> Output {
        let loop = group.next()
        let output = loop.makePromise(of: Output.self)
        let connected = connect(host: host, port: port, on: loop) { channel in
            channelInitializer(channel).map { output.succeed($0) }
        }
        // Completing `output` again is a no-op; failing it here covers an initializer that never ran.
        connected.whenFailure { output.fail($0) }
        _ = try await connected.get()
        return try await output.futureResult.get()
    }

    private func connect(host: String, port: Int, on loop: EventLoop,
                         extraInitializer: (@Sendable (Channel) -> EventLoopFuture<Void>)?) -> EventLoopFuture<TOUChannel> {
        guard DatagramBootstrap(validatingGroup: loop) != nil else {
            return loop.makeFailedFuture(TOUError.invalidConfiguration(
                "TOU channels need a NIOPosix MultiThreadedEventLoopGroup; \(type(of: loop)) is not one of its loops"))
        }
        let channel = TOUChannel(eventLoop: loop, configuration: configuration)
        let options = self.options
        let initializer = self.initializer
        let configuration = self.configuration
        return loop.flatSubmit {
            options.applyAllChannelOptions(to: channel).flatMap {
                initializer?(channel) ?? loop.makeSucceededVoidFuture()
            }.flatMap {
                extraInitializer?(channel) ?? loop.makeSucceededVoidFuture()
            }.flatMap {
                channel.register()
            }.flatMap {
                Self.establish(channel, host: host, port: port, configuration: configuration)
            }.map {
                channel
            }.flatMapError { error in
                channel.close(promise: nil)
                return loop.makeFailedFuture(error)
            }
        }
    }

    /// The handshakes run as `TOUConnection.connect` on the channel's loop; the channel becomes
    /// active on their success, or the connect fails (timeout: the attempt is cancelled).
    private static func establish(_ channel: TOUChannel, host: String, port: Int,
                                  configuration: TOUConfiguration) -> EventLoopFuture<Void> {
        let loop = channel.eventLoop
        let promise = loop.makePromise(of: Void.self)
        let timeout = channel.connectTimeout
        let attempt = Task {
            do {
                let connection = try await TOUConnection.connect(host: host, port: port, configuration: configuration,
                                                                 on: loop)
                loop.execute { channel.connected(connection) }
            } catch {
                loop.execute { channel.connectFailed(error) }
            }
        }
        guard channel.beginConnecting(promise: promise, cancel: { attempt.cancel() }) else {
            attempt.cancel()
            return promise.futureResult
        }
        let timer = loop.scheduleTask(in: timeout) {
            attempt.cancel()
            channel.connectFailed(ChannelError.connectTimeout(timeout))
        }
        promise.futureResult.whenComplete { _ in timer.cancel() }
        return promise.futureResult
    }
}
