import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
import TOUDTLS
@testable import TOUNIO

/// Server side of the backpressure test: reads nothing (autoRead off) until `resume`, then reads
/// everything, checking it against `Pattern`, until the peer's FIN closes the channel.
final class PausedReader: ChannelInboundHandler, @unchecked Sendable {  // on its channel's loop
    typealias InboundIn = ByteBuffer

    var received = 0
    var intact = true
    /// What the channel read and what TCP held when the pause ended.
    var receivedDuringPause = 0
    var bufferedAtResume = 0
    var receiveBufferAtResume = 0
    let done: EventLoopPromise<Void>
    let pause: TimeAmount

    init(done: EventLoopPromise<Void>, pause: TimeAmount) {
        self.done = done
        self.pause = pause
    }

    func channelActive(context: ChannelHandlerContext) {
        let channel = context.channel as! TOUChannel
        context.eventLoop.assumeIsolated().scheduleTask(in: pause) {
            self.receivedDuringPause = self.received
            self.bufferedAtResume = channel.bufferedInboundBytes
            self.receiveBufferAtResume = channel.receiveBufferLimit
            _ = channel.setOption(.autoRead, value: true)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let chunk = unwrapInboundIn(data)
        if intact, !Pattern.matches(chunk, offset: received) { intact = false }
        received += chunk.readableBytes
    }

    func channelInactive(context: ChannelHandlerContext) {
        done.succeed(())
    }
}

/// Client side: writes `total` bytes of `Pattern` as writability allows, then half-closes.
final class WritabilityWatchingWriter: ChannelInboundHandler, @unchecked Sendable {  // on its channel's loop
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let total: Int
    var sent = 0
    var becameUnwritable = false
    var becameWritableAgain = false
    let allWritten: EventLoopPromise<Void>

    init(total: Int, allWritten: EventLoopPromise<Void>) {
        self.total = total
        self.allWritten = allWritten
    }

    func channelActive(context: ChannelHandlerContext) {
        writeMore(context: context)
        context.fireChannelActive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            if becameUnwritable { becameWritableAgain = true }
            writeMore(context: context)
        } else {
            becameUnwritable = true
        }
    }

    private func writeMore(context: ChannelHandlerContext) {
        while sent < total && context.channel.isWritable {
            let chunk = Pattern.chunk(offset: sent, count: total - sent)
            sent += chunk.readableBytes
            context.writeAndFlush(wrapOutboundOut(chunk), promise: nil)
        }
        if sent == total {
            sent += 1  // once
            context.close(mode: .output, promise: nil)
            allWritten.succeed(())
        }
    }
}

/// Records what reaches the end of a pipeline.
final class EventRecorder: ChannelInboundHandler, @unchecked Sendable {  // on its channel's loop
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    var received = ByteBuffer()
    var events: [String] = []
    var addressesAtActive: (local: SocketAddress?, remote: SocketAddress?)
    var errors: [Error] = []
    /// Written back once the input is closed (the half-closure test's server).
    let answerOnInputClosed: Bool

    init(answerOnInputClosed: Bool = false) {
        self.answerOnInputClosed = answerOnInputClosed
    }

    func channelActive(context: ChannelHandlerContext) {
        addressesAtActive = (context.channel.localAddress, context.channel.remoteAddress)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var chunk = unwrapInboundIn(data)
        received.writeBuffer(&chunk)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event as? ChannelEvent {
        case .inputClosed?:
            events.append("inputClosed")
            if answerOnInputClosed {
                let answer = ByteBuffer(string: "got \(received.readableBytes) bytes")
                let channel = context.channel
                context.writeAndFlush(wrapOutboundOut(answer)).whenComplete { _ in channel.close(promise: nil) }
            }
        case .outputClosed?:
            events.append("outputClosed")
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        errors.append(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        events.append("inactive")
    }
}

/// Counts the channels a server channel hands on, and passes them on.
final class ChildCounter: ChannelInboundHandler, @unchecked Sendable {  // on the server's loop
    typealias InboundIn = Channel
    typealias InboundOut = Channel
    var children = 0

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        children += 1
        context.fireChannelRead(data)
    }
}

/// Writes back what it reads.
final class EchoHandler: ChannelInboundHandler, @unchecked Sendable {  // on its channel's loop
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.writeAndFlush(data, promise: nil)
    }
}

@Suite("TOUChannel semantics", .timeLimit(.minutes(1)))
struct ChannelSemanticsTests {
    @Test("a server that stops reading holds the client back within its receive buffer; every byte arrives")
    func backpressure() async throws {
        let total = 50 << 20
        let serverDone = TestSetup.group.next().makePromise(of: Void.self)
        let readers = NIOLockedValueBox<[(PausedReader, Channel)]>([])
        let server = try await TOUServerBootstrap(group: TestSetup.group, configuration: TestSetup.server)
            .childChannelOption(.autoRead, value: false)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let reader = PausedReader(done: serverDone, pause: .seconds(5))
                    readers.withLockedValue { $0.append((reader, channel)) }
                    try channel.pipeline.syncOperations.addHandler(reader)
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = try #require(server.localAddress?.port)
        let allWritten = TestSetup.group.next().makePromise(of: Void.self)
        let writer = WritabilityWatchingWriter(total: total, allWritten: allWritten)
        let client = try await TOUClientBootstrap(group: TestSetup.group, configuration: TestSetup.client)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(writer) }
            }
            .connect(host: "127.0.0.1", port: port).get()
        try await serverDone.futureResult.get()
        try await allWritten.futureResult.get()
        try await client.closeFuture.get()

        // The accepted channel runs on its listener worker's loop.
        let (reader, child) = try #require(readers.withLockedValue { $0.first })
        try await child.eventLoop.submit {
            #expect(reader.receivedDuringPause == 0, "the channel read while autoRead was off")
            #expect(reader.bufferedAtResume > 0)
            // TCP's receive buffer auto-tunes up from the configured 4 MiB to at most 16 MiB (its
            // current size is reported below); what the connection holds stays within that, a
            // fraction of the 50 MB the client tried to send. (It may pass the current size by a
            // few KB: TCPConnection.windowField rounds an unaligned window up to the scale's unit
            // on each ACK, which moves the right edge on while nothing is read.)
            #expect(reader.bufferedAtResume <= 16 << 20,
                    "TCP held \(reader.bufferedAtResume) bytes (its buffer: \(reader.receiveBufferAtResume))")
            #expect(reader.received == total)
            #expect(reader.intact)
        }.get()
        try await client.eventLoop.submit {
            #expect(writer.becameUnwritable)
            #expect(writer.becameWritableAgain)
        }.get()
        try await server.close()
    }

    @Test("with allowRemoteHalfClosure the server sees inputClosed and still answers; close(mode: .output) sends FIN")
    func halfClosure() async throws {
        let serverRecorder = NIOLockedValueBox<(EventRecorder, Channel)?>(nil)
        let server = try await TOUServerBootstrap(group: TestSetup.group, configuration: TestSetup.server)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let recorder = EventRecorder(answerOnInputClosed: true)
                    serverRecorder.withLockedValue { $0 = (recorder, channel) }
                    try channel.pipeline.syncOperations.addHandler(recorder)
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = try #require(server.localAddress?.port)
        let clientRecorder = EventRecorder()
        let client = try await TOUClientBootstrap(group: TestSetup.group, configuration: TestSetup.client)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(clientRecorder) }
            }
            .connect(host: "127.0.0.1", port: port).get()
        #expect(client.remoteAddress?.port == port)
        #expect(client.localAddress?.port != nil)
        try await client.writeAndFlush(ByteBuffer(string: "hello, half-closed world"))
        // In one turn of the loop: the answer and the server's close may follow the FIN at once.
        let lateWrite = try await client.eventLoop.submit {
            client.close(mode: .output, promise: nil)
            return client.writeAndFlush(ByteBuffer(string: "too late"))
        }.get()
        await #expect(throws: ChannelError.outputClosed) { try await lateWrite.get() }
        try await client.closeFuture.get()
        try await client.eventLoop.submit {
            #expect(String(buffer: clientRecorder.received) == "got 24 bytes")
            #expect(clientRecorder.events == ["outputClosed", "inactive"])
            #expect(clientRecorder.errors.isEmpty)
        }.get()
        let (recorder, child) = try #require(serverRecorder.withLockedValue { $0 })
        let clientLocal = try #require(client.localAddress)
        try await child.eventLoop.submit {
            #expect(recorder.events.first == "inputClosed")
            #expect(recorder.errors.isEmpty)
            #expect(recorder.addressesAtActive.remote == clientLocal)
            #expect(recorder.addressesAtActive.local?.port == port)
        }.get()
        try await server.close()
    }

    @Test("options TOU cannot honour fail with operationUnsupported; the ones it has work")
    func unsupportedOptions() async throws {
        await #expect(throws: ChannelError.operationUnsupported) {
            _ = try await TOUServerBootstrap(group: TestSetup.group, configuration: TestSetup.server)
                .serverChannelOption(.backlog, value: 256)
                .bind(host: "127.0.0.1", port: 0).get()
        }
        let server = try await TOUServerBootstrap(group: TestSetup.group, configuration: TestSetup.server)
            .bind(to: try SocketAddress(ipAddress: "127.0.0.1", port: 0)).get()
        let port = try #require(server.localAddress?.port)
        await #expect(throws: ChannelError.operationUnsupported) {
            _ = try await TOUClientBootstrap(group: TestSetup.group, configuration: TestSetup.client)
                .channelOption(.socketOption(.so_reuseaddr), value: 1)
                .connect(host: "127.0.0.1", port: port).get()
        }
        // TCP_NODELAY as the configuration has it (off) is accepted, before the connection is up too.
        let client = try await TOUClientBootstrap(group: TestSetup.group, configuration: TestSetup.client)
            .channelOption(.writeBufferWaterMark, value: .init(low: 1024, high: 4096))
            .channelOption(.tcpOption(.tcp_nodelay), value: 0)
            .connect(to: try #require(server.localAddress)).get()
        let waterMark = try await client.getOption(.writeBufferWaterMark).get()
        #expect(waterMark.low == 1024 && waterMark.high == 4096)
        #expect(try await client.getOption(.tcpOption(.tcp_nodelay)).get() == 0)
        await #expect(throws: ChannelError.operationUnsupported) {
            try await client.setOption(.tcpOption(.tcp_nodelay), value: 1).get()
        }
        await #expect(throws: ChannelError.operationUnsupported) {
            try await client.setOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator()).get()
        }
        await #expect(throws: ChannelError.operationUnsupported) {
            try await client.close(mode: .input)
        }
        try await client.close()
        try await server.close()
    }

    @Test("a reset by the peer reaches errorCaught as TOUError, then the channel closes")
    func resetReachesErrorCaught() async throws {
        // The peer is a TOUConnection: the channel and the async API interoperate.
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: TestSetup.server)
        let recorder = EventRecorder()
        let client = try await TOUClientBootstrap(group: TestSetup.group, configuration: TestSetup.client)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(recorder) }
            }
            .connect(host: "127.0.0.1", port: try #require(listener.localAddress.port)).get()
        try await client.writeAndFlush(ByteBuffer(string: "ping"))
        var accepted = listener.connections.makeAsyncIterator()
        let connection = try #require(await accepted.next())
        var inbound = connection.inbound.makeAsyncIterator()
        #expect(try await inbound.next().map { String(buffer: $0) } == "ping")
        await connection.abort()
        try await client.closeFuture.get()
        try await client.eventLoop.submit {
            #expect(recorder.errors.map { $0 as? TOUError } == [.connectionReset])
            #expect(recorder.events == ["inactive"])
        }.get()
        try await listener.close()
    }

    @Test("remoteAddress follows the client when a NAT between them rebinds; answers reach it there")
    func remoteAddressFollowsRebinding() async throws {
        let serverRecorder = NIOLockedValueBox<(EventRecorder, Channel)?>(nil)
        let server = try await TOUServerBootstrap(group: TestSetup.group, configuration: TestSetup.server)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let recorder = EventRecorder()
                    serverRecorder.withLockedValue { $0 = (recorder, channel) }
                    try channel.pipeline.syncOperations.addHandler(recorder)
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let relay = try await RebindingRelay.start(toward: try #require(server.localAddress), on: TestSetup.group.next())
        let clientRecorder = EventRecorder()
        let client = try await TOUClientBootstrap(group: TestSetup.group, configuration: TestSetup.client)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(clientRecorder) }
            }
            .connect(host: "127.0.0.1", port: try #require(relay.frontAddress?.port)).get()

        /// Waits (at most 10 s: a correctness bound, not a speed one) until `condition` holds on the loop.
        func eventually(on channel: Channel, _ condition: @escaping @Sendable () -> Bool) async throws -> Bool {
            for _ in 0..<1000 {
                if try await channel.eventLoop.submit(condition).get() { return true }
                try await Task.sleep(nanoseconds: 10_000_000)
            }
            return false
        }

        try await client.writeAndFlush(ByteBuffer(string: "before "))
        let (recorder, child) = try #require(await {
            for _ in 0..<1000 {
                if let found = serverRecorder.withLockedValue({ $0 }) { return found }
                try? await Task.sleep(nanoseconds: 10_000_000)
            }
            return nil
        }())
        #expect(try await eventually(on: child) { recorder.received.readableBytes == 7 })
        let firstPort = try await relay.upstreamPort
        #expect(child.remoteAddress?.port == firstPort)

        let secondPort = try await relay.rebind()
        #expect(secondPort != firstPort)
        try await client.writeAndFlush(ByteBuffer(string: "after"))
        #expect(try await eventually(on: child) { String(buffer: recorder.received) == "before after" })
        #expect(child.remoteAddress?.port == secondPort)
        try await child.writeAndFlush(ByteBuffer(string: "answer"))
        #expect(try await eventually(on: client) { String(buffer: clientRecorder.received) == "answer" })

        try await client.close()
        try await child.closeFuture.get()  // the client's FIN arrived through the relay
        try await relay.close()
        try await server.close()
    }

    @Test("with autoRead off each read() takes at most maxMessagesPerRead buffers out of TCP")
    func explicitReads() async throws {
        let serverChild = NIOLockedValueBox<(EventRecorder, TOUChannel)?>(nil)
        let server = try await TOUServerBootstrap(group: TestSetup.group, configuration: TestSetup.server)
            .childChannelOption(.autoRead, value: false)
            .childChannelOption(.maxMessagesPerRead, value: 2)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let recorder = EventRecorder()
                    serverChild.withLockedValue { $0 = (recorder, channel as! TOUChannel) }
                    try channel.pipeline.syncOperations.addHandler(recorder)
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let client = try await TOUClientBootstrap(group: TestSetup.group, configuration: TestSetup.client)
            .connect(host: "127.0.0.1", port: try #require(server.localAddress?.port)).get()
        let total = 600 * 1024
        try await client.writeAndFlush(Pattern.chunk(offset: 0, count: Pattern.cycle)).get()
        var offset = Pattern.cycle
        while offset < total {
            let chunk = Pattern.chunk(offset: offset, count: min(Pattern.cycle, total - offset))
            offset += chunk.readableBytes
            try await client.writeAndFlush(chunk).get()
        }
        var found: (EventRecorder, TOUChannel)?
        for _ in 0..<1000 {
            found = serverChild.withLockedValue { $0 }
            if let (_, child) = found, try await child.eventLoop.submit({ child.bufferedInboundBytes }).get() == total { break }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        let (recorder, child) = try #require(found)
        let afterReads = try await child.eventLoop.submit {
            var received: [Int] = [recorder.received.readableBytes]
            for _ in 0..<3 {
                child.read()
                received.append(recorder.received.readableBytes)
            }
            return received
        }.get()
        // 64 KiB buffers (TOUChannel.readChunk), two per read().
        #expect(afterReads == [0, 128 * 1024, 256 * 1024, 384 * 1024])
        try await child.eventLoop.submit {
            #expect(Pattern.matches(recorder.received, offset: 0))
            #expect(child.bufferedInboundBytes == total - 384 * 1024)
        }.get()
        try await client.close()
        try await server.close()
    }

    @Test("a server channel that does not read holds accepted connections up to acceptBacklog and refuses the rest")
    func acceptBacklog() async throws {
        var configuration = TestSetup.server
        configuration.acceptBacklog = 2
        let counter = ChildCounter()
        let server = try await TOUServerBootstrap(group: TestSetup.group, configuration: configuration)
            .serverChannelOption(.autoRead, value: false)
            .serverChannelOption(.maxMessagesPerRead, value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(counter) }
            }
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(EchoHandler()) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = try #require(server.localAddress?.port)
        var clients: [(Channel, EventRecorder)] = []
        for _ in 0..<3 {
            // The listener takes each connection as its SYN arrives, before the client's connect returns.
            let recorder = EventRecorder()
            let client = try await TOUClientBootstrap(group: TestSetup.group, configuration: TestSetup.client)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(recorder) }
                }
                .connect(host: "127.0.0.1", port: port).get()
            clients.append((client, recorder))
        }
        // The third found the backlog full: reset.
        let (refused, refusedRecorder) = clients[2]
        try await refused.closeFuture.get()
        try await refused.eventLoop.submit {
            #expect(refusedRecorder.errors.map { $0 as? TOUError } == [.connectionReset])
        }.get()
        #expect(try await server.eventLoop.submit { counter.children }.get() == 0)
        // Each read() hands on one waiting connection (maxMessagesPerRead 1), oldest first.
        let afterReads = try await server.eventLoop.submit {
            server.read()
            let first = counter.children
            server.read()
            return [first, counter.children]
        }.get()
        #expect(afterReads == [1, 2])
        for (client, recorder) in clients.prefix(2) {
            try await client.writeAndFlush(ByteBuffer(string: "echo"))
            var echoed = ""
            for _ in 0..<1000 where echoed != "echo" {
                echoed = try await client.eventLoop.submit { String(buffer: recorder.received) }.get()
                try await Task.sleep(nanoseconds: 10_000_000)
            }
            #expect(echoed == "echo")
            try await client.close()
        }
        try await server.close()
    }

    @Test("closing the server channel stops accepting; connections it accepted go on")
    func serverCloseLeavesChildren() async throws {
        let server = try await TOUServerBootstrap(group: TestSetup.group, configuration: TestSetup.server)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(EchoHandler())
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = try #require(server.localAddress?.port)
        let recorder = EventRecorder()
        let client = try await TOUClientBootstrap(group: TestSetup.group, configuration: TestSetup.client)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(recorder) }
            }
            .connect(host: "127.0.0.1", port: port).get()
        try await server.close()
        #expect(!server.isActive)
        try await client.writeAndFlush(ByteBuffer(string: "still here"))
        var echoed = ""
        for _ in 0..<1000 where echoed != "still here" {
            echoed = try await client.eventLoop.submit { String(buffer: recorder.received) }.get()
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        #expect(echoed == "still here")
        await #expect(throws: (any Error).self) {
            _ = try await TOUClientBootstrap(group: TestSetup.group, configuration: TestSetup.client)
                .connectTimeout(.seconds(1))
                .connect(host: "127.0.0.1", port: port).get()
        }
        try await client.close()
    }

    @Test("a peer that never answers fails the connect with connectTimeout")
    func connectTimeout() async throws {
        // A UDP socket that takes every datagram and answers none.
        let silent = try await DatagramBootstrap(group: TestSetup.group).bind(host: "127.0.0.1", port: 0).get()
        let started = NIODeadline.now()
        await #expect(throws: ChannelError.connectTimeout(.milliseconds(300))) {
            _ = try await TOUClientBootstrap(group: TestSetup.group, configuration: TestSetup.client)
                .connectTimeout(.milliseconds(300))
                .connect(host: "127.0.0.1", port: try #require(silent.localAddress?.port)).get()
        }
        #expect(NIODeadline.now() - started < .seconds(5))
        try await silent.close()
    }

    @Test("a server whose certificate is not trusted fails the connect with TOUError")
    func untrustedServer() async throws {
        let server = try await TOUServerBootstrap(group: TestSetup.group, configuration: TestSetup.server)
            .bind(host: "127.0.0.1", port: 0).get()
        var configuration = TestSetup.client
        configuration.serverName = "not-localhost.example"
        let error = await #expect(throws: TOUError.self) {
            _ = try await TOUClientBootstrap(group: TestSetup.group, configuration: configuration)
                .connect(host: "127.0.0.1", port: try #require(server.localAddress?.port)).get()
        }
        #expect(error?.isAuthenticationFailure == true)
        try await server.close()
    }
}
