import DatagramIO
import NIOCore
import Testing
@testable import TOUDTLS

/// The library end to end on DatagramIO's loop and socket instead of SwiftNIO's channel.
@Suite("End to end on the native datagram I/O layer")
struct NativeDatagramIOTests {
    static func native(_ configuration: TOUConfiguration) -> TOUConfiguration {
        var configuration = configuration
        configuration.datagramIO = .native
        return configuration
    }

    @Test("4 MB each way with DTLS, both ends native, every byte checked; GSO and GRO where the kernel has them")
    func transfer() async throws {
        let counters = try await EndToEndTests().transfer(server: Self.native(EndToEndTests.serverConfiguration()),
                                                          client: Self.native(EndToEndTests.clientConfiguration()),
                                                          bytes: 4 << 20)
        if System.supportsUDPSegmentationOffload {
            #expect(counters.segmentationWrites > 0)
            // Runs are as long as what TCP sends in a turn of the loop: over four datagrams on a
            // quiet machine, fewer when tests running beside this one slow its tasks down.
            #expect(counters.segmentationWrites < counters.datagramsSent / 2)
        }
        if System.supportsUDPReceiveOffload { #expect(counters.coalescedReads > 0) }
    }

    @Test("2 MB each way with offload off, both ends native")
    func transferWithoutOffload() async throws {
        var server = Self.native(EndToEndTests.serverConfiguration())
        var client = Self.native(EndToEndTests.clientConfiguration())
        server.segmentationOffload = false
        client.segmentationOffload = false
        let counters = try await EndToEndTests().transfer(server: server, client: client, bytes: 2 << 20)
        #expect(counters.segmentationWrites == 0 && counters.coalescedReads == 0)
    }

    @Test("1 MB each way over IPv6 loopback, both ends native")
    func ipv6() async throws {
        try await EndToEndTests().transfer(server: Self.native(EndToEndTests.serverConfiguration()),
                                           client: Self.native(EndToEndTests.clientConfiguration()),
                                           host: "::1", bytes: 1 << 20)
    }

    @Test("a native client against a NIO listener and a NIO client against a native listener")
    func mixed() async throws {
        try await EndToEndTests().transfer(server: EndToEndTests.serverConfiguration(),
                                           client: Self.native(EndToEndTests.clientConfiguration()), bytes: 1 << 20)
        try await EndToEndTests().transfer(server: Self.native(EndToEndTests.serverConfiguration()),
                                           client: EndToEndTests.clientConfiguration(), bytes: 1 << 20)
    }

    /// Both ends on one loop, so that what one side sends in a sendmmsg is all there when the
    /// other reads: the listener's SYN-ACK and echo leave together, and the client, which finishes
    /// writing as soon as it has the echo, sends the ACK they call for on its FIN.
    @Test("an application that answers at once sends its answer with the session's ACK: 6 datagrams from a client that closes after one echo; close() returns in TIME-WAIT")
    func answerCarriesTheAcknowledgment() async throws {
        let group = try IOLoopGroup(loopCount: 1, name: "OneLoop")
        let loop = group.next()
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0,
                                                  configuration: Self.native(EndToEndTests.serverConfiguration()),
                                                  workers: 1, group: group) { connection in
            Task(executorPreference: connection.taskExecutor) {
                for try await chunk in connection.inbound { try await connection.write(chunk) }
                try await connection.close()
            }
        }
        let port = try #require(listener.localAddress.port)
        let (echo, sent, socket, lingered) = try await withTaskExecutorPreference(EventLoopTaskExecutor.of(loop)) {
            let connection = try await TOUConnection.connect(host: "127.0.0.1", port: port,
                                                             configuration: Self.native(EndToEndTests.clientConfiguration()),
                                                             initialData: ByteBuffer(string: "x"), on: loop)
            let socket = (connection.endpoint.socket as? NativeEndpointSocket)?.socket
            var inbound = connection.inbound.makeAsyncIterator()
            let echo = try await inbound.next()
            try await connection.finishWriting()
            while try await inbound.next() != nil {}
            try await connection.close()
            // close() returned in TIME-WAIT, before the close_notify exchange (this task runs on
            // the loop, before the listener could read our last ACK).
            let lingered = connection.core.session.tcp?.state == .timeWait && !connection.core.session.isFinished
            try await connection.waitUntilEnded()
            return (echo, await connection.endpointCounters.datagramsSent, socket, lingered)
        }
        #expect(lingered)
        let client = try #require(socket)
        let counters = try await loop.submit { client.counters }.get()
        try await listener.close()
        try await group.shutdownGracefully()
        #expect(echo == ByteBuffer(string: "x"))
        // ClientHello, Finished flight, SYN with the byte, FIN with the ACK, ACK of the FIN, close_notify.
        #expect(sent == 6)
        // A few datagrams per recvmmsg, and no second call after one that found fewer than a batch.
        #expect(counters.datagramsReceived == 6)
        #expect(counters.receiveCalls == 4)
        #expect(!client.receiveOffload)  // GRO only once data comes in bulk
    }

    @Test("request/response under the connection's task executor: both ends on their IOLoops, no thread switch")
    func requestResponse() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0,
                                                  configuration: Self.native(EndToEndTests.serverConfiguration()),
                                                  workers: 2)
        #expect(listener.endpoints.allSatisfy { $0.loop is IOLoop })
        let port = try #require(listener.localAddress.port)
        let server = Task(executorPreference: listener.taskExecutor) {
            for await connection in listener.connections {
                Task(executorPreference: connection.taskExecutor) {
                    for try await chunk in connection.inbound { try await connection.write(chunk) }
                    try await connection.close()
                }
            }
        }
        let client = Self.native(EndToEndTests.clientConfiguration())
        let executor = TOUConnection.nextTaskExecutor(datagramIO: .native)
        let (exchanges, onLoop) = try await withTaskExecutorPreference(executor) {
            let connection = try await TOUConnection.connect(host: "127.0.0.1", port: port, configuration: client)
            var onLoop = connection.endpoint.loop is IOLoop && connection.endpoint.loop.inEventLoop
            var exchanges = 0
            var inbound = connection.inbound.makeAsyncIterator()
            for index in 0..<300 {
                let request = ByteBuffer(bytes: (0..<(1 + index % 200)).map { UInt8(truncatingIfNeeded: $0 &+ index) })
                try await connection.write(request)
                var answer = ByteBuffer()
                while answer.readableBytes < request.readableBytes, var chunk = try await inbound.next() {
                    answer.writeBuffer(&chunk)
                }
                // Resumed on the connection's own loop after each read and write.
                onLoop = onLoop && connection.endpoint.loop.inEventLoop
                if answer == request { exchanges += 1 }
            }
            try await connection.close()
            return (exchanges, onLoop)
        }
        #expect(exchanges == 300)
        #expect(onLoop)
        try await listener.close()
        server.cancel()
    }

    @Test("nothing listening: a native client hears ICMP port unreachable and fails fast with unreachable")
    func unreachable() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: Self.native(.plain))
        let port = try #require(listener.localAddress.port)
        try await listener.close()
        var configuration = Self.native(TOUConfiguration.plain)
        configuration.handshakeTimeout = .seconds(5)
        let started = NIODeadline.now()
        await #expect {
            _ = try await TOUConnection.connect(host: "127.0.0.1", port: port, configuration: configuration)
        } throws: { error in
            if case .unreachable = error as? TOUError { return true }
            return false
        }
        #expect(NIODeadline.now() - started < .seconds(2))
    }

    @Test("a listener on the native layer with 2 workers steers by session ID and serves 40 connections")
    func workers() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0,
                                                  configuration: Self.native(EndToEndTests.serverConfiguration()),
                                                  workers: 2)
        #expect(listener.steersBySessionID)
        let port = try #require(listener.localAddress.port)
        let server = Task {
            await withTaskGroup(of: Void.self) { group in
                for await connection in listener.connections {
                    group.addTask {
                        do {
                            for try await chunk in connection.inbound { try await connection.write(chunk) }
                            try await connection.close()
                        } catch {}
                    }
                }
            }
        }
        let client = Self.native(EndToEndTests.clientConfiguration())
        let echoed = try await withThrowingTaskGroup(of: Bool.self) { group in
            for index in 0..<40 {
                group.addTask {
                    let connection = try await TOUConnection.connect(host: "127.0.0.1", port: port, configuration: client)
                    let message = ByteBuffer(string: "hello \(index)")
                    try await connection.write(message)
                    try await connection.finishWriting()
                    var answer = ByteBuffer()
                    for try await var chunk in connection.inbound { answer.writeBuffer(&chunk) }
                    try await connection.close()
                    return answer == message
                }
            }
            return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(echoed == 40)
        let perWorker = await listener.workerCounters.map(\.sessionsAccepted)
        #expect(perWorker.reduce(0, +) == 40)
        #expect(await listener.counters.misroutedDatagrams == 0)
        try await listener.close()
        server.cancel()
    }

    @Test("a second native listener on a port in use fails with \"address in use\", with one worker and with two")
    func addressInUse() async throws {
        let first = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: Self.native(.plain), workers: 1)
        let port = try #require(first.localAddress.port)
        for workers in [1, 2] {
            await #expect {
                _ = try await TOUListener.bind(host: "127.0.0.1", port: port, configuration: Self.native(.plain),
                                               workers: workers)
            } throws: { error in
                guard case .socketError(let message) = error as? TOUError else { return false }
                return message.contains("address in use")
            }
        }
        try await first.close()
    }

    @Test("closing a native client while the listener streams to it: the transfer fails cleanly, the listener goes on")
    func closeUnderLoad() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0,
                                                  configuration: Self.native(EndToEndTests.serverConfiguration()),
                                                  workers: 1)
        let port = try #require(listener.localAddress.port)
        let server = Task {
            var iterator = listener.connections.makeAsyncIterator()
            let streaming = try #require(await iterator.next())
            // Streams until the client goes away: the write fails, it does not hang or crash.
            let failed = await (try? EndToEndTests.send(streaming, bytes: 64 << 20, seed: 3)) == nil
            let second = try #require(await iterator.next())
            for try await chunk in second.inbound { try await second.write(chunk) }
            try await second.close()
            return failed
        }
        let client = Self.native(EndToEndTests.clientConfiguration())
        let first = try await TOUConnection.connect(host: "127.0.0.1", port: port, configuration: client)
        var received = 0
        for try await chunk in first.inbound {
            received += chunk.readableBytes
            if received > 1 << 20 { break }
        }
        await first.abort()
        // The listener still serves a new connection while the first one's end plays out.
        let second = try await TOUConnection.connect(host: "127.0.0.1", port: port, configuration: client)
        try await second.write(ByteBuffer(string: "still here"))
        try await second.finishWriting()
        var answer = ByteBuffer()
        for try await var chunk in second.inbound { answer.writeBuffer(&chunk) }
        try await second.close()
        #expect(String(buffer: answer) == "still here")
        #expect(try await server.value)
        try await listener.close()
    }

    @Test("a native listener on all addresses (dual-stack \"::\") serves an IPv4 client (v4-mapped peer) and an IPv6 one")
    func dualStack() async throws {
        let plain = Self.native(.plain)
        let listener = try await TOUListener.bind(port: 0, configuration: plain, workers: 1)
        let port = try #require(listener.localAddress.port)
        let server = Task {
            for await connection in listener.connections {
                Task {
                    for try await chunk in connection.inbound { try await connection.write(chunk) }
                    try await connection.close()
                }
            }
        }
        for host in ["127.0.0.1", "::1"] {
            let connection = try await TOUConnection.connect(host: host, port: port, configuration: plain)
            try await connection.write(ByteBuffer(string: "via \(host)"))
            try await connection.finishWriting()
            var answer = ByteBuffer()
            for try await var chunk in connection.inbound { answer.writeBuffer(&chunk) }
            try await connection.close()
            #expect(String(buffer: answer) == "via \(host)")
        }
        try await listener.close()
        server.cancel()
    }
}
