import Foundation
import NIOCore
import Testing
@testable import TOUDTLS

/// TOUConfiguration.userTimeout end to end: real sockets, a relay that stops passing anything.
@Suite("User timeout", .serialized)
struct UserTimeoutTests {
    /// A listener behind a relay (stop the relay and the peer vanishes), reading whatever its one
    /// connection sends. Its idle timeout is 2 s, so its side ends too and `close()` returns.
    static func listenerBehindRelay() async throws -> (TOUListener, CapturingRelay, Task<Void, any Error>) {
        var server = EndToEndTests.serverConfiguration()
        server.idleTimeout = .seconds(2)
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: server)
        let relay = try CapturingRelay(listenerPort: UInt16(try #require(listener.localAddress.port)))
        let serverSide = Task {
            var iterator = listener.connections.makeAsyncIterator()
            let connection = try #require(await iterator.next())
            _ = try? await EndToEndTests.receive(connection, seed: 3)
        }
        return (listener, relay, serverSide)
    }

    @Test("one write on an idle connection to a vanished peer fails the waiting read with timedOut")
    func idleWriteToVanishedPeer() async throws {
        let (listener, relay, serverSide) = try await Self.listenerBehindRelay()
        defer { relay.stop(); serverSide.cancel() }
        var configuration = EndToEndTests.clientConfiguration()
        configuration.userTimeout = .seconds(1)
        let connection = try await TOUConnection.connect(host: "127.0.0.1", port: Int(relay.port),
                                                         configuration: configuration)
        let reader = Task { () -> (any Error)? in
            do {
                for try await _ in connection.inbound {}
                return nil
            } catch {
                return error
            }
        }
        relay.stop()
        try await connection.write(ByteBuffer(string: "into the void"))
        let failure = await reader.value
        guard case .timedOut(let what) = failure as? TOUError else {
            Issue.record("expected timedOut, got \(String(describing: failure))")
            return
        }
        #expect(what.contains("user timeout"))
        try? await listener.close()
    }

    @Test("keepalive holds an idle connection past the peer's idle timeout")
    func keepAliveOutlivesIdleTimeout() async throws {
        var server = EndToEndTests.serverConfiguration()
        server.idleTimeout = .seconds(2)
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: server)
        let port = try #require(listener.localAddress.port)
        var configuration = EndToEndTests.clientConfiguration()
        configuration.keepAliveInterval = .milliseconds(500)
        let accepted = Task {
            var iterator = listener.connections.makeAsyncIterator()
            return await iterator.next()
        }
        let connection = try await TOUConnection.connect(host: "127.0.0.1", port: port, configuration: configuration)
        let serverSide = try #require(await accepted.value)
        // Silent for twice the server's idle timeout; only the probes cross.
        try await Task.sleep(for: .seconds(4))
        try await connection.write(ByteBuffer(string: "still here"))
        try await connection.finishWriting()
        var text = ""
        for try await chunk in serverSide.inbound { text += String(buffer: chunk) }
        #expect(text == "still here")
        async let serverClosed: Void? = try? serverSide.close()
        try await connection.close()
        _ = await serverClosed
        try await listener.close()
    }

    @Test("keepalive notices a vanished peer of an idle connection after the user timeout")
    func keepAliveNoticesVanishedPeer() async throws {
        let (listener, relay, serverSide) = try await Self.listenerBehindRelay()
        defer { relay.stop(); serverSide.cancel() }
        var configuration = EndToEndTests.clientConfiguration()
        configuration.keepAliveInterval = .milliseconds(500)
        configuration.userTimeout = .seconds(1)
        configuration.idleTimeout = .seconds(120)  // keepalive, not the idle timeout, must end it
        let connection = try await TOUConnection.connect(host: "127.0.0.1", port: Int(relay.port),
                                                         configuration: configuration)
        relay.stop()
        do {
            for try await _ in connection.inbound {}
            Issue.record("the read ended without an error")
        } catch let error as TOUError {
            guard case .timedOut(let what) = error else {
                Issue.record("expected timedOut, got \(error)")
                return
            }
            #expect(what.contains("user timeout"), "\(what)")
        }
        try? await listener.close()
    }
}
