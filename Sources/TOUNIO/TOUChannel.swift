import DequeModule
import NIOConcurrencyHelpers
import NIOCore
import TOUDTLS

/// One TOU connection as a SwiftNIO `Channel`: a byte stream (inbound and outbound `ByteBuffer`,
/// outbound `IOData` holding a buffer), so NIO's protocol handlers (NIOHTTP1, ...) run over TOU
/// unchanged. Made by `TOUClientBootstrap` and `TOUServerBootstrap`.
///
/// The channel runs on its connection's event loop and reads and writes through the same core as
/// `TOUConnection`'s async API:
/// - bytes are taken out of TCP only when the pipeline reads (`read()`, or `autoRead`), so a
///   pipeline that stops reading closes TCP's receive window and holds the peer back;
/// - a flush hands the written buffers to TCP; what its send buffer cannot take yet waits, and
///   `isWritable` turns false while more than the high water mark
///   (`ChannelOptions.writeBufferWaterMark`) waits, true again below the low one;
/// - the peer's FIN is `ChannelEvent.inputClosed` with `ChannelOptions.allowRemoteHalfClosure`,
///   else it closes the channel; `close(mode: .output)` sends a FIN after what was written;
///   `close()` finishes gracefully in the background (FIN, then the DTLS close) while the
///   channel is inactive at once; failures reach `errorCaught` as `TOUError`, then the channel closes.
public final class TOUChannel: Channel, ChannelCore, @unchecked Sendable {  // state confined to eventLoop
    public let eventLoop: EventLoop
    public let parent: Channel?
    public let allocator = ByteBufferAllocator()
    public var pipeline: ChannelPipeline { _pipeline }
    public var _channelCore: ChannelCore { self }
    public var closeFuture: EventLoopFuture<Void> { closePromise.futureResult }

    private var _pipeline: ChannelPipeline!
    private let closePromise: EventLoopPromise<Void>

    private enum Lifecycle { case idle, registered, connecting, active, closed }
    private var lifecycle = Lifecycle.idle
    /// Set once active; read from any thread for addresses and `isActive`.
    private let shared = NIOLockedValueBox(Shared())
    private struct Shared {
        var connection: TOUConnection?
        var active = false
        var writable = true
    }

    private var connection: TOUConnection?
    private var connectPromise: EventLoopPromise<Void>?
    private var inputClosed = false
    private var outputClosed = false
    private var options = Options()

    /// Written but not flushed: NIO's writes wait for `flush()`.
    private var unflushed: Deque<(ByteBuffer, EventLoopPromise<Void>?)> = []
    private var unflushedBytes = 0
    private var flushWhenActive = false
    private var writable = true

    /// The pipeline asked for a read that has not been answered yet.
    private var readRequested = false
    private var inReadLoop = false

    struct Options {
        var autoRead = true
        var allowRemoteHalfClosure = false
        var maxMessagesPerRead: UInt = 4
        var waterMark = ChannelOptions.Types.WriteBufferWaterMark(low: 32 * 1024, high: 64 * 1024)
        var connectTimeout: TimeAmount = .seconds(10)
    }

    /// Largest buffer handed to one `channelRead` (bytes TCP holds are sliced, not copied).
    static let readChunk = 64 * 1024

    /// The configuration's TCP_NODELAY, known before the connection is.
    private let noDelay: Bool
    /// Abandons the handshakes of a client channel closed while connecting.
    private var cancelConnecting: (() -> Void)?

    /// A client channel: connected later by `TOUClientBootstrap`.
    init(eventLoop: EventLoop, configuration: TOUConfiguration) {
        self.eventLoop = eventLoop
        self.parent = nil
        self.noDelay = configuration.noDelay
        self.closePromise = eventLoop.makePromise()
        self._pipeline = ChannelPipeline(channel: self)
    }

    /// A channel for a connection a listener accepted.
    init(acceptedConnection connection: TOUConnection, parent: Channel) {
        self.eventLoop = connection.eventLoop
        self.parent = parent
        self.noDelay = connection.noDelay
        self.closePromise = eventLoop.makePromise()
        self.connection = connection
        self.shared.withLockedValue { $0.connection = connection }
        self._pipeline = ChannelPipeline(channel: self)
    }

    // MARK: Channel

    public var isActive: Bool { shared.withLockedValue { $0.active } }
    public var isWritable: Bool { shared.withLockedValue { $0.writable } }
    public var localAddress: SocketAddress? { shared.withLockedValue { $0.connection?.localAddress } }
    /// Follows the peer when its address changes (NAT rebinding).
    public var remoteAddress: SocketAddress? { shared.withLockedValue { $0.connection?.remoteAddress } }

    /// The subject of the peer's certificate (e.g. "CN=localhost"), nil in plain mode, without one or
    /// before the channel is connected.
    public var peerCertificateSubject: String? { shared.withLockedValue { $0.connection?.peerCertificateSubject } }
    /// The negotiated DTLS cipher suite, nil in plain mode or before the channel is connected.
    public var cipherSuite: String? { shared.withLockedValue { $0.connection?.cipherSuite } }

    /// A snapshot of the connection's counters (RTT, retransmissions, ...); nil before it is connected.
    public var stats: TOUConnectionStats? {
        get async { await shared.withLockedValue { $0.connection }?.stats }
    }

    public func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) -> EventLoopFuture<Void> {
        if eventLoop.inEventLoop {
            return eventLoop.makeCompletedFuture { try setOption0(option, value: value) }
        }
        return eventLoop.submit { try self.setOption0(option, value: value) }
    }

    public func getOption<Option: ChannelOption>(_ option: Option) -> EventLoopFuture<Option.Value> {
        if eventLoop.inEventLoop {
            return eventLoop.makeCompletedFuture { try getOption0(option) }
        }
        return eventLoop.submit { try self.getOption0(option) }
    }

    public var syncOptions: NIOSynchronousChannelOptions? { SynchronousOptions(channel: self) }

    private struct SynchronousOptions: NIOSynchronousChannelOptions {
        let channel: TOUChannel

        func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) throws {
            channel.eventLoop.preconditionInEventLoop()
            try channel.setOption0(option, value: value)
        }

        func getOption<Option: ChannelOption>(_ option: Option) throws -> Option.Value {
            channel.eventLoop.preconditionInEventLoop()
            return try channel.getOption0(option)
        }
    }

    /// One switch for every option: what TOU cannot honour fails with `operationUnsupported`.
    func setOption0<Option: ChannelOption>(_ option: Option, value: Option.Value) throws {
        eventLoop.preconditionInEventLoop()
        guard lifecycle != .closed else { throw ChannelError.ioOnClosedChannel }
        switch option {
        case is ChannelOptions.Types.AutoReadOption:
            options.autoRead = value as! Bool
            if options.autoRead { readIfNeeded() }
        case is ChannelOptions.Types.AllowRemoteHalfClosureOption:
            options.allowRemoteHalfClosure = value as! Bool
        case is ChannelOptions.Types.MaxMessagesPerReadOption:
            let count = value as! UInt
            guard count > 0 else { throw ChannelError.operationUnsupported }
            options.maxMessagesPerRead = count
        case is ChannelOptions.Types.WriteBufferWaterMarkOption:
            options.waterMark = value as! ChannelOptions.Types.WriteBufferWaterMark
            updateWritability()
        case is ChannelOptions.Types.ConnectTimeoutOption:
            options.connectTimeout = value as! TimeAmount
        case let socketOption as ChannelOptions.Types.SocketOption:
            // TCP_NODELAY is the configuration's, fixed per connection: setting it to what it is is fine.
            guard socketOption == .init(level: .tcp, name: .tcp_nodelay),
                  (value as! SocketOptionValue != 0) == noDelay else {
                throw ChannelError.operationUnsupported
            }
        default:
            throw ChannelError.operationUnsupported
        }
    }

    func getOption0<Option: ChannelOption>(_ option: Option) throws -> Option.Value {
        eventLoop.preconditionInEventLoop()
        guard lifecycle != .closed else { throw ChannelError.ioOnClosedChannel }
        switch option {
        case is ChannelOptions.Types.AutoReadOption:
            return options.autoRead as! Option.Value
        case is ChannelOptions.Types.AllowRemoteHalfClosureOption:
            return options.allowRemoteHalfClosure as! Option.Value
        case is ChannelOptions.Types.MaxMessagesPerReadOption:
            return options.maxMessagesPerRead as! Option.Value
        case is ChannelOptions.Types.WriteBufferWaterMarkOption:
            return options.waterMark as! Option.Value
        case is ChannelOptions.Types.ConnectTimeoutOption:
            return options.connectTimeout as! Option.Value
        case let socketOption as ChannelOptions.Types.SocketOption:
            guard socketOption == .init(level: .tcp, name: .tcp_nodelay) else {
                throw ChannelError.operationUnsupported
            }
            return SocketOptionValue(noDelay ? 1 : 0) as! Option.Value
        case is ChannelOptions.Types.BufferedWritableBytesOption:
            return (unflushedBytes + (connection?.queuedWriteBytes ?? 0)) as! Option.Value
        default:
            throw ChannelError.operationUnsupported
        }
    }

    // MARK: ChannelCore

    public func localAddress0() throws -> SocketAddress {
        guard let address = connection?.localAddress else { throw ChannelError.ioOnClosedChannel }
        return address
    }

    public func remoteAddress0() throws -> SocketAddress {
        guard let connection else { throw ChannelError.ioOnClosedChannel }
        return connection.remoteAddress
    }

    public func register0(promise: EventLoopPromise<Void>?) {
        guard lifecycle == .idle else {
            promise?.fail(lifecycle == .closed ? ChannelError.ioOnClosedChannel : ChannelError.inappropriateOperationForState)
            return
        }
        lifecycle = .registered
        promise?.succeed(())
        pipeline.syncOperations.fireChannelRegistered()
    }

    public func registerAlreadyConfigured0(promise: EventLoopPromise<Void>?) {
        // An accepted channel is connected from the start; a client channel connects through the bootstrap.
        guard connection != nil else {
            promise?.fail(ChannelError.operationUnsupported)
            return
        }
        register0(promise: nil)
        becomeActive(promise: promise)
    }

    public func bind0(to address: SocketAddress, promise: EventLoopPromise<Void>?) {
        // The local address is the endpoint's UDP socket, chosen by the bootstrap.
        promise?.fail(ChannelError.operationUnsupported)
    }

    public func connect0(to address: SocketAddress, promise: EventLoopPromise<Void>?) {
        // Connecting needs the TOU configuration and a server name: `TOUClientBootstrap.connect`.
        promise?.fail(ChannelError.operationUnsupported)
    }

    public func write0(_ data: NIOAny, promise: EventLoopPromise<Void>?) {
        // Before the connection is up, writes wait (as on a connecting socket) for the first flush after it.
        guard lifecycle != .closed, lifecycle != .idle else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        guard !outputClosed else {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        guard case .byteBuffer(let buffer) = tryUnwrapData(data, as: IOData.self) else {
            // A file region would need a file read on the loop; other types are a pipeline mistake.
            promise?.fail(ChannelError.operationUnsupported)
            return
        }
        unflushed.append((buffer, promise))
        unflushedBytes += buffer.readableBytes
        updateWritability()
    }

    public func flush0() {
        guard lifecycle == .active, let connection else {
            flushWhenActive = lifecycle == .registered || lifecycle == .connecting
            return
        }
        guard !unflushed.isEmpty else { return }
        let writes = unflushed
        unflushed.removeAll()
        unflushedBytes = 0
        connection.writeOnLoop(writes)
        updateWritability()
    }

    public func read0() {
        guard lifecycle == .active, !inputClosed else { return }
        readRequested = true
        readWhileRequested()
    }

    public func close0(error: Error, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        switch mode {
        case .input:
            // TCP cannot refuse bytes already sent; reading less closes the window instead (autoRead off).
            promise?.fail(ChannelError.operationUnsupported)
        case .output:
            closeOutput(error: error, promise: promise)
        case .all:
            closeAll(error: error, promise: promise)
        }
    }

    public func triggerUserOutboundEvent0(_ event: Any, promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    public func channelRead0(_ data: NIOAny) {
        // Reached the head of the pipeline unconsumed: nothing more to do with it.
    }

    public func errorCaught0(error: Error) {
        // Reached the head of the pipeline unhandled; the channel closes itself on connection failures.
    }

    // MARK: Connecting (the bootstrap)

    /// The `connectTimeout` option (the bootstrap's `connectTimeout(_:)` sets it).
    var connectTimeout: TimeAmount { options.connectTimeout }

    /// Client: the bootstrap is connecting; `promise` completes when `connected` or `connectFailed`
    /// runs. `cancel` abandons the handshakes if the channel closes first.
    func beginConnecting(promise: EventLoopPromise<Void>?, cancel: @escaping () -> Void) -> Bool {
        eventLoop.preconditionInEventLoop()
        guard lifecycle == .registered else {
            promise?.fail(lifecycle == .closed ? ChannelError.ioOnClosedChannel : ChannelError.inappropriateOperationForState)
            return false
        }
        lifecycle = .connecting
        connectPromise = promise
        cancelConnecting = cancel
        return true
    }

    /// Client: the connection is up. A channel closed meanwhile (connect timeout, user close) drops it.
    func connected(_ connection: TOUConnection) {
        eventLoop.preconditionInEventLoop()
        guard lifecycle == .connecting else {
            connection.closeOnLoop(promise: nil)
            return
        }
        self.connection = connection
        shared.withLockedValue { $0.connection = connection }
        cancelConnecting = nil
        let promise = connectPromise
        connectPromise = nil
        becomeActive(promise: promise)
    }

    func connectFailed(_ error: Error) {
        eventLoop.preconditionInEventLoop()
        guard lifecycle == .connecting else { return }
        closeAll(error: error, promise: nil)
    }

    private func becomeActive(promise: EventLoopPromise<Void>?) {
        guard let connection else { return }
        lifecycle = .active
        shared.withLockedValue { $0.active = true }
        promise?.succeed(())
        pipeline.syncOperations.fireChannelActive()
        if flushWhenActive {
            flushWhenActive = false
            flush0()
        }
        // Observing last: an ended connection reports at once, after channelActive.
        connection.setObserverOnLoop(self)
        readIfNeeded()
    }

    /// Bytes TCP holds that the pipeline has not read: at most the receive buffer (tests).
    var bufferedInboundBytes: Int { connection?.bufferedInboundBytes ?? 0 }
    /// TCP's receive buffer as it is now (tests).
    var receiveBufferLimit: Int { connection?.receiveBufferLimit ?? 0 }

    // MARK: Reading

    private func readIfNeeded() {
        if options.autoRead, lifecycle == .active, !inputClosed { pipeline.syncOperations.read() }
    }

    /// Answers the pipeline's read request with what TCP holds: up to `maxMessagesPerRead` buffers
    /// and `channelReadComplete`, or the end of the stream or the failure. With nothing there the
    /// request waits for `connectionReadable`. A read requested from within the pipeline's
    /// callbacks (autoRead) is answered by this loop, not by a nested one.
    private func readWhileRequested() {
        guard !inReadLoop, let connection else { return }
        inReadLoop = true
        defer { inReadLoop = false }
        while readRequested, lifecycle == .active, !inputClosed {
            var delivered: UInt = 0
            var ending: Result<Void, TOUError>?
            while delivered < options.maxMessagesPerRead, lifecycle == .active,
                  let result = connection.readOnLoop(maximumBytes: Self.readChunk) {
                // Reading drives the session, whose events may have closed the channel meanwhile.
                guard lifecycle == .active else { return }
                switch result {
                case .success(let data?):
                    delivered += 1
                    pipeline.syncOperations.fireChannelRead(NIOAny(data))
                    continue
                case .success(nil):
                    ending = .success(())
                case .failure(let error):
                    ending = .failure(error)
                }
                break
            }
            if delivered == 0 && ending == nil { return }
            readRequested = false
            if lifecycle == .active { pipeline.syncOperations.fireChannelReadComplete() }
            switch ending {
            case .success?:
                inputEnded()
                return
            case .failure(let error)?:
                fail(error)
                return
            case nil:
                readIfNeeded()
            }
        }
    }

    /// The peer's FIN, after its last byte: half-closure if the pipeline allows it, else the end.
    private func inputEnded() {
        guard lifecycle == .active else { return }
        inputClosed = true
        if options.allowRemoteHalfClosure && !outputClosed {
            pipeline.syncOperations.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        } else {
            closeAll(error: ChannelError.eof, promise: nil)
        }
    }

    private func fail(_ error: TOUError) {
        guard lifecycle == .active else { return }
        pipeline.syncOperations.fireErrorCaught(error)
        closeAll(error: error, promise: nil)
    }

    // MARK: Writing

    private func updateWritability() {
        let waiting = unflushedBytes + (connection?.queuedWriteBytes ?? 0)
        if writable, waiting > options.waterMark.high {
            setWritable(false)
        } else if !writable, waiting < options.waterMark.low {
            setWritable(true)
        }
    }

    private func setWritable(_ value: Bool) {
        writable = value
        shared.withLockedValue { $0.writable = value }
        if lifecycle == .active { pipeline.syncOperations.fireChannelWritabilityChanged() }
    }

    // MARK: Closing

    private func closeOutput(error: Error, promise: EventLoopPromise<Void>?) {
        guard lifecycle == .active, let connection else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        guard !outputClosed else {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        if inputClosed {
            // Both directions done: the channel is.
            closeAll(error: error, promise: promise)
            return
        }
        // What was written goes out first (flushed or not), then the FIN.
        flush0()
        outputClosed = true
        connection.finishWritingOnLoop()
        promise?.succeed(())
        pipeline.syncOperations.fireUserInboundEventTriggered(ChannelEvent.outputClosed)
    }

    /// In NIO's order: inactive, `channelInactive`, `channelUnregistered`, the promise, then (a
    /// loop turn later, once handlers are removed) `closeFuture`. The connection finishes its
    /// close in the background: flushed bytes are still delivered, then FIN and the DTLS close.
    private func closeAll(error: Error, promise: EventLoopPromise<Void>?) {
        eventLoop.preconditionInEventLoop()
        let previous = lifecycle
        guard previous != .closed else {
            promise?.fail(ChannelError.alreadyClosed)
            return
        }
        lifecycle = .closed
        shared.withLockedValue { $0.active = false }
        readRequested = false
        while let (_, writePromise) = unflushed.popFirst() {
            writePromise?.fail(error)
        }
        unflushedBytes = 0
        if let connection {
            connection.setObserverOnLoop(nil)
            connection.closeOnLoop(promise: nil)
        }
        if let connectPromise {
            self.connectPromise = nil
            connectPromise.fail(error)
        }
        if let cancelConnecting {
            self.cancelConnecting = nil
            cancelConnecting()
        }
        if previous == .active { pipeline.syncOperations.fireChannelInactive() }
        if previous != .idle { pipeline.syncOperations.fireChannelUnregistered() }
        promise?.succeed(())
        eventLoop.execute {
            self.removeHandlers(pipeline: self.pipeline)
            self.closePromise.succeed(())
        }
    }
}

extension TOUChannel: TOUConnectionObserver {
    package func connectionReadable() {
        if readRequested { readWhileRequested() }
    }

    package func connectionWritesDrained() {
        updateWritability()
    }

    package func connectionEnded(_ outcome: Result<Void, TOUError>) {
        switch outcome {
        case .failure(let error):
            fail(error)
        case .success:
            // Both FINs are through; bytes TCP still holds reach the pipeline as it reads, then the end.
            if readRequested { readWhileRequested() }
        }
    }
}
