import NIOCore
import NIOPosix

/// A UDP relay between one client and a server that can change its own source port toward the
/// server mid-connection, as a NAT that rebinds does. Everything runs on `loop`.
final class RebindingRelay: @unchecked Sendable {  // state touched on `loop` only
    let loop: EventLoop
    let server: SocketAddress
    private var front: Channel?
    private var upstream: Channel?
    private var client: SocketAddress?

    private init(loop: EventLoop, server: SocketAddress) {
        self.loop = loop
        self.server = server
    }

    /// The relay's address for the client to connect to.
    var frontAddress: SocketAddress? { front?.localAddress }

    static func start(toward server: SocketAddress, on loop: EventLoop) async throws -> RebindingRelay {
        let relay = RebindingRelay(loop: loop, server: server)
        let front = try await DatagramBootstrap(group: loop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Forwarder { envelope in relay.fromClient(envelope) })
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let upstream = try await relay.openUpstream()
        try await loop.submit {
            relay.front = front
            relay.upstream = upstream
        }.get()
        return relay
    }

    /// Moves to a new source port toward the server (the old one is closed); returns the new port.
    func rebind() async throws -> Int {
        let fresh = try await openUpstream()
        return try await loop.submit {
            self.upstream?.close(promise: nil)
            self.upstream = fresh
            return fresh.localAddress!.port!
        }.get()
    }

    /// The source port the server sees now.
    var upstreamPort: Int {
        get async throws { try await loop.submit { self.upstream!.localAddress!.port! }.get() }
    }

    func close() async throws {
        try await loop.submit {
            self.front?.close(promise: nil)
            self.upstream?.close(promise: nil)
        }.get()
    }

    private func openUpstream() async throws -> Channel {
        try await DatagramBootstrap(group: loop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Forwarder { [weak self] envelope in self?.fromServer(envelope) })
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    private func fromClient(_ envelope: AddressedEnvelope<ByteBuffer>) {
        client = envelope.remoteAddress
        upstream?.writeAndFlush(AddressedEnvelope(remoteAddress: server, data: envelope.data), promise: nil)
    }

    private func fromServer(_ envelope: AddressedEnvelope<ByteBuffer>) {
        guard let client else { return }
        front?.writeAndFlush(AddressedEnvelope(remoteAddress: client, data: envelope.data), promise: nil)
    }

    private final class Forwarder: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>
        let forward: (AddressedEnvelope<ByteBuffer>) -> Void

        init(_ forward: @escaping (AddressedEnvelope<ByteBuffer>) -> Void) {
            self.forward = forward
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            forward(unwrapInboundIn(data))
        }
    }
}
