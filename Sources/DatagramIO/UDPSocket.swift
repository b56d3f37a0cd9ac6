import CDatagramIO
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// Hears what a `UDPSocket` received. Called on the socket's loop.
public protocol UDPSocketDelegate: AnyObject {
    /// One datagram, or with `segmentSize` > 0 several the kernel coalesced (GRO): all of that
    /// size but the last. `datagram` is a slice of the socket's receive buffer: keep it as long
    /// as needed, the next read uses fresh memory then.
    func received(_ datagram: ByteBuffer, segmentSize: Int, from peer: SocketAddress)
    /// The datagrams of one readiness event have all been delivered.
    func readBatchEnded()
    /// An error the socket met; it stays open unless `socketClosed` follows.
    func socketError(_ error: IOError)
    /// The socket is closed (by `close()`, or by an ICMP error on a connected socket's send).
    func socketClosed()
}

/// What a `UDPSocket` counted since it opened.
public struct UDPSocketCounters: Sendable, Equatable {
    public var datagramsReceived = 0
    /// Reads that delivered a GRO-coalesced buffer.
    public var coalescedReceives = 0
    public var receiveCalls = 0
    /// Datagrams longer than a receive slot: dropped.
    public var truncated = 0
    /// Datagrams from an address that is not IPv4 or IPv6: dropped.
    public var unreadableAddresses = 0
    /// Wire messages handed to sendmmsg (a GSO run counts once).
    public var messagesSent = 0
    public var sendCalls = 0
    public var segmentedSends = 0
    /// Times the kernel refused UDP segmentation; after the first, runs go one by one.
    public var segmentationRefusals = 0
    /// Messages the kernel refused for another reason: dropped.
    public var sendErrors = 0
    /// Times the send buffer was full and the socket waited to be writable.
    public var sendWaits = 0
    /// Datagrams dropped because `maximumQueuedBytes` were already waiting (a full send buffer
    /// while a flood is answered, say), as a full socket buffer drops them.
    public var queueDrops = 0
    public init() {}
}

/// A non-blocking UDP socket on an `IOLoop`: batched receive (recvmmsg) and send (sendmmsg)
/// through arrays allocated once, UDP GSO and GRO where the kernel has them, peers compared as
/// raw address bytes. All methods but the initializers run on the loop.
public final class UDPSocket: IOReadinessHandler, @unchecked Sendable {
    public struct Options: Sendable {
        public var receiveBufferSize = 4 << 20
        public var sendBufferSize = 4 << 20
        /// SO_REUSEPORT: several sockets share the port (a listener's workers).
        public var reusePort = false
        /// Ask for UDP_GRO; where it is refused datagrams arrive one by one.
        public var receiveOffload = true
        /// Send runs with UDP_SEGMENT; where the kernel refuses, one by one from then on.
        public var segmentationOffload = true
        /// recvmmsg slots and the bytes of each (64 KiB to take GRO-coalesced reads).
        public var receiveBatch = 32
        public var receiveSlot = 2048
        /// recvmmsg calls per readiness event, at most (each until a call finds fewer than a batch).
        public var readsPerWakeup = 4
        public init() {}
    }

    public let loop: IOLoop
    // `@exclusivity(unchecked)` on the state every datagram touches: the runtime's access checks
    // were 4-6% of a bulk receiver's CPU, and no access to these spans a call out of the socket
    // (the delegate gets copies; the arrays' pointers are read before the system call). Other
    // modules read getters: their direct reads of a stored property would be checked regardless.
    public var fd: CInt { _fd }
    @exclusivity(unchecked) private var _fd: CInt
    public var localAddress: SocketAddress? { _localAddress }
    @exclusivity(unchecked) private var _localAddress: SocketAddress?
    /// The peer of a connected socket.
    public let remoteAddress: SocketAddress?
    public var counters: UDPSocketCounters { _counters }
    @exclusivity(unchecked) private var _counters: UDPSocketCounters = UDPSocketCounters()
    /// Whether runs still go out as one GSO send each.
    public var segmentationOffload: Bool { _segmentationOffload }
    @exclusivity(unchecked) private var _segmentationOffload: Bool
    public var receiveOffload: Bool { _receiveOffload }
    @exclusivity(unchecked) private var _receiveOffload: Bool = false
    public var isOpen: Bool { fd >= 0 }
    public var closeFuture: EventLoopFuture<Void> { closePromise.futureResult }
    /// Most messages in one sendmmsg or recvmmsg call.
    public static let maximumBatch = 64
    /// Most bytes queued while the send buffer is full (twice the default socket send buffer):
    /// what the endpoint queues beyond that is dropped, so answers to a flood cannot pile up.
    public static let maximumQueuedBytes = 8 << 20

    @exclusivity(unchecked) private var delegate: UDPSocketDelegate?
    private let closePromise: EventLoopPromise<Void>
    @exclusivity(unchecked) private var readsPerWakeup: Int

    @exclusivity(unchecked) private var receiveBatch: Int
    @exclusivity(unchecked) private var receiveSlot: Int
    @exclusivity(unchecked) private var receiveBuffer: ByteBuffer
    @exclusivity(unchecked) private var receiveArrays = MessageArrays()
    @exclusivity(unchecked) private var peers = PeerAddressCache()

    private struct Pending {
        var data: ByteBuffer
        /// > 0: a run of datagrams of this size (the last may be shorter) sent with UDP_SEGMENT.
        var segmentSize: Int
        var address: SocketAddress?
    }
    @exclusivity(unchecked) private var pending: [Pending] = []
    @exclusivity(unchecked) private var pendingHead = 0
    /// Bytes of `pending[pendingHead...]`.
    @exclusivity(unchecked) private var pendingBytes = 0
    @exclusivity(unchecked) private var waitingForWritable = false
    /// A send met ECONNREFUSED: nothing more is sent, and the socket closes once queued
    /// datagrams are read.
    @exclusivity(unchecked) private var refused = false
    @exclusivity(unchecked) private var sendArrays = MessageArrays()

    private init(loop: IOLoop, fd: CInt, remote: SocketAddress?, options: Options) {
        self.loop = loop
        self._fd = fd
        self.remoteAddress = remote
        self.closePromise = loop.makePromise(of: Void.self)
        self.readsPerWakeup = max(1, options.readsPerWakeup)
        self.receiveBatch = min(Self.maximumBatch, max(1, options.receiveBatch))
        self.receiveSlot = max(64, options.receiveSlot)
        self.receiveBuffer = ByteBufferAllocator().buffer(capacity: receiveBatch * receiveSlot)
        self._segmentationOffload = options.segmentationOffload && Self.kernelSegments
        if options.receiveOffload { _receiveOffload = dio_enable_receive_offload(fd) == 0 }
        self._localAddress = Self.localAddress(of: fd)
    }

    deinit {
        if fd >= 0 {
            // Never started (or never closed): nobody is told but the close future.
            Glibc.close(fd)
            closePromise.succeed(())
        }
        receiveArrays.deallocate()
        sendArrays.deallocate()
    }

    /// A socket bound to `address`. Any thread; `start` it on `loop`.
    public static func bind(to address: SocketAddress, on loop: IOLoop, options: Options = Options()) throws -> UDPSocket {
        let fd = try makeSocket(for: address, options: options, "bind") { Glibc.bind($0, $1, $2) }
        return UDPSocket(loop: loop, fd: fd, remote: nil, options: options)
    }

    /// A socket connected to `address` (the kernel picks the local address and port, and reports
    /// ICMP errors for that peer). Any thread; `start` it on `loop`.
    public static func connect(to address: SocketAddress, on loop: IOLoop, options: Options = Options()) throws -> UDPSocket {
        let fd = try makeSocket(for: address, options: options, "connect") { Glibc.connect($0, $1, $2) }
        return UDPSocket(loop: loop, fd: fd, remote: address, options: options)
    }

    /// A new socket of `address`'s family, given `address` by `call` (bind or connect).
    private static func makeSocket(for address: SocketAddress, options: Options, _ reason: String,
                                   _ call: (CInt, UnsafePointer<sockaddr>, socklen_t) -> CInt) throws -> CInt {
        let fd = try makeSocket(family: address.protocol.rawValue, options: options)
        guard address.withSockAddr({ call(fd, $0, socklen_t($1)) }) == 0 else {
            let code = errno
            Glibc.close(fd)
            throw IOError(errnoCode: code, reason: reason)
        }
        return fd
    }

    private static func makeSocket(family: CInt, options: Options) throws -> CInt {
        let fd = socket(family, CInt(SOCK_DGRAM.rawValue) | CInt(SOCK_NONBLOCK.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw IOError(errnoCode: errno, reason: "socket") }
        // Sizes are requests: the kernel caps them at rmem_max/wmem_max; a refusal is no failure.
        _ = setOption(fd, SOL_SOCKET, SO_RCVBUF, CInt(options.receiveBufferSize))
        _ = setOption(fd, SOL_SOCKET, SO_SNDBUF, CInt(options.sendBufferSize))
        if options.reusePort, setOption(fd, SOL_SOCKET, SO_REUSEPORT, 1) != 0 {
            let code = errno
            Glibc.close(fd)
            throw IOError(errnoCode: code, reason: "setsockopt(SO_REUSEPORT)")
        }
        return fd
    }

    private static func setOption(_ fd: CInt, _ level: CInt, _ name: CInt, _ value: CInt) -> CInt {
        var value = value
        return setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<CInt>.size))
    }

    private static func localAddress(of fd: CInt) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard result == 0 else { return nil }
        return withUnsafeBytes(of: &storage) { socketAddress($0.baseAddress!, length: Int(length)) }
    }

    /// Sets an integer socket option; returns errno on failure, 0 on success.
    public func setOption(level: CInt, name: CInt, value: CInt) -> CInt {
        Self.setOption(fd, level, name, value) == 0 ? 0 : errno
    }

    public func getOption(level: CInt, name: CInt) -> CInt? {
        var value: CInt = 0
        var length = socklen_t(MemoryLayout<CInt>.size)
        return getsockopt(fd, level, name, &value, &length) == 0 ? value : nil
    }

    /// Registers with the loop and starts delivering to `delegate` (which the socket holds until
    /// it closes).
    public func start(delegate: UDPSocketDelegate) throws {
        loop.preconditionInEventLoop(file: #fileID, line: #line)
        self.delegate = delegate
        try loop.register(fd, handler: self)
    }

    /// Takes up to `batch` datagrams of up to `slot` bytes per recvmmsg from the next read on.
    public func setReceiveBatch(_ batch: Int, slot: Int) {
        receiveBatch = min(Self.maximumBatch, max(1, batch))
        receiveSlot = max(64, slot)
        receiveBuffer = ByteBufferAllocator().buffer(capacity: receiveBatch * receiveSlot)
    }

    /// Asks for UDP_GRO from the next read on (the slots must then hold 64 KiB); false where the
    /// kernel refuses, and datagrams keep arriving one by one.
    @discardableResult
    public func enableReceiveOffload() -> Bool {
        if !receiveOffload, fd >= 0 { _receiveOffload = dio_enable_receive_offload(fd) == 0 }
        return receiveOffload
    }

    /// Whether the kernel has UDP GSO is the same for every socket: asked once per process.
    private static let kernelSegments: Bool = {
        let fd = Glibc.socket(AF_INET, CInt(SOCK_DGRAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { Glibc.close(fd) }
        return dio_udp_segment_supported(fd) != 0
    }()

    public func setReadsPerWakeup(_ reads: Int) {
        readsPerWakeup = max(1, reads)
    }

    // MARK: Receiving

    public func readable() {
        guard fd >= 0, let delegate else { return }
        var delivered = false
        defer { if delivered, fd >= 0 { delegate.readBatchEnded() } }
        for _ in 0..<readsPerWakeup {
            let slot = receiveSlot
            let batch = receiveBatch
            // Fresh memory when the last read's datagrams are still held somewhere; else reused.
            receiveBuffer.clear()
            let base = receiveBuffer.withUnsafeMutableWritableBytes { $0.baseAddress! }
            let connected = remoteAddress != nil
            receiveArrays.reserve(batch)
            let receiveMessages = receiveArrays.messages, receiveVectors = receiveArrays.vectors
            let receiveNames = receiveArrays.names, receiveControl = receiveArrays.control
            for index in 0..<batch {
                receiveVectors[index] = iovec(iov_base: base + index * slot, iov_len: slot)
                var header = msghdr()
                if !connected {
                    header.msg_name = UnsafeMutableRawPointer(receiveNames + index)
                    header.msg_namelen = socklen_t(MemoryLayout<sockaddr_storage>.size)
                }
                header.msg_iov = receiveVectors + index
                header.msg_iovlen = 1
                if receiveOffload {
                    header.msg_control = receiveControl + index * Int(DIO_CONTROL_SPACE)
                    header.msg_controllen = Int(DIO_CONTROL_SPACE)
                }
                receiveMessages[index] = dio_mmsghdr(msg_hdr: header, msg_len: 0)
            }
            _counters.receiveCalls += 1
            let count = dio_recvmmsg(fd, receiveMessages, CUnsignedInt(batch))
            if count < 0 {
                let code = errno
                if code == EINTR { continue }
                if code != EAGAIN && code != EWOULDBLOCK {
                    // ICMP errors on a connected socket (ECONNREFUSED) come this way; the socket stays.
                    delegate.socketError(IOError(errnoCode: code, reason: "recvmmsg"))
                }
                return
            }
            receiveBuffer.moveWriterIndex(to: batch * slot)
            for index in 0..<Int(count) {
                let header = receiveMessages[index].msg_hdr
                guard header.msg_flags & CInt(MSG_TRUNC) == 0 else {
                    _counters.truncated += 1
                    continue
                }
                let peer: SocketAddress
                if let remoteAddress {
                    peer = remoteAddress
                } else if let address = peers.address(UnsafeRawPointer(receiveNames + index), length: Int(header.msg_namelen)) {
                    peer = address
                } else {
                    _counters.unreadableAddresses += 1
                    continue
                }
                let length = Int(receiveMessages[index].msg_len)
                var segmentSize = 0
                if receiveOffload {
                    withUnsafePointer(to: &receiveMessages[index].msg_hdr) { segmentSize = Int(dio_received_segment_size($0)) }
                    if segmentSize >= length { segmentSize = 0 }
                }
                guard let datagram = receiveBuffer.getSlice(at: index * slot, length: length) else { continue }
                _counters.datagramsReceived += 1
                if segmentSize > 0 { _counters.coalescedReceives += 1 }
                delivered = true
                delegate.received(datagram, segmentSize: segmentSize, from: peer)
                // The delegate may have closed the socket.
                guard fd >= 0 else { return }
            }
            if Int(count) < batch { return }
        }
    }

    // MARK: Sending

    /// Queues `data` for `address` (ignored on a connected socket): one datagram, or with
    /// `segmentSize` > 0 a run of datagrams of that size (the last may be shorter). `flush` sends.
    public func enqueue(_ data: ByteBuffer, segmentSize: Int = 0, to address: SocketAddress?) {
        guard fd >= 0, !refused else { return }
        guard pendingBytes + data.readableBytes <= Self.maximumQueuedBytes else {
            _counters.queueDrops += segmentSize > 0 ? (data.readableBytes + segmentSize - 1) / segmentSize : 1
            return
        }
        pendingBytes += data.readableBytes
        let address = remoteAddress == nil ? address : nil
        guard segmentSize > 0, data.readableBytes > segmentSize else {
            pending.append(Pending(data: data, segmentSize: 0, address: address))
            return
        }
        guard segmentationOffload else {
            split(data, segmentSize: segmentSize, address: address, into: &pending)
            return
        }
        // A GSO send holds at most 64 segments and one IP datagram's worth of bytes.
        let perSend = max(1, min(64, 65_000 / segmentSize)) * segmentSize
        var rest = data
        while rest.readableBytes > 0, let part = rest.readSlice(length: min(perSend, rest.readableBytes)) {
            pending.append(Pending(data: part, segmentSize: part.readableBytes > segmentSize ? segmentSize : 0,
                                   address: address))
        }
    }

    private func split(_ data: ByteBuffer, segmentSize: Int, address: SocketAddress?, into queue: inout [Pending]) {
        var rest = data
        while rest.readableBytes > 0, let datagram = rest.readSlice(length: min(segmentSize, rest.readableBytes)) {
            queue.append(Pending(data: datagram, segmentSize: 0, address: address))
        }
    }

    /// Sends everything queued, as few sendmmsg calls as it takes. A full send buffer leaves the
    /// rest queued until the socket is writable.
    public func flush() {
        guard fd >= 0, !waitingForWritable, !refused else { return }
        while pendingHead < pending.count {
            let count = min(Self.maximumBatch, pending.count - pendingHead)
            sendArrays.reserve(count)
            for index in 0..<count {
                prepare(index, pending[pendingHead + index])
            }
            _counters.sendCalls += 1
            let sent = dio_sendmmsg(fd, sendArrays.messages, CUnsignedInt(count))
            if sent > 0 {
                for index in 0..<Int(sent) {
                    if pending[pendingHead + index].segmentSize > 0 { _counters.segmentedSends += 1 }
                    pendingBytes -= pending[pendingHead + index].data.readableBytes
                }
                _counters.messagesSent += Int(sent)
                pendingHead += Int(sent)
                continue
            }
            guard handleSendError(errno) else { return }
        }
        pending.removeAll(keepingCapacity: true)
        pendingHead = 0
        pendingBytes = 0
    }

    private func prepare(_ index: Int, _ message: Pending) {
        let sendMessages = sendArrays.messages, sendVectors = sendArrays.vectors
        let sendNames = sendArrays.names, sendControl = sendArrays.control
        // The buffer stays alive in `pending` until sendmmsg has copied it.
        let bytes = message.data.withUnsafeReadableBytes { $0 }
        sendVectors[index] = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress),
                                   iov_len: bytes.count)
        var header = msghdr()
        if let address = message.address {
            address.withSockAddr { pointer, length in
                UnsafeMutableRawPointer(sendNames + index).copyMemory(from: pointer, byteCount: length)
                header.msg_namelen = socklen_t(length)
            }
            header.msg_name = UnsafeMutableRawPointer(sendNames + index)
        }
        header.msg_iov = sendVectors + index
        header.msg_iovlen = 1
        if message.segmentSize > 0 {
            dio_set_segment_size(&header, sendControl + index * Int(DIO_CONTROL_SPACE), UInt16(message.segmentSize))
        }
        sendMessages[index] = dio_mmsghdr(msg_hdr: header, msg_len: 0)
    }

    /// The first queued message failed with `code`. True: go on sending; false: stop for now.
    private func handleSendError(_ code: CInt) -> Bool {
        let first = pending[pendingHead]
        switch code {
        case EINTR:
            return true
        case EAGAIN, EWOULDBLOCK, ENOBUFS:
            _counters.sendWaits += 1
            waitingForWritable = true
            loop.setInterest(fd, writable: true)
            return false
        case EIO where first.segmentSize > 0, EINVAL where first.segmentSize > 0, EOPNOTSUPP where first.segmentSize > 0:
            // This path cannot segment (no checksum offload, a device without it): never again.
            _counters.segmentationRefusals += 1
            _segmentationOffload = false
            var rest: [Pending] = []
            rest.reserveCapacity(pending.count - pendingHead)
            for message in pending[pendingHead...] {
                if message.segmentSize > 0 {
                    split(message.data, segmentSize: message.segmentSize, address: message.address, into: &rest)
                } else {
                    rest.append(message)
                }
            }
            pending = rest
            pendingHead = 0
            return true
        case EMSGSIZE where first.segmentSize > 0:
            // This run is too large for the path: its datagrams go one by one.
            var singles: [Pending] = []
            split(first.data, segmentSize: first.segmentSize, address: first.address, into: &singles)
            pending.replaceSubrange(pendingHead...pendingHead, with: singles)
            return true
        case ECONNREFUSED where remoteAddress != nil:
            // The peer's port is closed (ICMP): the socket is of no more use, as NIO's is not. What
            // the peer sent before it closed may still be queued (a TCP RST that says why), so
            // that is read first, on the loop's next turn, outside this flush.
            refused = true
            dropPending()
            loop.execute { [self] in closeAfterRefusal(code) }
            return false
        default:
            _counters.sendErrors += 1
            pendingBytes -= first.data.readableBytes
            pendingHead += 1
            delegate?.socketError(IOError(errnoCode: code, reason: "sendmmsg"))
            return fd >= 0
        }
    }

    /// Forgets every datagram still queued for sending.
    private func dropPending() {
        pending.removeAll()
        pendingHead = 0
        pendingBytes = 0
    }

    /// Delivers what is queued, then reports the refusal and closes (unless a delivery closed it).
    private func closeAfterRefusal(_ code: CInt) {
        guard fd >= 0 else { return }
        readable()
        guard fd >= 0 else { return }
        delegate?.socketError(IOError(errnoCode: code, reason: "sendmmsg"))
        close()
    }

    public func writable() {
        guard fd >= 0 else { return }
        waitingForWritable = false
        loop.setInterest(fd, writable: false)
        flush()
    }

    /// Datagrams queued and not yet sent.
    public var pendingCount: Int { pending.count - pendingHead }

    // MARK: Closing

    /// Closes the socket: queued datagrams are dropped (flush first to send them), the delegate
    /// hears `socketClosed` on the loop's next turn and is released.
    public func close() {
        loop.preconditionInEventLoop(file: #fileID, line: #line)
        guard fd >= 0 else { return }
        loop.deregister(fd)
        Glibc.close(fd)
        _fd = -1
        dropPending()
        let delegate = self.delegate
        self.delegate = nil
        let promise = closePromise
        loop._executeIsolatedUnsafeUnchecked {
            delegate?.socketClosed()
            promise.succeed(())
        }
    }

    /// Attaches a classic BPF program (an array of struct sock_filter) to the socket's
    /// SO_REUSEPORT group; returns errno on failure, 0 on success.
    public func attachReuseportProgram(_ instructions: UnsafeRawPointer, count: Int) -> CInt {
        dio_attach_reuseport_cbpf(fd, instructions, UInt16(count)) == 0 ? 0 : errno
    }
}

/// The mmsghdr, iovec, address and control arrays of one direction, grown to the largest batch
/// asked for and reused: a client socket that reads and writes a datagram at a time keeps one of
/// each, not a listener's 64.
private struct MessageArrays {
    private(set) var capacity = 0
    private(set) var messages = UnsafeMutablePointer<dio_mmsghdr>.allocate(capacity: 0)
    private(set) var vectors = UnsafeMutablePointer<iovec>.allocate(capacity: 0)
    private(set) var names = UnsafeMutablePointer<sockaddr_storage>.allocate(capacity: 0)
    private(set) var control = UnsafeMutableRawPointer.allocate(byteCount: 0, alignment: 16)

    mutating func reserve(_ count: Int) {
        guard count > capacity else { return }
        deallocate()
        // Doubling (to the batch limit) keeps a socket whose batches grow from reallocating often.
        capacity = min(UDPSocket.maximumBatch, max(count, capacity * 2))
        messages = .allocate(capacity: capacity)
        vectors = .allocate(capacity: capacity)
        names = .allocate(capacity: capacity)
        control = .allocate(byteCount: capacity * Int(DIO_CONTROL_SPACE), alignment: 16)
    }

    func deallocate() {
        messages.deallocate()
        vectors.deallocate()
        names.deallocate()
        control.deallocate()
    }
}
