import Foundation
import NIOCore
import Testing
@testable import TOUDTLS

/// Each kind of hostile datagram, sent alone at a listener with one live session, must land in
/// the drop counter the wire format names for it, and leave the session working.
@Suite("Every hostile datagram is counted under its reason")
struct HostileCountingTests {
    typealias E2E = EndToEndTests

    struct Case: Sendable {
        let name: String
        let counter: @Sendable (TOUEndpointCounters) -> Int
        let make: @Sendable (inout SeededRandom, UInt64, [UInt8]) -> [UInt8]
        /// Sent from the live client's own address (through the relay's socket).
        var fromClientAddress = false
    }

    /// An epoch-1 record of `type` with a random body long enough to pass the AEAD-length guard.
    static func forgedProtectedRecord(type: UInt8, random: inout SeededRandom, sessionSID: UInt64) -> [UInt8] {
        let body = random.bytes(40 + random.below(80))
        return HostileJunk.secureHeader(source: nil, destination: sessionSID)
            + [type, 0xFE, 0xFD, 0, 1] + random.bytes(6) + [UInt8(body.count >> 8), UInt8(body.count & 0xFF)] + body
    }

    static let cases: [Case] = [
        Case(name: "shorter than 4 bytes", counter: { $0.droppedMalformed }) { random, _, _ in random.bytes(random.below(4)) },
        Case(name: "neither S nor D", counter: { $0.droppedMalformed }) { random, _, _ in
            [1, 59, 0x02, 0x00, 1, 6, 0, 0] + random.bytes(40)
        },
        Case(name: "unknown D alone", counter: { $0.droppedUnknownSession }) { random, _, _ in
            HostileJunk.secureHeader(source: nil, destination: random.next() | 1) + random.bytes(60)
        },
        Case(name: "S with a record that is no ClientHello", counter: { $0.droppedBadAttempt }) { random, _, _ in
            HostileJunk.secureHeader(source: random.next() | 1, destination: nil) + [23, 0xFE, 0xFD, 0, 1]
                + random.bytes(6) + [0, 40] + random.bytes(40)
        },
        Case(name: "forged ClientHello with a random cookie", counter: { $0.helloVerifyRequestsSent }) { random, _, template in
            HostileJunk.forgeClientHello(template, random: &random, source: random.next() | 1,
                                         destination: random.next() | 1) ?? []
        },
        Case(name: "forged application data to the live SID", counter: { $0.droppedBySession }) { random, sid, _ in
            forgedProtectedRecord(type: 23, random: &random, sessionSID: sid)
        },
        Case(name: "unprotected application data (epoch 0) to the live SID", counter: { $0.droppedBySession }) { random, sid, _ in
            HostileJunk.secureHeader(source: nil, destination: sid) + [23, 0xFE, 0xFD, 0, 0] + random.bytes(6) + [0, 40]
                + random.bytes(40)
        },
        Case(name: "unknown content type to the live SID", counter: { $0.droppedBySession }) { random, sid, _ in
            HostileJunk.secureHeader(source: nil, destination: sid) + [99, 0xFE, 0xFD, 0, 1] + random.bytes(6) + [0, 40]
                + random.bytes(40)
        },
        Case(name: "record longer than the datagram to the live SID", counter: { $0.droppedBySession }) { random, sid, _ in
            HostileJunk.secureHeader(source: nil, destination: sid) + [23, 0xFE, 0xFD, 0, 1] + random.bytes(6) + [4, 0]
                + random.bytes(40)
        },
        Case(name: "oversized, to the live SID, one record claiming it all", counter: { $0.droppedBySession }) { random, sid, _ in
            let body = random.bytes(9000)
            return HostileJunk.secureHeader(source: nil, destination: sid) + [23, 0xFE, 0xFD, 0, 1] + random.bytes(6)
                + [UInt8(body.count >> 8), UInt8(body.count & 0xFF)] + body
        },
        Case(name: "oversized, random D", counter: { $0.droppedUnknownSession }) { random, _, _ in
            HostileJunk.secureHeader(source: nil, destination: random.next() | 1) + random.bytes(9000)
        },
    ]

    /// Every reason at once, for kinds whose datagrams spread over several.
    static func anyReason(_ counters: TOUEndpointCounters) -> Int {
        counters.totalDropped + counters.helloVerifyRequestsSent
    }

    /// Records OpenSSL discards on its own after a failed MAC; the wire format says to count them.
    static let protectedNonDataCases: [Case] = [20, 21, 22].map { type in
        Case(name: "forged epoch-1 record of type \(type) to the live SID", counter: { $0.droppedBySession }) { random, sid, _ in
            forgedProtectedRecord(type: type, random: &random, sessionSID: sid)
        }
    }

    /// Sends `count` datagrams of `testCase` and returns how much its counter and the total moved.
    static func run(_ testCase: Case, count: Int, listener: TOUListener, socket: RawUDPSocket, relay: CapturingRelay,
                    random: inout SeededRandom, sessionSID: UInt64, template: [UInt8]) async throws -> (counted: Int, read: Int) {
        let port = UInt16(try #require(listener.localAddress.port))
        let before = await listener.counters
        for index in 0..<count {
            let datagram = testCase.make(&random, sessionSID, template)
            if testCase.fromClientAddress { relay.inject(datagram) } else { socket.send(datagram, toPort: port) }
            // Large runs go in chunks the socket buffer can hold, so none is lost before the library.
            if index % 500 == 499 {
                for _ in 0..<200 where await listener.counters.datagramsReceived - before.datagramsReceived < index - 100 {
                    try await Task.sleep(for: .milliseconds(5))
                }
            }
        }
        // The live session's own datagrams arrive too, so wait for the counter itself, or (for
        // kinds that may go uncounted) for the listener to have read them and a little more.
        var after = before
        for attempt in 0..<100 {
            after = await listener.counters
            if testCase.counter(after) - testCase.counter(before) >= count { break }
            if after.datagramsReceived - before.datagramsReceived >= count, attempt >= 10 { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        return (testCase.counter(after) - testCase.counter(before), after.datagramsReceived - before.datagramsReceived)
    }

    @Test("each kind lands in its counter; captured ClientHello+cookie replays open no session; the session survives")
    func eachKindCounted() async throws {
        // Every attempt gets a cookie exchange here, so a ClientHello carrying a valid cookie is captured.
        var configuration = E2E.serverConfiguration()
        configuration.alwaysRequireCookie = true
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: configuration)
        let relay = try CapturingRelay(listenerPort: UInt16(try #require(listener.localAddress.port)))
        defer { relay.stop() }
        let socket = try RawUDPSocket()
        defer { socket.close() }
        let accepted = LockedBox<[TOUConnection]>([])
        let clients = LockedBox<[TOUConnection]>([])
        let watchdog = FloodTests.Watchdog(seconds: 180) { accepted.current + clients.current }
        defer { watchdog.cancel() }
        let server = FloodTests.serveChecking(listener, connections: 1, accepted: accepted)
        do {
            let live = try await TOUConnection.connect(host: "127.0.0.1", port: Int(relay.port),
                                                       configuration: E2E.clientConfiguration())
            clients.withLock { $0.append(live) }
            try await FuzzListenerTests.sendPattern(live, from: 0, count: 64 << 10)
            try await Task.sleep(for: .milliseconds(200))
            let sessionSID = try #require(await FloodTests.learnSessionSID(relay))
            let capture = relay.snapshot
            let template = try #require(capture.clientHandshake.first(where: CapturedDatagram.isClientHello))
            var random = SeededRandom(seed: 0xC0_07ED)
            let count = 100

            for testCase in Self.cases {
                let result = try await Self.run(testCase, count: count, listener: listener, socket: socket, relay: relay,
                                                random: &random, sessionSID: sessionSID, template: template)
                #expect(result.read >= count, "\(testCase.name): the listener read \(result.read) of \(count)")
                #expect(result.counted >= count, "\(testCase.name): counted \(result.counted) of \(count)")
            }
            for testCase in Self.protectedNonDataCases {
                let result = try await Self.run(testCase, count: count, listener: listener, socket: socket, relay: relay,
                                                random: &random, sessionSID: sessionSID, template: template)
                #expect(result.read >= count, "\(testCase.name): the listener read \(result.read) of \(count)")
                #expect(result.counted >= count, "\(testCase.name): counted \(result.counted) of \(count)")
            }

            // Every variant, C, Hlen, T/S/D subset, unknown flag and proto of the GUE header once.
            let combinations = HostileJunk.forgedGUECombinations
            let junkBox = LockedBox(HostileJunk(seed: 0x6E, clientHelloTemplate: template, sessionSID: sessionSID))
            let gue = try await Self.run(
                Case(name: "forged GUE", counter: Self.anyReason) { _, _, _ in junkBox.withLock { $0.forgedGUE() } },
                count: combinations, listener: listener, socket: socket, relay: relay, random: &random,
                sessionSID: sessionSID, template: template)
            #expect(gue.read >= combinations, "forged GUE: the listener read \(gue.read) of \(combinations)")
            #expect(gue.counted >= combinations, "forged GUE: counted \(gue.counted) of \(combinations)")

            // Replays of captured data, from another port and from the client's own address.
            let data = (capture.clientHandshake + capture.clientRecent).filter {
                CapturedDatagram.firstContentType($0) == 23 && CapturedDatagram.destinationSID($0) == sessionSID
            }
            try #require(!data.isEmpty)
            let replays = try await Self.run(
                Case(name: "replayed data", counter: { $0.droppedBySession }) { random, _, _ in data[random.below(data.count)] },
                count: count, listener: listener, socket: socket, relay: relay, random: &random, sessionSID: sessionSID,
                template: template)
            #expect(replays.counted >= count, "replayed data: counted \(replays.counted) of \(count)")
            // Replayed handshake datagrams (they carry D) reach the established session, which
            // must not answer each with a retransmitted flight: that would let anyone who saw the
            // handshake make the listener send on demand.
            let handshake = capture.clientHandshake.filter {
                CapturedDatagram.firstContentType($0) != 23 && CapturedDatagram.destinationSID($0) == sessionSID
            }
            try #require(!handshake.isEmpty)
            let sentBefore = await listener.counters.datagramsSent
            _ = try await Self.run(
                Case(name: "replayed handshake", counter: { $0.datagramsReceived }) { random, _, _ in
                    handshake[random.below(handshake.count)]
                }, count: count, listener: listener, socket: socket, relay: relay, random: &random,
                sessionSID: sessionSID, template: template)
            let answers = await listener.counters.datagramsSent - sentBefore
            #expect(answers <= 3, "the session answered \(count) replayed handshake datagrams with \(answers)")

            // Replays from another port never move the session's peer address.
            let serverSide = try #require(accepted.current.first)
            let peer = try await serverSide.endpoint.loop.submit { serverSide.core.session.peerAddress }.get()
            #expect(peer.port == Int(relay.serverFacing.port), "the session moved to \(peer)")

            // The session was not disturbed by any of it.
            try await FuzzListenerTests.sendPattern(live, from: 64 << 10, count: 64 << 10)
            try await live.finishWriting()
            for try await _ in live.inbound {}
            try await live.close()
            let results = try await server.value
            #expect(results.first?.0 == 128 << 10 && results.first?.1 == true, "\(results)")

            // Once the session has ended its D names nothing, so the captured ClientHello that
            // carried the valid cookie, replayed from the same address and port within the cookie
            // lifetime, reaches admission: a fresh HelloVerifyRequest, never a second session.
            let cookieHello = try #require(capture.clientHandshake.filter(CapturedDatagram.isClientHello).last)
            #expect(CapturedDatagram.destinationSID(cookieHello) == sessionSID)
            var cookieCase = Case(name: "replayed ClientHello+cookie", counter: { $0.replayedAttempts }) { _, _, _ in cookieHello }
            cookieCase.fromClientAddress = true
            let before = await listener.counters
            let cookieReplays = try await Self.run(cookieCase, count: 10, listener: listener, socket: socket, relay: relay,
                                                   random: &random, sessionSID: sessionSID, template: template)
            let after = await listener.counters
            #expect(cookieReplays.counted == 10, "replayed ClientHello+cookie: \(after)")
            #expect(after.helloVerifyRequestsSent - before.helloVerifyRequestsSent == 10)
            #expect(after.sessionsAccepted == 1)
            try await listener.close()
        } catch {
            for connection in clients.current + accepted.current { await connection.abort() }
            server.cancel()
            try? await listener.close()
            throw error
        }
        #expect(!watchdog.fired.current, "the watchdog had to abort the connections")
    }
}
