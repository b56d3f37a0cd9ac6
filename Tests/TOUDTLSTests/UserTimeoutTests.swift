import Foundation
import NIOCore
import Testing
@testable import TOUDTLS

/// TOUConfiguration.userTimeout end to end: real sockets, a relay that stops passing anything.
@Suite("User timeout", .serialized)
struct UserTimeoutTests {
    @Test("one write on an idle connection to a vanished peer fails the waiting read with timedOut")
    func idleWriteToVanishedPeer() async throws {
        var server = EndToEndTests.serverConfiguration()
        server.idleTimeout = .seconds(2)  // the server side ends too, so the listener's close returns
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: server)
        let relay = try CapturingRelay(listenerPort: UInt16(try #require(listener.localAddress.port)))
        defer { relay.stop() }
        let serverSide = Task {
            var iterator = listener.connections.makeAsyncIterator()
            let connection = try #require(await iterator.next())
            _ = try? await EndToEndTests.receive(connection, seed: 3)
        }
        defer { serverSide.cancel() }
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
}
