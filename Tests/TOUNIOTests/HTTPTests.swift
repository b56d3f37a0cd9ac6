import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing
import TOUDTLS
@testable import TOUNIO

/// Serves `GET /bytes/N` (N bytes of `Pattern`, written as the channel's writability allows)
/// and any other path as the text "path <uri>".
final class PatternHTTPServer: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private var remaining = 0
    private var offset = 0
    private var keepAlive = true

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data) else {
            if case .end = unwrapInboundIn(data), remaining == 0 { return }
            return
        }
        keepAlive = head.isKeepAlive
        var headers = HTTPHeaders()
        if head.uri.hasPrefix("/bytes/"), let count = Int(head.uri.dropFirst("/bytes/".count)) {
            headers.add(name: "Content-Length", value: "\(count)")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers))),
                          promise: nil)
            remaining = count
            offset = 0
            writeBody(context: context)
        } else {
            let body = ByteBuffer(string: "path \(head.uri)")
            headers.add(name: "Content-Length", value: "\(body.readableBytes)")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers))),
                          promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }

    /// Writes while the channel is writable; the rest when it is again.
    private func writeBody(context: ChannelHandlerContext) {
        while remaining > 0 && context.channel.isWritable {
            let chunk = Pattern.chunk(offset: offset, count: remaining)
            remaining -= chunk.readableBytes
            offset += chunk.readableBytes
            context.write(wrapOutboundOut(.body(.byteBuffer(chunk))), promise: nil)
            if remaining == 0 {
                context.write(wrapOutboundOut(.end(nil)), promise: nil)
            }
            context.flush()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if remaining > 0 { writeBody(context: context) }
        context.fireChannelWritabilityChanged()
    }
}

typealias HTTPClientChannel = NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>

enum HTTPTestClient {
    static func connect(port: Int) async throws -> HTTPClientChannel {
        try await TOUClientBootstrap(group: TestSetup.group, configuration: TestSetup.client)
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    return try HTTPClientChannel(wrappingChannelSynchronously: channel)
                }
            }
    }

    /// One GET on a keep-alive connection: the status and the body's bytes, checked against the
    /// pattern as they arrive when `pattern` is set (nothing is kept then; the body is empty).
    static func get(_ uri: String, pattern: Bool = false,
                    iterator: inout NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator,
                    outbound: NIOAsyncChannelOutboundWriter<HTTPClientRequestPart>) async throws -> (HTTPResponseStatus, ByteBuffer, Int) {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: "localhost")
        try await outbound.write(.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: uri, headers: headers)))
        try await outbound.write(.end(nil))
        var status: HTTPResponseStatus?
        var body = ByteBuffer()
        var received = 0
        while let part = try await iterator.next() {
            switch part {
            case .head(let head):
                status = head.status
            case .body(let chunk):
                if pattern {
                    #expect(Pattern.matches(chunk, offset: received), "body differs at \(received)")
                } else {
                    body.writeImmutableBuffer(chunk)
                }
                received += chunk.readableBytes
            case .end:
                return (status ?? .internalServerError, body, received)
            }
        }
        throw TOUError.closed
    }
}

@Suite("NIOHTTP1 over TOU channels", .timeLimit(.minutes(1)))
struct HTTPTests {
    static func startServer() async throws -> Channel {
        try await TOUServerBootstrap(group: TestSetup.group, configuration: TestSetup.server)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(PatternHTTPServer())
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    @Test("100 requests on one keep-alive connection, the last with a 20 MB body")
    func keepAlive() async throws {
        let server = try await Self.startServer()
        let port = try #require(server.localAddress?.port)
        let client = try await HTTPTestClient.connect(port: port)
        try await client.executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            for index in 0..<99 {
                let (status, body, _) = try await HTTPTestClient.get("/item/\(index)", iterator: &iterator, outbound: outbound)
                #expect(status == .ok)
                #expect(String(buffer: body) == "path /item/\(index)")
            }
            let size = 20 << 20
            let (status, _, received) = try await HTTPTestClient.get("/bytes/\(size)", pattern: true,
                                                                     iterator: &iterator, outbound: outbound)
            #expect(status == .ok)
            #expect(received == size)
        }
        try await server.close()
    }

    @Test("20 connections at once, each with its own requests")
    func concurrentConnections() async throws {
        let server = try await Self.startServer()
        let port = try #require(server.localAddress?.port)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for connection in 0..<20 {
                group.addTask {
                    let client = try await HTTPTestClient.connect(port: port)
                    try await client.executeThenClose { inbound, outbound in
                        var iterator = inbound.makeAsyncIterator()
                        let (status, body, _) = try await HTTPTestClient.get("/c/\(connection)", iterator: &iterator,
                                                                           outbound: outbound)
                        #expect(status == .ok)
                        #expect(String(buffer: body) == "path /c/\(connection)")
                        let size = 256 * 1024 + connection
                        let (_, _, received) = try await HTTPTestClient.get("/bytes/\(size)", pattern: true,
                                                                            iterator: &iterator, outbound: outbound)
                        #expect(received == size)
                    }
                }
            }
            try await group.waitForAll()
        }
        try await server.close()
    }
}
