import Foundation
import NIOCore
import Testing
@testable import TOUDTLS

/// Round trips from a client's first datagram to the first byte of the answer to a request written
/// right after connect, through a relay that holds every datagram 100 ms each way. The relay counts
/// one-way trips causally (`DelayRelay`), so the figure does not depend on how busy the machine is;
/// the relay's clock gives the same figure in time, which is printed beside it.
@Suite("Setup round trips through a delay line", .serialized)
struct SetupRoundTripTests {
    typealias E2E = EndToEndTests

    static let oneWayDelayMilliseconds = 100

    /// The wire format's "Fast setup": the request rides on the SYN, which follows the client's
    /// Finished, and the listener answers from SYN-RECEIVED, right behind its own Finished and
    /// SYN-ACK: 2 round trips, one more for a cookie exchange.
    enum Bound {
        static let cookieless = 2.0
        static let alwaysCookie = 3.0
        static let resumed = 2.0
    }

    struct Measurement: CustomStringConvertible {
        /// One-way trips to the datagram that carried the first response byte, halved.
        var roundTrips: Double
        /// (that datagram forwarded to the client - the client's first datagram) / RTT, to the nearest half.
        var roundTripsByClock: Double
        var resumed: Bool
        var datagramsToListener = 0
        var bytesToListener = 0
        var datagramsToClient = 0
        var bytesToClient = 0

        var description: String {
            "\(roundTrips) round trips (relay clock: \(roundTripsByClock)); until the answer: client -> listener "
                + "\(datagramsToListener) datagrams, \(bytesToListener) B; listener -> client \(datagramsToClient) "
                + "datagrams, \(bytesToClient) B; resumed: \(resumed)"
        }
    }

    /// Connects through `relay` with one byte to send first (on the SYN), and waits for the echo.
    /// Both sides run on event loops, not in Swift's cooperative pool (a thread per core, which
    /// tests running beside this one can keep busy): an echo written late would leave after the
    /// client's next datagram, and an answer read late would count datagrams that came after it.
    static func measure(_ listener: TOUListener, through relay: DelayRelay,
                        client: TOUConfiguration) async throws -> Measurement {
        let server = Task(executorPreference: listener.taskExecutor) {
            var connections = listener.connections.makeAsyncIterator()
            guard let connection = await connections.next() else { return }
            do {
                for try await chunk in connection.inbound { try await connection.write(chunk) }
            } catch {
                await connection.abort()  // the client resets once it has its answer
            }
        }
        let start = DelayRelay.now()
        let (answer, answered, resumed) = try await withTaskExecutorPreference(TOUConnection.nextTaskExecutor()) {
            let connection = try await TOUConnection.connect(host: "127.0.0.1", port: Int(relay.port),
                                                             configuration: client, initialData: ByteBuffer(string: "x"))
            var inbound = connection.inbound.makeAsyncIterator()
            let answer = try await inbound.next()
            let answered = DelayRelay.now()
            let resumed = connection.isResumed
            await connection.abort()
            return (answer, answered, resumed)
        }
        #expect(answer?.readableBytes ?? 0 >= 1)
        await server.value

        let record = relay.forwarded.filter { $0.arrived >= start && $0.forwarded <= answered }
        let first = try #require(record.first(where: { !$0.toClient }))
        let carrier = try #require(record.last(where: { $0.toClient }))
        let roundTrip = Double(2 * relay.delayNanoseconds)
        var measurement = Measurement(
            // Legs count on across a relay's connections: this one's first datagram is its leg 1.
            roundTrips: Double(carrier.leg - first.leg + 1) / 2,
            roundTripsByClock: (Double(carrier.forwarded - first.arrived) / roundTrip * 2).rounded() / 2,
            resumed: resumed)
        for item in record where item.forwarded <= carrier.forwarded {
            if item.toClient {
                measurement.datagramsToClient += 1
                measurement.bytesToClient += item.size
            } else {
                measurement.datagramsToListener += 1
                measurement.bytesToListener += item.size
            }
        }
        return measurement
    }

    static func listenerBehindRelay(_ configuration: TOUConfiguration) async throws -> (TOUListener, DelayRelay) {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: configuration)
        let relay = try DelayRelay(listenerPort: UInt16(try #require(listener.localAddress.port)),
                                   oneWayDelayMilliseconds: oneWayDelayMilliseconds)
        return (listener, relay)
    }

    /// A client without a session cache, so every handshake is a full one.
    static func fullHandshakeClient() -> TOUConfiguration {
        var configuration = E2E.clientConfiguration()
        configuration.sessionCache = nil
        return configuration
    }

    @Test("full handshake without a cookie: at most 2 round trips to the first response byte")
    func cookieless() async throws {
        let (listener, relay) = try await Self.listenerBehindRelay(E2E.serverConfiguration())
        defer { relay.stop() }
        let measurement = try await Self.measure(listener, through: relay, client: Self.fullHandshakeClient())
        print("setup round trips, full handshake without cookie: \(measurement)")
        let counters = await listener.counters
        #expect(counters.cookielessAdmissions == 1 && counters.helloVerifyRequestsSent == 0, "\(counters)")
        #expect(!measurement.resumed)
        #expect(measurement.roundTrips <= Bound.cookieless, "\(measurement)")
        try await listener.close()
    }

    @Test("full handshake with a cookie exchange (alwaysRequireCookie): at most 3 round trips")
    func alwaysCookie() async throws {
        var configuration = E2E.serverConfiguration()
        configuration.alwaysRequireCookie = true
        let (listener, relay) = try await Self.listenerBehindRelay(configuration)
        defer { relay.stop() }
        let measurement = try await Self.measure(listener, through: relay, client: Self.fullHandshakeClient())
        print("setup round trips, full handshake with cookie: \(measurement)")
        let counters = await listener.counters
        #expect(counters.cookielessAdmissions == 0 && counters.helloVerifyRequestsSent == 1, "\(counters)")
        #expect(measurement.roundTrips <= Bound.alwaysCookie, "\(measurement)")
        try await listener.close()
    }

    @Test("resumed handshake: at most 2 round trips")
    func resumed() async throws {
        let (listener, relay) = try await Self.listenerBehindRelay(E2E.serverConfiguration())
        defer { relay.stop() }
        // The cache is keyed by the port connected to: prime it through the relay too.
        let client = E2E.clientConfiguration()
        let priming = try await Self.measure(listener, through: relay, client: client)
        #expect(!priming.resumed)
        let measurement = try await Self.measure(listener, through: relay, client: client)
        print("setup round trips, resumed handshake: \(measurement)")
        #expect(measurement.resumed)
        #expect(measurement.roundTrips <= Bound.resumed, "\(measurement)")
        try await listener.close()
    }
}
