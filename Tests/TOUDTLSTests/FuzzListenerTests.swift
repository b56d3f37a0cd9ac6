import Foundation
import NIOCore
import Testing
@testable import TOUDTLS

/// Seeded fuzzing of a live listener (demultiplexing, admission, the DTLS record path of an
/// established session) with mutations of datagrams captured from a real session.
///
/// For a longer run: `TOU_FUZZ_SEED=<n> TOU_FUZZ_COUNT=<n> swift test --filter FuzzListenerTests`.
@Suite("Seeded fuzzing of a live listener")
struct FuzzListenerTests {
    typealias E2E = EndToEndTests

    static var seed: UInt64 {
        ProcessInfo.processInfo.environment["TOU_FUZZ_SEED"].flatMap { UInt64($0) } ?? 0x70_0D_71_5F
    }

    static var count: Int {
        ProcessInfo.processInfo.environment["TOU_FUZZ_COUNT"].flatMap { Int($0) } ?? 20_000
    }

    /// Writes `count` bytes of the seed-7 pattern starting at stream offset `from`.
    static func sendPattern(_ connection: TOUConnection, from: Int, count: Int) async throws {
        let pattern = E2E.Pattern(seed: 7)
        var offset = from
        while offset < from + count {
            let chunk = min(64 << 10, from + count - offset)
            try await connection.write(pattern.bytes(count: chunk, streamOffset: offset))
            offset += chunk
        }
    }

    @Test("20k mutated captured datagrams at the listener and the client: no crash, no stray session, both sessions intact")
    func mutatedCapturedDatagrams() async throws {
        let (seed, total) = (Self.seed, Self.count)
        let half = 256 << 10
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: E2E.serverConfiguration())
        let listenerPort = try #require(listener.localAddress.port)
        let relay = try CapturingRelay(listenerPort: UInt16(listenerPort))
        defer { relay.stop() }
        let sockets = try (0..<8).map { _ in try RawUDPSocket(receiveBuffer: 4096) }
        defer { for socket in sockets { socket.close() } }
        let accepted = LockedBox<[TOUConnection]>([])
        let clients = LockedBox<[TOUConnection]>([])
        let watchdog = FloodTests.Watchdog(seconds: 180) { accepted.current + clients.current }
        defer { watchdog.cancel() }
        let server = FloodTests.serveChecking(listener, connections: 2, accepted: accepted)
        do {
            let live = try await TOUConnection.connect(host: "127.0.0.1", port: Int(relay.port),
                                                       configuration: E2E.clientConfiguration())
            clients.withLock { $0.append(live) }
            try await Self.sendPattern(live, from: 0, count: half)
            // Let the first half be acknowledged so the capture holds data both ways.
            try await Task.sleep(for: .milliseconds(300))
            let capture = relay.snapshot
            let corpus = capture.clientHandshake + capture.clientRecent + capture.serverHandshake + capture.serverRecent
            #expect(corpus.count > 50, "captured only \(corpus.count) datagrams")

            let before = await listener.counters
            var mutator = FuzzDatagramMutator(seed: seed, corpus: corpus)
            var sent = 0
            while sent < total {
                for _ in 0..<50 where sent < total {
                    let datagram = mutator.next()
                    // A tenth at the live client (as if from its server), a quarter from the live
                    // client's own address, the rest from other ports.
                    let roll = mutator.random.below(100)
                    if roll < 10 {
                        relay.injectToClient(datagram)
                    } else if roll < 35 {
                        relay.inject(datagram)
                    } else {
                        sockets[mutator.random.below(sockets.count)].send(datagram, toPort: UInt16(listenerPort))
                    }
                    sent += 1
                }
                try await Task.sleep(for: .milliseconds(5))
                // Keep within what the listener can read, so the fuzz reaches the library rather
                // than overflowing the socket buffer when the machine is busy.
                for _ in 0..<500 {
                    let read = await listener.counters.datagramsReceived - before.datagramsReceived
                    if read >= sent * 8 / 10 - 2_000 { break }
                    try await Task.sleep(for: .milliseconds(10))
                }
            }
            try await Task.sleep(for: .milliseconds(300))
            let afterFuzz = await listener.counters

            // The live session goes on after the fuzzing; a new client connects and transfers.
            try await Self.sendPattern(live, from: half, count: half)
            try await live.finishWriting()
            for try await _ in live.inbound {}
            try await live.close()
            let fresh = try await TOUConnection.connect(host: "127.0.0.1", port: listenerPort,
                                                        configuration: E2E.clientConfiguration())
            clients.withLock { $0.append(fresh) }
            try await FloodTests.clientTransfer(fresh, bytes: half)
            let results = try await server.value
            let after = await listener.counters
            try await listener.close()

            let liveStats = await live.stats
            let context = "seed \(seed), \(total) datagrams; after fuzzing: \(afterFuzz); the client dropped \(liveStats.droppedDatagrams)"
            #expect(results.count == 2)
            #expect(results.first?.0 == 2 * half && results.first?.1 == true, "live session: \(results); \(context)")
            #expect(results.last?.0 == half && results.last?.1 == true, "fresh session: \(results); \(context)")
            #expect(afterFuzz.sessionsAccepted == before.sessionsAccepted, "the fuzz opened a session: \(context)")
            #expect(after.sessionsAccepted == 2, "\(context)")
            #expect(afterFuzz.datagramsReceived - before.datagramsReceived > total * 8 / 10, "\(context)")
            print("mutatedCapturedDatagrams: \(context)")
        } catch {
            for connection in clients.current + accepted.current { await connection.abort() }
            server.cancel()
            try? await listener.close()
            throw error
        }
        #expect(!watchdog.fired.current, "the watchdog had to abort the connections")
    }
}
