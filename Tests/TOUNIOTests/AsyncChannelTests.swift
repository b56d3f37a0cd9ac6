import NIOCore
import NIOPosix
import Testing
import TOUDTLS
import TOUNIO

@Suite("NIOAsyncChannel over TOU bootstraps", .timeLimit(.minutes(1)))
struct AsyncChannelTests {
    @Test("an echo server and client with NIOAsyncChannel, ended by the client's half-close", .timeLimit(.minutes(1)))
    func echo() async throws {
        // One worker: its loop is the group's next after the server channel's, so (with more than
        // one loop) each accepted channel is set up on another loop than the server channel's.
        let server = try await TOUServerBootstrap(group: TestSetup.group, configuration: TestSetup.server)
            .workers(1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .bind(host: "127.0.0.1", port: 0) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        let port = try #require(server.channel.localAddress?.port)
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask {
                try await server.executeThenClose { connections in
                    try await withThrowingDiscardingTaskGroup { handlers in
                        for try await connection in connections {
                            handlers.addTask {
                                try await connection.executeThenClose { inbound, outbound in
                                    for try await chunk in inbound { try await outbound.write(chunk) }
                                }
                            }
                        }
                    }
                }
            }
            let client = try await TOUClientBootstrap(group: TestSetup.group, configuration: TestSetup.client)
                .connect(host: "127.0.0.1", port: port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(
                            wrappingChannelSynchronously: channel,
                            configuration: .init(isOutboundHalfClosureEnabled: true))
                    }
                }
            let total = 3 << 20
            try await client.executeThenClose { inbound, outbound in
                try await withThrowingTaskGroup(of: Int.self) { exchange in
                    exchange.addTask {
                        var offset = 0
                        while offset < total {
                            let chunk = Pattern.chunk(offset: offset, count: min(16_384, total - offset))
                            try await outbound.write(chunk)
                            offset += chunk.readableBytes
                        }
                        outbound.finish()  // half-close: the server's inbound ends
                        return offset
                    }
                    exchange.addTask {
                        var received = 0
                        for try await chunk in inbound {
                            #expect(Pattern.matches(chunk, offset: received))
                            received += chunk.readableBytes
                        }
                        return received
                    }
                    var counts: [Int] = []
                    for try await count in exchange { counts.append(count) }
                    #expect(counts == [total, total])
                }
            }
            server.channel.close(promise: nil)
        }
    }
}
