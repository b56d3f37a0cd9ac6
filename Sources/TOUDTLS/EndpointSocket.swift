import DatagramIO
import Logging
import NIOCore
import NIOPosix

/// Which datagram I/O layer runs the UDP sockets of the connections and listeners whose event
/// loops the library picks (`TOUConfiguration.datagramIO`).
public enum TOUDatagramIO: String, Sendable, CaseIterable {
    /// Our own: an epoll event loop per core with recvmmsg/sendmmsg, GSO/GRO and peers compared
    /// as address bytes. It costs about 40% less CPU per request/response transaction than
    /// SwiftNIO's channel. Its loops are NIO `EventLoop`s but not SwiftNIO's own, so SwiftNIO's
    /// bootstraps cannot open channels on them (see `TOUConnection.eventLoop`).
    case native
    /// SwiftNIO's DatagramChannel on SwiftNIO's singleton event loops: for code that opens
    /// SwiftNIO channels (a TCP connection relayed to the TOU one, say) on the connection's own
    /// loop, so that data crosses no thread.
    case nio

    /// The default: `native`.
    public static let `default` = TOUDatagramIO.native
}

/// The endpoint's UDP socket, whichever I/O layer runs it: all the endpoint asks of it. Called on
/// the endpoint's loop. What the socket reads goes to the endpoint's `datagramArrived`,
/// `endReadBatch`, `socketError` and `channelClosed`.
protocol EndpointSocket: AnyObject, Sendable {
    var localAddress: SocketAddress? { get }
    var closeFuture: EventLoopFuture<Void> { get }
    /// Queues one datagram for `address` (ignored once connected).
    func send(_ datagram: ByteBuffer, to address: SocketAddress)
    /// Queues a run of datagrams of `run.segmentSize` bytes (the last may be shorter) for
    /// `address`; true when it goes out as one segmented (GSO) send.
    func send(run: OutboundQueue.Run, to address: SocketAddress) -> Bool
    /// Sends what is queued.
    func flush()
    func close()
    /// Asks for a receive queue of `bytes` (beyond the system's limit if privileged); returns
    /// what the kernel granted.
    func requestReceiveQueue(_ bytes: Int) -> Int?
    /// Reads up to `batch` datagrams of up to `slot` bytes per call from now on, with GRO if
    /// `coalescing` (where it was not on from the start).
    func receiveInBulk(batch: Int, slot: Int, coalescing: Bool)
    func setReadsPerWakeup(_ reads: UInt)
    /// Attaches a classic BPF program (`count` struct sock_filter at `instructions`, which must
    /// stay valid until the future completes) to the socket's SO_REUSEPORT group.
    func attachReuseportProgram(_ instructions: UnsafeRawPointer, count: Int) -> EventLoopFuture<Void>
}

extension TOUEndpoint {
    /// Opens the endpoint's socket with the layer that matches its loop: an `IOLoop` gets a
    /// DatagramIO socket, any other loop a SwiftNIO channel. `connect` or `bind`, once open the
    /// socket is the endpoint's and the future succeeds on the loop.
    func openSocket(connectingTo remote: SocketAddress) -> EventLoopFuture<Void> {
        open(native: { try NativeEndpointSocket.connect(remote, self) },
             nio: { DatagramBootstrap.endpoint(self).connect(to: remote) })
    }

    func openSocket(boundTo address: SocketAddress, reusePort: Bool) -> EventLoopFuture<Void> {
        open(native: { try NativeEndpointSocket.bind(address, reusePort: reusePort, self) }) {
            var bootstrap = DatagramBootstrap.endpoint(self)
            if reusePort {
                bootstrap = bootstrap.channelOption(.socketOption(NIOBSDSocket.Option(rawValue: SO_REUSEPORT)), value: 1)
            }
            return bootstrap.bind(to: address)
        }
    }

    private func open(native: @escaping @Sendable () throws -> NativeEndpointSocket,
                      nio: () -> EventLoopFuture<Channel>) -> EventLoopFuture<Void> {
        guard loop is IOLoop else { return nio().map { _ in } }
        return loop.submit { [self] in
            let socket = try native()
            self.socket = socket
            socketActive()
        }
    }
}

/// SwiftNIO's DatagramChannel under the endpoint.
final class NIOEndpointSocket: EndpointSocket, @unchecked Sendable {
    private let context: ChannelHandlerContext
    /// Read off the loop too (the listener's address): the channel's own getters are thread-safe.
    private let channel: Channel
    private weak var endpoint: TOUEndpoint?
    private let logger: Logger
    private let isClient: Bool
    private var segmentationOffload: Bool
    /// A client's first write of each flush carries a promise (see `watchedWritePromise`).
    private var flushWatched = false

    init(context: ChannelHandlerContext, endpoint: TOUEndpoint) {
        self.context = context
        self.channel = context.channel
        self.endpoint = endpoint
        self.logger = endpoint.configuration.logger
        self.isClient = endpoint.role == .client
        self.segmentationOffload = endpoint.configuration.segmentationOffload && System.supportsUDPSegmentationOffload
    }

    var localAddress: SocketAddress? { channel.localAddress }
    var closeFuture: EventLoopFuture<Void> { channel.closeFuture }

    func send(_ datagram: ByteBuffer, to address: SocketAddress) {
        context.write(NIOAny(AddressedEnvelope(remoteAddress: address, data: datagram)), promise: watchedWritePromise())
    }

    func send(run: OutboundQueue.Run, to address: SocketAddress) -> Bool {
        guard run.count > 1 else {
            send(run.datagrams, to: address)
            return false
        }
        guard segmentationOffload else {
            for datagram in run.slices { send(datagram, to: address) }
            return false
        }
        let metadata = AddressedEnvelope<ByteBuffer>.Metadata(ecnState: .transportNotCapable, packetInfo: nil,
                                                              segmentSize: run.segmentSize)
        let write = AddressedEnvelope(remoteAddress: address, data: run.datagrams, metadata: metadata)
        let promise = context.eventLoop.makePromise(of: Void.self)
        promise.futureResult.whenFailure { [weak self] error in
            self?.endpoint?.noteWriteError(error)
            // EIO/EINVAL: this path cannot segment (no checksum offload, say). TCP resends the lost run.
            guard let self, let code = (error as? IOError)?.errnoCode,
                  code == EIO || code == EINVAL || code == EOPNOTSUPP else { return }
            self.segmentationOffload = false
            self.logger.info("UDP segmentation offload refused; sending datagrams one by one",
                             metadata: ["errno": "\(code)"])
        }
        context.write(NIOAny(write), promise: promise)
        return true
    }

    /// A client's first write of each flush carries a promise: a send that meets a pending ICMP
    /// port unreachable is the first of its flush, and SwiftNIO then closes the socket, failing
    /// the pending writes with that error and telling no one else.
    private func watchedWritePromise() -> EventLoopPromise<Void>? {
        guard isClient, !flushWatched else { return nil }
        flushWatched = true
        let promise = context.eventLoop.makePromise(of: Void.self)
        promise.futureResult.whenFailure { [weak self] error in self?.endpoint?.noteWriteError(error) }
        return promise
    }

    func flush() {
        flushWatched = false
        context.flush()
    }

    func close() {
        context.close(promise: nil)
    }

    func requestReceiveQueue(_ bytes: Int) -> Int? {
        guard let options = channel.syncOptions else { return nil }
        let force = ChannelOptions.Types.SocketOption(level: .socket, name: NIOBSDSocket.Option(rawValue: SO_RCVBUFFORCE))
        try? options.setOption(force, value: bytes)
        return try? options.getOption(.socketOption(.so_rcvbuf))
    }

    func receiveInBulk(batch: Int, slot: Int, coalescing: Bool) {
        // GRO came with the bootstrap (`DatagramBootstrap.endpoint`).
        guard let options = channel.syncOptions else { return }
        try? options.setOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: slot * batch))
        try? options.setOption(.datagramVectorReadMessageCount, value: batch)
    }

    func setReadsPerWakeup(_ reads: UInt) {
        try? channel.syncOptions?.setOption(.maxMessagesPerRead, value: reads)
    }

    func attachReuseportProgram(_ instructions: UnsafeRawPointer, count: Int) -> EventLoopFuture<Void> {
        guard let provider = channel as? SocketOptionProvider else {
            return context.eventLoop.makeFailedFuture(ChannelError.operationUnsupported)
        }
        return provider.unsafeSetSocketOption(level: SocketOptionLevel(SOL_SOCKET),
                                              name: SocketOptionName(SessionSteering.attachReuseportCBPF),
                                              value: SessionSteering.Program(length: UInt16(count), instructions: instructions))
    }
}

/// DatagramIO's UDPSocket under the endpoint.
final class NativeEndpointSocket: EndpointSocket, UDPSocketDelegate, @unchecked Sendable {
    let socket: UDPSocket
    private let endpoint: TOUEndpoint
    private var refusalsLogged = 0

    private init(socket: UDPSocket, endpoint: TOUEndpoint) throws {
        self.socket = socket
        self.endpoint = endpoint
        try socket.start(delegate: self)
    }

    /// The options matching what `DatagramBootstrap.endpoint` asks of SwiftNIO.
    private static func options(_ endpoint: TOUEndpoint) -> UDPSocket.Options {
        var options = UDPSocket.Options()
        let configuration = endpoint.configuration
        let batch = endpoint.receiveBatch()
        options.receiveOffload = batch.coalescing
        options.segmentationOffload = configuration.segmentationOffload
        options.receiveBatch = batch.count
        options.receiveSlot = batch.slot
        options.readsPerWakeup = Int(endpoint.readsPerWakeup)
        return options
    }

    static func connect(_ remote: SocketAddress, _ endpoint: TOUEndpoint) throws -> NativeEndpointSocket {
        let loop = endpoint.loop as! IOLoop  // openSocket checked
        return try NativeEndpointSocket(socket: UDPSocket.connect(to: remote, on: loop, options: options(endpoint)),
                                        endpoint: endpoint)
    }

    static func bind(_ address: SocketAddress, reusePort: Bool, _ endpoint: TOUEndpoint) throws -> NativeEndpointSocket {
        let loop = endpoint.loop as! IOLoop  // openSocket checked
        var options = options(endpoint)
        options.reusePort = reusePort
        return try NativeEndpointSocket(socket: UDPSocket.bind(to: address, on: loop, options: options),
                                        endpoint: endpoint)
    }

    var localAddress: SocketAddress? { socket.localAddress }
    var closeFuture: EventLoopFuture<Void> { socket.closeFuture }

    func send(_ datagram: ByteBuffer, to address: SocketAddress) {
        socket.enqueue(datagram, to: address)
    }

    func send(run: OutboundQueue.Run, to address: SocketAddress) -> Bool {
        guard run.count > 1 else {
            socket.enqueue(run.datagrams, to: address)
            return false
        }
        socket.enqueue(run.datagrams, segmentSize: run.segmentSize, to: address)
        return socket.segmentationOffload
    }

    func flush() {
        socket.flush()
        if socket.counters.segmentationRefusals > refusalsLogged {
            refusalsLogged = socket.counters.segmentationRefusals
            endpoint.configuration.logger.info("UDP segmentation offload refused; sending datagrams one by one")
        }
    }

    func close() {
        socket.close()
    }

    func requestReceiveQueue(_ bytes: Int) -> Int? {
        // Beyond net.core.rmem_max only with CAP_NET_ADMIN; otherwise SO_RCVBUF's request stands.
        _ = socket.setOption(level: SOL_SOCKET, name: SO_RCVBUFFORCE, value: CInt(clamping: bytes))
        return socket.getOption(level: SOL_SOCKET, name: SO_RCVBUF).map(Int.init)
    }

    func receiveInBulk(batch: Int, slot: Int, coalescing: Bool) {
        if coalescing { socket.enableReceiveOffload() }
        socket.setReceiveBatch(batch, slot: slot)
    }

    func setReadsPerWakeup(_ reads: UInt) {
        socket.setReadsPerWakeup(Int(reads))
    }

    func attachReuseportProgram(_ instructions: UnsafeRawPointer, count: Int) -> EventLoopFuture<Void> {
        let code = socket.attachReuseportProgram(instructions, count: count)
        guard code == 0 else { return socket.loop.makeFailedFuture(IOError(errnoCode: code, reason: "SO_ATTACH_REUSEPORT_CBPF")) }
        return socket.loop.makeSucceededVoidFuture()
    }

    // MARK: UDPSocketDelegate

    func received(_ datagram: ByteBuffer, segmentSize: Int, from peer: SocketAddress) {
        endpoint.datagramArrived(datagram, segmentSize: segmentSize, from: peer)
    }

    func readBatchEnded() {
        endpoint.endReadBatch()
    }

    func socketError(_ error: IOError) {
        endpoint.socketError(error)
    }

    func socketClosed() {
        endpoint.channelClosed()
    }
}
