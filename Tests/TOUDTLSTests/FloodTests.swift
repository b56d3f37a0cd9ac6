import Foundation
import NIOCore
import Testing
@testable import TOUDTLS

/// The listener under a flood of hostile datagrams from many source ports, sent with plain BSD
/// sockets, while real connections run through it.
@Suite("Hostile floods against a listener", .serialized)
struct FloodTests {
    typealias E2E = EndToEndTests

    /// Aborts `connections` if the test overruns, so a stalled transfer fails instead of hanging.
    final class Watchdog: Sendable {
        let task: Task<Void, Never>
        let fired = LockedBox(false)

        init(seconds: Int, _ connections: @escaping @Sendable () -> [TOUConnection]) {
            let fired = self.fired
            task = Task {
                try? await Task.sleep(for: .seconds(seconds))
                guard !Task.isCancelled else { return }
                fired.withLock { $0 = true }
                for connection in connections() { await connection.abort() }
            }
        }

        func cancel() { task.cancel() }
    }

    /// Receives every connection the listener accepts, checks its bytes against `seed`'s
    /// pattern, then closes it. Returns (count, intact) per connection, in accept order.
    static func serveChecking(_ listener: TOUListener, connections count: Int,
                              accepted: LockedBox<[TOUConnection]>) -> Task<[(Int, Bool)], Error> {
        Task {
            try await withThrowingTaskGroup(of: (Int, Int, Bool).self) { group in
                var iterator = listener.connections.makeAsyncIterator()
                for index in 0..<count {
                    guard let connection = await iterator.next() else { break }
                    accepted.withLock { $0.append(connection) }
                    group.addTask {
                        let result = try await E2E.receive(connection, seed: 7)
                        try await connection.close()
                        return (index, result.count, result.intact)
                    }
                }
                var results = [(Int, Bool)](repeating: (0, false), count: count)
                for try await (index, bytes, intact) in group { results[index] = (bytes, intact) }
                return results
            }
        }
    }

    /// An upper bound on the legitimate datagrams `connections` (the listener's side) received:
    /// their TCP segments plus a generous allowance for handshake and closing datagrams.
    static func legitimateDatagrams(_ connections: [TOUConnection]) async -> Int {
        var total = 0
        for connection in connections { total += await connection.stats.segmentsReceived + 16 }
        return total
    }

    /// The live session's listener-side SID, sniffed from the D of the client's data datagrams
    /// as the relay forwards them (waits up to 5 s for one).
    static func learnSessionSID(_ relay: CapturingRelay) async -> UInt64? {
        for _ in 0..<500 {
            let capture = relay.snapshot
            if let sid = (capture.clientHandshake + capture.clientRecent).lazy
                .filter({ CapturedDatagram.firstContentType($0) == 23 })
                .compactMap(CapturedDatagram.destinationSID).first {
                return sid
            }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return nil
    }

    /// Runs `body`, recording which step failed before rethrowing, so a timeout names its step.
    static func step<T>(_ name: String, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch {
            Issue.record("\(name) failed: \(error)")
            throw error
        }
    }

    /// A client that waits longer for its handshake, for connecting while the listener is flooded
    /// beyond what it can read (then its datagrams are lost like the junk and DTLS backs off).
    static var patientClient: TOUConfiguration {
        var configuration = E2E.clientConfiguration()
        configuration.handshakeTimeout = .seconds(20)
        return configuration
    }

    /// Sends `bytes` of the seed-7 pattern, half-closes, waits for the server's FIN, closes.
    static func clientTransfer(_ connection: TOUConnection, bytes: Int) async throws {
        try await E2E.send(connection, bytes: bytes, seed: 7)
        for try await _ in connection.inbound {}
        try await connection.close()
    }

    @Test("a 50 MB transfer survives a flood of junk, forgeries and replays; drops are counted; memory bounded")
    func transferUnderFlood() async throws {
        let transferBytes = 50 << 20
        let rssBefore = try #require(ProcCounters.residentKiB())
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: E2E.serverConfiguration())
        let listenerPort = try #require(listener.localAddress.port)
        let relay = try CapturingRelay(listenerPort: UInt16(listenerPort))
        defer { relay.stop() }
        let accepted = LockedBox<[TOUConnection]>([])
        let clients = LockedBox<[TOUConnection]>([])
        let watchdog = Watchdog(seconds: 180) { accepted.current + clients.current }
        defer { watchdog.cancel() }
        let server = Self.serveChecking(listener, connections: 2, accepted: accepted)

        var flooder: HostileFlooder?
        defer { flooder?.stop() }
        do {
            let client = try await Self.step("connecting through the relay") {
                try await TOUConnection.connect(host: "127.0.0.1", port: Int(relay.port),
                                                configuration: E2E.clientConfiguration())
            }
            clients.withLock { $0.append(client) }
            let transfer = Task { try await Self.clientTransfer(client, bytes: transferBytes) }

            let sessionSID = await Self.learnSessionSID(relay)
            let template = relay.snapshot.clientHandshake.first(where: CapturedDatagram.isClientHello)
            #expect(sessionSID != nil && template != nil)

            let before = await listener.counters
            let dropsBefore = ProcCounters.udpReceiveBufferErrors()
            flooder = try HostileFlooder(listenerPort: UInt16(listenerPort), sourcePorts: 64, seed: 0xF100D,
                                         kinds: HostileJunk.Kind.allCases, perSecond: 4000, relay: relay,
                                         clientHelloTemplate: template, sessionSID: sessionSID)

            // A second legitimate client, from the attacker's address, in the middle of the flood.
            try await Task.sleep(for: .seconds(2))
            let secondStart = ContinuousClock.now
            let second = try await Self.step("connecting during the flood") {
                try await TOUConnection.connect(host: "127.0.0.1", port: listenerPort, configuration: Self.patientClient)
            }
            clients.withLock { $0.append(second) }
            let secondConnectTime = ContinuousClock.now - secondStart
            try await Self.clientTransfer(second, bytes: 1 << 20)

            try await transfer.value
            // A flood worth the name: keep it up until it has sent 12k, however fast the transfers were.
            for _ in 0..<200 where (flooder?.counts.total ?? 0) < 12_000 {
                try await Task.sleep(for: .milliseconds(50))
            }
            flooder?.stop()
            let tally = try #require(flooder?.counts)
            // Let the listener drain its socket before reading the counters.
            try await Task.sleep(for: .milliseconds(300))
            let after = await listener.counters
            let kernelDrops = ProcCounters.udpReceiveBufferErrors() - dropsBefore
            let results = try await server.value
            let (sessionsLeft, halfOpenLeft) = try await listener.sessionCounts
            try await listener.close()

            // Replayed padded ClientHellos from new ports may open handshakes without a cookie while
            // few are in progress (they time out); none completes, and they stay under the threshold.
            #expect(sessionsLeft == halfOpenLeft, "\(sessionsLeft - halfOpenLeft) established sessions outlived the flood")
            #expect(halfOpenLeft <= 1024 / 4, "\(halfOpenLeft) handshakes in progress")
            #expect(results.count == 2)
            #expect(results.first?.0 == transferBytes && results.first?.1 == true, "flooded transfer: \(results)")
            #expect(results.last?.0 == 1 << 20 && results.last?.1 == true, "second client: \(results)")
            #expect(secondConnectTime < .seconds(15), "second client took \(secondConnectTime) to connect")

            // Every junk datagram the library must count: all but replayed handshake datagrams,
            // which the established session may take as a peer's retransmission and answer.
            let uncounted = tally.sent[.replayedHandshake] ?? 0
            let mustCount = tally.total - uncounted
            let accounted = (after.totalDropped - before.totalDropped)
                + (after.helloVerifyRequestsSent - before.helloVerifyRequestsSent)
            let tolerance = kernelDrops + mustCount / 200
            // Tighter: of what the library actually read, everything but legitimate traffic and
            // the uncounted kinds was counted.
            let received = after.datagramsReceived - before.datagramsReceived
            let legitimate = await Self.legitimateDatagrams(accepted.current)
            let perKind = tally.sent.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key): \($0.value)" }
            let summary = "sent \(tally.total) (\(perKind.joined(separator: ", "))); kernel drops \(kernelDrops); "
                + "counters before: \(before); after: \(after)"
            #expect(tally.total > 10_000, "\(summary)")
            #expect(accounted >= mustCount - tolerance, "accounted \(accounted) < \(mustCount) - \(tolerance): \(summary)")
            #expect(accounted + uncounted + legitimate >= received,
                    "read \(received), accounted \(accounted), legitimate <= \(legitimate): \(summary)")
            // The relayed client and the second one; nothing forged became a session.
            #expect(after.sessionsAccepted == 2, "\(summary)")
            print("transferUnderFlood: second client connected in \(secondConnectTime); accounted \(accounted) of \(mustCount); \(summary)")
        } catch {
            for connection in clients.current + accepted.current { await connection.abort() }
            server.cancel()
            try? await listener.close()
            throw error
        }
        #expect(!watchdog.fired.current, "the watchdog had to abort the connections")
        let rssAfter = try #require(ProcCounters.residentKiB())
        #expect(rssAfter - rssBefore < 100 << 10, "RSS grew from \(rssBefore) KiB to \(rssAfter) KiB")
        print("transferUnderFlood: RSS \(rssBefore) KiB before, \(rssAfter) KiB after")
    }

    @Test("50k forged ClientHellos from 256 ports: only HelloVerifyRequests, no half-open state, legitimate clients still connect")
    func clientHelloFlood() async throws {
        let forged = 50_000
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: E2E.serverConfiguration())
        let listenerPort = try #require(listener.localAddress.port)
        let relay = try CapturingRelay(listenerPort: UInt16(listenerPort))
        defer { relay.stop() }
        let accepted = LockedBox<[TOUConnection]>([])
        let clients = LockedBox<[TOUConnection]>([])
        let watchdog = Watchdog(seconds: 180) { accepted.current + clients.current }
        defer { watchdog.cancel() }
        let server = Self.serveChecking(listener, connections: 3, accepted: accepted)
        var flooder: HostileFlooder?
        defer { flooder?.stop() }
        do {
            // A real ClientHello to forge from, captured through the relay.
            let first = try await TOUConnection.connect(host: "127.0.0.1", port: Int(relay.port),
                                                        configuration: E2E.clientConfiguration())
            clients.withLock { $0.append(first) }
            try await Self.clientTransfer(first, bytes: 64 << 10)
            let template = try #require(relay.snapshot.clientHandshake.first(where: CapturedDatagram.isClientHello))

            // Answers to forged hellos are HelloVerifyRequests no larger than the hello: no amplification.
            let probe = try RawUDPSocket()
            defer { probe.close() }
            var random = SeededRandom(seed: 0xC00C1E)
            var probeSizes: [(sent: Int, answered: Int)] = []
            for _ in 0..<20 {
                let hello = try #require(HostileJunk.forgeClientHello(template, random: &random, source: random.next() | 1,
                                                                      destination: nil))
                probe.send(hello, toPort: UInt16(listenerPort))
                _ = pollReadable([probe], milliseconds: 1000)
                if let answer = probe.receive() { probeSizes.append((hello.count, answer.bytes.count)) }
            }
            #expect(probeSizes.count == 20)
            #expect(probeSizes.allSatisfy { $0.answered <= $0.sent }, "HelloVerifyRequest sizes: \(probeSizes)")

            let before = await listener.counters
            let dropsBefore = ProcCounters.udpReceiveBufferErrors()
            let floodStart = ContinuousClock.now
            flooder = try HostileFlooder(listenerPort: UInt16(listenerPort), sourcePorts: 256, seed: 0x4E110,
                                         kinds: [.forgedClientHello], perSecond: 10_000, limit: forged, relay: nil,
                                         clientHelloTemplate: template, sessionSID: nil)

            // A legitimate client from the same address connects while the flood runs.
            try await Task.sleep(for: .milliseconds(500))
            let duringStart = ContinuousClock.now
            let during = try await Self.step("connecting during the flood") {
                try await TOUConnection.connect(host: "127.0.0.1", port: listenerPort, configuration: Self.patientClient)
            }
            clients.withLock { $0.append(during) }
            let duringConnect = ContinuousClock.now - duringStart
            try await Self.clientTransfer(during, bytes: 64 << 10)

            flooder?.waitUntilDone()
            let floodTime = ContinuousClock.now - floodStart
            let tally = try #require(flooder?.counts)
            try await Task.sleep(for: .milliseconds(500))
            let after = await listener.counters
            let kernelDrops = ProcCounters.udpReceiveBufferErrors() - dropsBefore
            let sessionsLeft = try await listener.sessionCounts.sessions

            let afterStart = ContinuousClock.now
            let last = try await Self.step("connecting after the flood") {
                try await TOUConnection.connect(host: "127.0.0.1", port: listenerPort,
                                                configuration: E2E.clientConfiguration())
            }
            clients.withLock { $0.append(last) }
            let afterConnect = ContinuousClock.now - afterStart
            try await Self.clientTransfer(last, bytes: 64 << 10)
            let results = try await server.value
            try await listener.close()

            let summary = "sent \(tally.total) in \(floodTime); kernel drops \(kernelDrops); before: \(before); after: \(after)"
            #expect(tally.total == forged)
            #expect(results.allSatisfy { $0.0 == 64 << 10 && $0.1 }, "\(results)")
            // Only the legitimate client of the flood period became a session; nothing half-open remains.
            #expect(after.sessionsAccepted == 2, "\(summary)")
            #expect(sessionsLeft == 0, "\(sessionsLeft) sessions left after the flood: \(summary)")
            let answeredOrDropped = (after.helloVerifyRequestsSent - before.helloVerifyRequestsSent)
                + (after.totalDropped - before.totalDropped)
            #expect(answeredOrDropped >= forged - kernelDrops - forged / 200, "\(summary)")
            let received = after.datagramsReceived - before.datagramsReceived
            let legitimate = await Self.legitimateDatagrams(accepted.current)
            #expect(answeredOrDropped + legitimate >= received, "read \(received), legitimate <= \(legitimate): \(summary)")
            // Eight in ten forgeries carry S and reach the cookie exchange.
            #expect(after.helloVerifyRequestsSent - before.helloVerifyRequestsSent >= (received - legitimate) * 7 / 10,
                    "\(summary)")
            #expect(duringConnect < .seconds(15), "connecting during the flood took \(duringConnect)")
            #expect(afterConnect < .seconds(2), "connecting after the flood took \(afterConnect)")
            print("clientHelloFlood: during \(duringConnect), after \(afterConnect); \(summary)")
        } catch {
            for connection in clients.current + accepted.current { await connection.abort() }
            server.cancel()
            try? await listener.close()
            throw error
        }
        #expect(!watchdog.fired.current, "the watchdog had to abort the connections")
    }
}
