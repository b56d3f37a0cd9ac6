import Foundation
import NIOCore
import TOUWire
import Testing
@testable import TOUDTLS

/// The wire format's "Fast setup" on real sockets: a listener answers a padded ClientHello at once
/// while it is not under pressure, asks for a cookie when it is (or always, if configured), and
/// sends an unproven address at most 3x what it received from it.
@Suite("Fast setup: cookie only under pressure, anti-amplification", .serialized)
struct FastSetupTests {
    typealias E2E = EndToEndTests

    /// Connects one client (through `relay` if given), exchanges a few bytes, closes both ends.
    static func connectOnce(_ listener: TOUListener, port: Int, client: TOUConfiguration = E2E.clientConfiguration()) async throws {
        let server = Task {
            var iterator = listener.connections.makeAsyncIterator()
            let connection = try #require(await iterator.next())
            for try await _ in connection.inbound {}
            try await connection.close()
        }
        let connection = try await TOUConnection.connect(host: "127.0.0.1", port: port, configuration: client)
        try await connection.write(ByteBuffer(string: "hello"))
        try await connection.finishWriting()
        for try await _ in connection.inbound {}
        try await connection.close()
        try await server.value
    }

    /// Under `nextTaskExecutor()` a connection runs on that executor's loop: connect returns, and
    /// reads and writes resume, on the loop's own thread; the listener's executor serves its
    /// connections the same way.
    /// Admission changes its tables in place: an attempt costs the same whether the listener has
    /// seen ten or ten thousand. (Held as lazy struct properties, the 4,096-slot per-source table
    /// and the admitted-attempt map were copied whole on every attempt.)
    @Test("admission tables are changed in place, not copied per attempt")
    func admissionTablesStayPut() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: E2E.serverConfiguration())
        let port = try #require(listener.localAddress.port)
        for _ in 0..<4 { try await Self.connectOnce(listener, port: port) }
        #expect(await listener.counters.sessionsAccepted == 4)
        #expect(try await listener.sourceTableCopies == 0)
        try await listener.close()
    }

    /// The client's close_notify always reaches the listener after the listener's session ended
    /// (it ends as soon as its own close_notify is out): that is expected, so it is counted apart
    /// and not as a datagram for an unknown session (one such "drop" per connection before).
    @Test("a connection's last datagrams after its session ended are not counted as drops")
    func lateDatagramsAreNotDrops() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: E2E.serverConfiguration())
        let port = try #require(listener.localAddress.port)
        for _ in 0..<3 { try await Self.connectOnce(listener, port: port) }
        var counters = await listener.counters
        let deadline = ContinuousClock.now + .seconds(10)
        while counters.datagramsAfterEnd < 3, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
            counters = await listener.counters
        }
        #expect(counters.datagramsAfterEnd == 3, "\(counters)")
        #expect(counters.droppedUnknownSession == 0, "\(counters)")
        #expect(counters.totalDropped == 0, "\(counters)")
        try await listener.close()
    }

    static func same(_ a: any TaskExecutor, _ b: any TaskExecutor) -> Bool {
        ObjectIdentifier(a as AnyObject) == ObjectIdentifier(b as AnyObject)
    }

    @Test("connect under TOUConnection.nextTaskExecutor() puts the connection on that loop: no thread switch")
    func connectingOnTheLoop() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: E2E.serverConfiguration())
        let port = try #require(listener.localAddress.port)
        let server = Task(executorPreference: listener.taskExecutor) {
            var iterator = listener.connections.makeAsyncIterator()
            for _ in 0..<3 {
                let connection = try #require(await iterator.next())
                // Each connection on its worker's loop, served there (the listener's own executor
                // is its first worker's).
                try await withTaskExecutorPreference(connection.taskExecutor) {
                    #expect(connection.endpoint.loop.inEventLoop)
                    for try await chunk in connection.inbound {
                        #expect(connection.endpoint.loop.inEventLoop)
                        try await connection.write(chunk)
                    }
                    try await connection.close()
                }
            }
        }
        for _ in 0..<3 {
            let executor = TOUConnection.nextTaskExecutor()
            try await withTaskExecutorPreference(executor) {
                let connection = try await TOUConnection.connect(host: "127.0.0.1", port: port,
                                                                 configuration: E2E.clientConfiguration(),
                                                                 initialData: ByteBuffer(string: "hi"))
                #expect(Self.same(connection.taskExecutor, executor))
                #expect(connection.endpoint.loop.inEventLoop)
                var inbound = connection.inbound.makeAsyncIterator()
                #expect(try await inbound.next() == ByteBuffer(string: "hi"))
                #expect(connection.endpoint.loop.inEventLoop)
                try await connection.close()
            }
        }
        try await server.value
        try await listener.close()
    }

    @Test("not under pressure: no HelloVerifyRequest; always-cookie: one")
    func cookieOnlyWhenAskedFor() async throws {
        for always in [false, true] {
            var configuration = E2E.serverConfiguration()
            configuration.alwaysRequireCookie = always
            let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: configuration)
            try await Self.connectOnce(listener, port: try #require(listener.localAddress.port))
            let counters = await listener.counters
            #expect(counters.helloVerifyRequestsSent == (always ? 1 : 0), "always-cookie \(always): \(counters)")
            #expect(counters.cookielessAdmissions == (always ? 0 : 1), "always-cookie \(always): \(counters)")
            try await listener.close()
        }
    }

    /// Padded ClientHellos with fresh S values open handshakes without a cookie only until a quarter
    /// of the half-open limit is reached; from then on each gets a HelloVerifyRequest and leaves no
    /// state, and a real client still connects (through a cookie exchange).
    @Test("the pressure switch: a quarter of the half-open limit, then cookies for everyone; state stays bounded")
    func pressureSwitch() async throws {
        var configuration = E2E.serverConfiguration()
        configuration.maximumHalfOpenSessions = 16  // pressure from 4 handshakes in progress
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: configuration)
        let port = try #require(listener.localAddress.port)
        // A real padded ClientHello to forge from, captured through a relay.
        let relay = try CapturingRelay(listenerPort: UInt16(port))
        try await Self.connectOnce(listener, port: Int(relay.port))
        let template = try #require(relay.snapshot.clientHandshake.first(where: CapturedDatagram.isClientHello))
        relay.stop()
        #expect(template.count == DTLSDatagramSummary.paddedClientHelloSize)

        let before = await listener.counters
        let socket = try RawUDPSocket()
        defer { socket.close() }
        var random = SeededRandom(seed: 0x9E55)
        let forged = 20
        for _ in 0..<forged {
            // Only S changes: each is a new attempt from the same address and port.
            var hello = template
            withUnsafeBytes(of: (random.next() | 1).bigEndian) { hello.replaceSubrange(8..<16, with: $0) }
            socket.send(hello, toPort: UInt16(port))
        }
        var after = before
        for _ in 0..<200 {
            after = await listener.counters
            if after.cookielessAdmissions + after.helloVerifyRequestsSent
                - before.cookielessAdmissions - before.helloVerifyRequestsSent >= forged { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        let halfOpen = try await listener.sessionCounts.halfOpen
        #expect(after.cookielessAdmissions - before.cookielessAdmissions == 4, "\(after)")
        #expect(after.helloVerifyRequestsSent - before.helloVerifyRequestsSent == forged - 4, "\(after)")
        #expect(halfOpen == 4)

        // Under pressure a real client is asked for a cookie, and connects.
        try await Self.connectOnce(listener, port: port)
        let last = await listener.counters
        #expect(last.helloVerifyRequestsSent - after.helloVerifyRequestsSent == 1, "\(last)")
        #expect(last.sessionsAccepted == before.sessionsAccepted + 1)
        try await listener.close()
    }

    /// A certificate chain of about 5 KB does not fit 3x a 1,200-byte ClientHello: the listener
    /// sends what fits, waits for the client's retransmitted ClientHello, then the rest, and the
    /// handshake completes. Checked on the relay's own record of what crossed it.
    @Test("anti-amplification: a chain too large for 3x waits for the retransmitted ClientHello")
    func amplificationLimit() async throws {
        let configuration = TOUConfiguration.server(certificateChain: .pemFile("\(E2E.certs)/big-server.pem"),
                                                    privateKey: .pemFile("\(E2E.certs)/big-server.key"))
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: configuration)
        let relay = try CapturingRelay(listenerPort: UInt16(try #require(listener.localAddress.port)))
        defer { relay.stop() }
        try await Self.connectOnce(listener, port: Int(relay.port), client: E2E.clientConfiguration(ca: "big-ca.pem"))
        let counters = await listener.counters
        #expect(counters.cookielessAdmissions == 1 && counters.helloVerifyRequestsSent == 0, "\(counters)")
        #expect(counters.largestAmplification > 2 && counters.largestAmplification <= 3, "\(counters)")

        // Until the client's Finished (its first epoch-1 handshake record) has crossed, the
        // listener never sent more than 3x what it had received.
        var fromClient = 0
        var fromListener = 0
        var retransmittedHello = false
        var checked = 0
        for (fromClientSide, bytes) in relay.snapshot.ordered {
            let payload = ByteBuffer(bytes: bytes.dropFirst(CapturedDatagram.headerLength(bytes) ?? 0))
            if fromClientSide {
                if payload.carriesEpoch1Handshake { break }
                if fromClient > 0, DTLSDatagramSummary.scan(payload)?.isClientHello == true { retransmittedHello = true }
                fromClient += bytes.count
            } else {
                fromListener += bytes.count
                checked += 1
                #expect(fromListener <= 3 * fromClient, "the listener sent \(fromListener) bytes for \(fromClient)")
            }
        }
        #expect(retransmittedHello, "the flight fitted 3x: this test needs a larger chain")
        #expect(checked > 0 && fromListener > 3 * DTLSDatagramSummary.paddedClientHelloSize)
        try await listener.close()
    }
}
