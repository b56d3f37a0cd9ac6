import NIOCore
import Synchronization
import Testing
@testable import TOUDTLS

/// `TOUListener.serve`: each connection's handler runs on the executor of the worker that
/// accepted it, started there, with connections that waited in `connections` served too.
@Suite("Listener serve", .serialized)
struct ListenerServeTests {
    /// Whether the current task runs on `executor`.
    static func runs(on executor: any TaskExecutor) -> Bool {
        withUnsafeCurrentTask { $0?.unownedTaskExecutor } == executor.asUnownedTaskExecutor()
    }

    @Test("two workers: every handler runs on its own worker's executor; an earlier connection is served too")
    func handlersRunOnTheirWorkers() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0,
                                                  configuration: EndToEndTests.serverConfiguration(), workers: 2)
        let port = try #require(listener.localAddress.port)
        let client = EndToEndTests.clientConfiguration()
        // Accepted before serve: it waits in `connections`.
        let early = try await TOUConnection.connect(host: "127.0.0.1", port: port, configuration: client)
        try await Task.sleep(for: .milliseconds(100))

        let served = Tally()
        let server = Task {
            await listener.serve { connection in
                served.note(onItsWorker: Self.runs(on: connection.taskExecutor))
                do {
                    for try await chunk in connection.inbound { try await connection.write(chunk) }
                    try await connection.finishWriting()
                    try await connection.close()
                } catch {
                    await connection.abort()
                }
            }
        }
        var connections = [early]
        for _ in 0..<16 {
            connections.append(try await TOUConnection.connect(host: "127.0.0.1", port: port, configuration: client))
        }
        for (index, connection) in connections.enumerated() {
            try await connection.write(ByteBuffer(string: "echo \(index)"))
            try await connection.finishWriting()
            var answer = ByteBuffer()
            for try await var chunk in connection.inbound { answer.writeBuffer(&chunk) }
            #expect(String(buffer: answer) == "echo \(index)")
            try await connection.close()
        }
        try await listener.close()
        await server.value
        #expect(served.counts == (17, 17))
        let perWorker = await listener.workerCounters.map(\.sessionsAccepted)
        #expect(perWorker.reduce(0, +) == 17)
        #expect(perWorker.allSatisfy { $0 > 0 }, "both workers accepted: \(perWorker)")
    }

    final class Tally: Sendable {
        /// Handlers started, and of those, started on their connection's own executor.
        private let state = Mutex((handlers: 0, onWorker: 0))
        func note(onItsWorker: Bool) {
            state.withLock { state in
                state.handlers += 1
                if onItsWorker { state.onWorker += 1 }
            }
        }
        var counts: (Int, Int) { state.withLock { ($0.handlers, $0.onWorker) } }
    }
}
