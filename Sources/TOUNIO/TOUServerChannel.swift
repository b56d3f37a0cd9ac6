import DequeModule
import NIOConcurrencyHelpers
import NIOCore
import TOUDTLS

/// The listening side as a `Channel` (what `TOUServerBootstrap.bind` returns): each accepted
/// connection passes through its pipeline as a `TOUChannel`, as a `ServerSocketChannel` passes
/// its children, when the pipeline reads (`autoRead`, or `read()`: at most `maxMessagesPerRead`
/// each). Connections that complete their handshakes while nobody reads wait, up to the
/// configuration's `acceptBacklog`; beyond it they are refused (closed), as `TOUListener` does.
/// Closing the channel stops accepting; connections already accepted go on, and the UDP socket
/// closes once the last of them has ended.
///
/// A listener with several workers (one UDP socket and loop each, sharing the port) accepts on
/// all of them; each accepted channel runs on its own worker's loop, as NIO's child channels run
/// on their child group's loops, while the server channel's pipeline runs on its own loop.
public final class TOUServerChannel: Channel, ChannelCore, @unchecked Sendable {  // state confined to eventLoop
    public let eventLoop: EventLoop
    public var parent: Channel? { nil }
    public let allocator = ByteBufferAllocator()
    public var pipeline: ChannelPipeline { _pipeline }
    public var _channelCore: ChannelCore { self }
    public var closeFuture: EventLoopFuture<Void> { closePromise.futureResult }
    /// Nothing is written to a listener.
    public var isWritable: Bool { false }

    private var _pipeline: ChannelPipeline!
    private let closePromise: EventLoopPromise<Void>

    private enum Lifecycle { case idle, registered, active, closed }
    private var lifecycle = Lifecycle.idle
    private let shared = NIOLockedValueBox<(listener: TOUListener?, active: Bool)>((nil, false))
    private var listener: TOUListener?
    private var autoRead = true
    private var maxMessagesPerRead: UInt = 4
    private var readRequested = false
    private var inReadLoop = false
    /// Accepted while nobody reads, oldest first; at most `acceptBacklog`.
    private var waiting: Deque<TOUConnection> = []
    private let acceptBacklog: Int

    init(eventLoop: EventLoop, acceptBacklog: Int) {
        self.eventLoop = eventLoop
        self.acceptBacklog = max(1, acceptBacklog)
        self.closePromise = eventLoop.makePromise()
        self._pipeline = ChannelPipeline(channel: self)
    }

    public var isActive: Bool { shared.withLockedValue { $0.active } }
    public var localAddress: SocketAddress? { shared.withLockedValue { $0.listener?.localAddress } }
    public var remoteAddress: SocketAddress? { nil }

    /// The listener's counters: sessions accepted, datagrams dropped by reason, ...
    public var counters: TOUEndpointCounters? {
        get async { await shared.withLockedValue { $0.listener }?.counters }
    }

    public func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) -> EventLoopFuture<Void> {
        eventLoop.submit { try self.setOption0(option, value: value) }
    }

    public func getOption<Option: ChannelOption>(_ option: Option) -> EventLoopFuture<Option.Value> {
        eventLoop.submit { try self.getOption0(option) }
    }

    func setOption0<Option: ChannelOption>(_ option: Option, value: Option.Value) throws {
        eventLoop.preconditionInEventLoop()
        guard lifecycle != .closed else { throw ChannelError.ioOnClosedChannel }
        switch option {
        case is ChannelOptions.Types.AutoReadOption:
            autoRead = value as! Bool
            if autoRead { readIfNeeded() }
        case is ChannelOptions.Types.MaxMessagesPerReadOption:
            let count = value as! UInt
            guard count > 0 else { throw ChannelError.operationUnsupported }
            maxMessagesPerRead = count
        default:
            throw ChannelError.operationUnsupported
        }
    }

    func getOption0<Option: ChannelOption>(_ option: Option) throws -> Option.Value {
        eventLoop.preconditionInEventLoop()
        guard lifecycle != .closed else { throw ChannelError.ioOnClosedChannel }
        switch option {
        case is ChannelOptions.Types.AutoReadOption:
            return autoRead as! Option.Value
        case is ChannelOptions.Types.MaxMessagesPerReadOption:
            return maxMessagesPerRead as! Option.Value
        default:
            throw ChannelError.operationUnsupported
        }
    }

    // MARK: ChannelCore

    public func localAddress0() throws -> SocketAddress {
        guard let address = listener?.localAddress else { throw ChannelError.ioOnClosedChannel }
        return address
    }

    public func remoteAddress0() throws -> SocketAddress {
        throw ChannelError.operationUnsupported
    }

    public func register0(promise: EventLoopPromise<Void>?) {
        guard lifecycle == .idle else {
            promise?.fail(ChannelError.inappropriateOperationForState)
            return
        }
        lifecycle = .registered
        promise?.succeed(())
        pipeline.syncOperations.fireChannelRegistered()
    }

    public func registerAlreadyConfigured0(promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    public func bind0(to address: SocketAddress, promise: EventLoopPromise<Void>?) {
        // Binding needs the TOU configuration: `TOUServerBootstrap.bind`.
        promise?.fail(ChannelError.operationUnsupported)
    }

    public func connect0(to address: SocketAddress, promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    public func write0(_ data: NIOAny, promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    public func flush0() {}

    public func read0() {
        guard lifecycle == .active else { return }
        readRequested = true
        deliverWhileRequested()
    }

    public func close0(error: Error, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .all else {
            promise?.fail(ChannelError.operationUnsupported)
            return
        }
        let previous = lifecycle
        guard previous != .closed else {
            promise?.fail(ChannelError.alreadyClosed)
            return
        }
        lifecycle = .closed
        shared.withLockedValue { $0.active = false }
        listener?.stopAccepting()
        readRequested = false
        while let connection = waiting.popFirst() {
            Self.refuse(connection)
        }
        if previous == .active { pipeline.syncOperations.fireChannelInactive() }
        if previous != .idle { pipeline.syncOperations.fireChannelUnregistered() }
        promise?.succeed(())
        eventLoop.execute {
            self.removeHandlers(pipeline: self.pipeline)
            self.closePromise.succeed(())
        }
    }

    public func triggerUserOutboundEvent0(_ event: Any, promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    public func channelRead0(_ data: NIOAny) {}

    public func errorCaught0(error: Error) {}

    // MARK: The bootstrap and the listener

    /// The listener is bound: the channel is active. A channel closed meanwhile closes the listener.
    func bound(to listener: TOUListener) {
        eventLoop.preconditionInEventLoop()
        guard lifecycle == .registered else {
            listener.stopAccepting()
            return
        }
        self.listener = listener
        lifecycle = .active
        shared.withLockedValue { $0 = (listener, true) }
        pipeline.syncOperations.fireChannelActive()
        readIfNeeded()
    }

    private func readIfNeeded() {
        if autoRead, lifecycle == .active { pipeline.syncOperations.read() }
    }

    /// Answers read requests with waiting connections, each as a `TOUChannel` through the
    /// pipeline; a request with none waiting is answered by the next `accept`.
    private func deliverWhileRequested() {
        guard !inReadLoop else { return }
        inReadLoop = true
        defer { inReadLoop = false }
        while readRequested, lifecycle == .active, !waiting.isEmpty {
            var delivered: UInt = 0
            while delivered < maxMessagesPerRead, lifecycle == .active, let connection = waiting.popFirst() {
                delivered += 1
                pipeline.syncOperations.fireChannelRead(NIOAny(TOUChannel(acceptedConnection: connection, parent: self)))
            }
            readRequested = false
            guard lifecycle == .active else { return }
            pipeline.syncOperations.fireChannelReadComplete()
            readIfNeeded()
        }
    }

    func bindFailed(_ error: Error) {
        eventLoop.preconditionInEventLoop()
        guard lifecycle != .closed else { return }
        close0(error: error, mode: .all, promise: nil)
    }

    /// A connection completed both handshakes (on its worker's loop): its channel goes through
    /// the pipeline when it reads.
    func accept(_ connection: TOUConnection) {
        guard eventLoop.inEventLoop else {
            eventLoop.execute { self.accept(connection) }
            return
        }
        guard lifecycle == .active, waiting.count < acceptBacklog else {
            // Nobody takes connections this fast: refuse rather than queue without bound.
            Self.refuse(connection)
            return
        }
        waiting.append(connection)
        deliverWhileRequested()
    }

    /// Resets a connection nobody will take, on its own loop.
    private static func refuse(_ connection: TOUConnection) {
        if connection.eventLoop.inEventLoop {
            connection.abortOnLoop()
        } else {
            connection.eventLoop.execute { connection.abortOnLoop() }
        }
    }
}
