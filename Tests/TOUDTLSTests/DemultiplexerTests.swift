import DTLS
import Foundation
import NIOCore
import TOUWire
import Testing
@testable import TOUDTLS

/// The endpoint's session table and admission, without sockets: real ClientHellos and SYNs from
/// initiating sessions (real OpenSSL), routed by a listener's or a client's demultiplexer.
@Suite("Demultiplexer")
struct DemultiplexerTests {
    static let client = try! SocketAddress(ipAddress: "192.0.2.7", port: 40_000)
    static let otherClient = try! SocketAddress(ipAddress: "198.51.100.9", port: 50_000)
    static let server = try! SocketAddress(ipAddress: "127.0.0.1", port: 6080)
    static let parameters = SessionParameters(.client(trustRoots: .pemBytes([])))

    static func listener(_ adjust: (inout TOUConfiguration) -> Void = { _ in },
                         plain: Bool = false) throws -> Demultiplexer<TOUSession> {
        var configuration = plain
            ? TOUConfiguration(security: .plain)
            : TOUConfiguration.server(certificateChain: .pemBytes([]), privateKey: .pemBytes([]))
        adjust(&configuration)
        let context = plain ? nil : try DTLSContext.server(
            certificateChainPEM: try TOUSessionTests.pem("server.pem"), privateKeyPEM: try TOUSessionTests.pem("server.key"))
        return Demultiplexer(role: .listener, configuration: configuration, parameters: SessionParameters(configuration),
                             dtlsContext: context)
    }

    /// A new initiating session (DTLS unless `plain`) and its first datagram: a padded ClientHello, or a SYN.
    static func initiator(plain: Bool = false) throws -> (TOUSession, ByteBuffer) {
        let context = plain ? nil : try DTLSContext.client(trustRootsPEM: try TOUSessionTests.pem("ca.pem"))
        let session = try TOUSession.initiate(context: context, serverName: "localhost", peer: server,
                                              parameters: plain ? SessionParameters(TOUConfiguration(security: .plain)) : parameters,
                                              innerRemotePort: 6080, now: .now())
        return (session, try #require(session.pollDatagram()))
    }

    /// A datagram with this GUE header and a few bytes of payload.
    static func datagram(_ header: GUEHeader) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        header.write(into: &buffer)
        buffer.writeBytes([23, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0])
        return buffer
    }

    @Test("garbage is dropped as malformed; DTLS at a plain listener is refused for its mode; nothing is created")
    func malformed() throws {
        let listener = try Self.listener(plain: true)
        guard case .drop(.malformed(nil)) = listener.route(ByteBuffer(bytes: [1, 2]), from: Self.client, now: .now()) else {
            Issue.record("a 2-byte datagram was not dropped as malformed")
            return
        }
        let (_, hello) = try Self.initiator()
        guard case .drop(.malformed(.modeMismatch(listenerIsSecure: false)?)) = listener.route(hello, from: Self.client, now: .now()) else {
            Issue.record("a ClientHello at a plain listener was not refused for its mode")
            return
        }
        #expect(listener.counters.droppedMalformed == 2 && listener.counters.datagramsReceived == 2)
        #expect(listener.count == 0)
    }

    @Test("not under pressure, a padded ClientHello starts a session; its retransmission reaches that session, not a second one")
    func cookielessAdmissionAndRetransmission() throws {
        let listener = try Self.listener()
        let (_, hello) = try Self.initiator()
        #expect(hello.readableBytes >= DTLSDatagramSummary.paddedClientHelloSize)
        guard case .newSession(let session, let key) = listener.route(hello, from: Self.client, now: .now()) else {
            Issue.record("no session from a padded ClientHello")
            return
        }
        listener.insert(session, sid: session.localSID, admissionKey: key)
        guard case .deliver(let target, _, _) = listener.route(hello, from: Self.client, now: .now()) else {
            Issue.record("the retransmitted ClientHello did not reach its session")
            return
        }
        #expect(target === session)
        #expect(listener.count == 1 && listener.halfOpenCount == 1)
        #expect(listener.counters.cookielessAdmissions == 1 && listener.counters.helloVerifyRequestsSent == 0)
        // Once established, the attempt's key no longer reaches it; D still does.
        listener.established(admissionKey: key)
        #expect(listener.halfOpenCount == 0)
    }

    @Test("always requiring a cookie: a HelloVerifyRequest and no state, then the ClientHello with the cookie starts the session")
    func cookieExchange() throws {
        let listener = try Self.listener { $0.alwaysRequireCookie = true }
        let (initiator, hello) = try Self.initiator()
        guard case .reply(let request, refused: nil) = listener.route(hello, from: Self.client, now: .now()) else {
            Issue.record("no HelloVerifyRequest")
            return
        }
        #expect(listener.count == 0 && listener.halfOpenCount == 0)
        #expect(listener.counters.helloVerifyRequestsSent == 1)
        var payload = request
        let header = try GUEHeader.parse(from: &payload, mode: .secure)
        #expect(header.destinationSID == initiator.localSID && header.sourceSID != nil)
        initiator.receive(header: header, payload: payload, from: Self.server, now: .now())
        initiator.pump(now: .now())
        let withCookie = try #require(initiator.pollDatagram())
        guard case .newSession(let session, _) = listener.route(withCookie, from: Self.client, now: .now()) else {
            Issue.record("the ClientHello with its cookie started no session")
            return
        }
        // The SID it derives is the one its HelloVerifyRequest announced.
        #expect(session.localSID == header.sourceSID)
        #expect(listener.counters.cookielessAdmissions == 0)
    }

    @Test("D names a session whatever the source address; a listener remembers an ended session's SID, a client does not")
    func routingBySessionID() throws {
        let listener = try Self.listener()
        let (session, _) = try Self.initiator()
        listener.insert(session, sid: 77)
        let toSession = Self.datagram(.secure(source: nil, destination: 77))
        for source in [Self.client, Self.otherClient] {
            guard case .deliver(let target, _, _) = listener.route(toSession, from: source, now: .now()) else {
                Issue.record("not delivered from \(source)")
                return
            }
            #expect(target === session)
        }
        listener.remove(sid: 77, admissionKey: nil, now: .now())
        guard case .drop(.afterEnd) = listener.route(toSession, from: Self.client, now: .now()),
              case .drop(.unknownSession) = listener.route(Self.datagram(.secure(source: nil, destination: 78)),
                                                           from: Self.client, now: .now()) else {
            Issue.record("an ended and an unknown session were not told apart")
            return
        }
        #expect(listener.counters.datagramsAfterEnd == 1 && listener.counters.droppedUnknownSession == 1)
        #expect(listener.counters.totalDropped == 1)

        // A client admits nothing: S alone is an unknown session there.
        let client = Demultiplexer<TOUSession>(role: .client, configuration: .client(trustRoots: .pemBytes([])),
                                               parameters: Self.parameters, dtlsContext: nil)
        client.insert(session, sid: 5)
        client.remove(sid: 5, admissionKey: nil, now: .now())
        guard case .drop(.unknownSession) = client.route(Self.datagram(.secure(source: 9, destination: nil)),
                                                         from: Self.server, now: .now()),
              case .drop(.unknownSession) = client.route(Self.datagram(.secure(source: nil, destination: 5)),
                                                         from: Self.server, now: .now()) else {
            Issue.record("a client routed an attempt or remembered an ended session")
            return
        }
    }

    @Test("limits: at the half-open limit an attempt is refused and counted; a closing listener admits nothing; a datagram that is no ClientHello is a bad attempt")
    func limits() throws {
        let listener = try Self.listener {
            $0.maximumHalfOpenSessions = 1
            $0.cookielessHandshakeThreshold = 2  // so that the limit, not the pressure switch, refuses
        }
        let (_, first) = try Self.initiator()
        guard case .newSession(let session, let key) = listener.route(first, from: Self.client, now: .now()) else {
            Issue.record("the first attempt was refused")
            return
        }
        listener.insert(session, sid: session.localSID, admissionKey: key)
        let (_, second) = try Self.initiator()
        guard case .drop(.overLimit(.halfOpenLimit(1)?)) = listener.route(second, from: Self.otherClient, now: .now()) else {
            Issue.record("the second attempt was not refused at the half-open limit")
            return
        }
        listener.accepting = false
        listener.established(admissionKey: key)
        guard case .drop(.overLimit(nil)) = listener.route(second, from: Self.otherClient, now: .now()) else {
            Issue.record("a closing listener admitted an attempt")
            return
        }
        listener.accepting = true
        guard case .drop(.badAttempt(.notAClientHello)) = listener.route(Self.datagram(.secure(source: 3, destination: nil)),
                                                                         from: Self.otherClient, now: .now()) else {
            Issue.record("application data with S alone was not a bad attempt")
            return
        }
        #expect(listener.counters.droppedOverLimit == 2 && listener.counters.droppedBadAttempt == 1)
        #expect(listener.count == 1)
    }

    @Test("a replayed ClientHello (same address, port and S) after its session ended gets a fresh HelloVerifyRequest, never a second session")
    func replayedAttempt() throws {
        let listener = try Self.listener()
        let (_, hello) = try Self.initiator()
        guard case .newSession(let session, let key) = listener.route(hello, from: Self.client, now: .now()) else {
            Issue.record("no session")
            return
        }
        listener.insert(session, sid: session.localSID, admissionKey: key)
        listener.remove(sid: session.localSID, admissionKey: key, now: .now())
        guard case .reply(_, refused: .replayed?) = listener.route(hello, from: Self.client, now: .now()) else {
            Issue.record("the replay was not answered with a HelloVerifyRequest")
            return
        }
        #expect(listener.count == 0 && listener.counters.replayedAttempts == 1)
    }

    @Test("a worker's SIDs carry its index in their first byte; the listener's session limit holds across workers; a datagram whose D names another worker is handed there and counted")
    func workers() throws {
        var configuration = TOUConfiguration.server(certificateChain: .pemBytes([]), privateKey: .pemBytes([]))
        configuration.maximumSessions = 3
        let context = try DTLSContext.server(certificateChainPEM: try TOUSessionTests.pem("server.pem"),
                                             privateKeyPEM: try TOUSessionTests.pem("server.key"))
        let perWorker = configuration.dividedAmong(workers: 2)
        #expect(perWorker.cookielessAdmissionsPerSecond == 500 && perWorker.cookielessHandshakeThreshold == 256)
        let budget = SessionBudget()
        let (first, second) = [0, 1].map { index in
            Demultiplexer<TOUSession>(role: .listener, configuration: perWorker, parameters: SessionParameters(perWorker),
                                      dtlsContext: context, worker: index, of: 2, budget: budget)
        }.twoElements
        for (index, worker) in [second, second, first].enumerated() {
            let (_, hello) = try Self.initiator()
            guard case .newSession(let session, let key) = worker.route(hello, from: Self.client, now: .now()) else {
                Issue.record("attempt \(index) was refused")
                return
            }
            #expect(session.localSID >> 56 == UInt64(worker.worker) && session.localSID & 0x00FF_FFFF_FFFF_FFFF != 0)
            worker.insert(session, sid: session.localSID, admissionKey: key)
        }
        #expect(budget.sessions == 3 && budget.halfOpen == 3)
        let (_, fourth) = try Self.initiator()
        guard case .drop(.overLimit(.sessionLimit(3)?)) = first.route(fourth, from: Self.otherClient, now: .now()) else {
            Issue.record("the fourth session was not refused at the listener's limit")
            return
        }
        let forWorkerZero = Self.datagram(.secure(source: nil, destination: 0x00AB_CDEF_0123_4567))
        guard case .handOver(toWorker: 0, _, _) = second.route(forWorkerZero, from: Self.client, now: .now()) else {
            Issue.record("a datagram for worker 0's session was not handed over")
            return
        }
        // A worker byte beyond the workers is no session anywhere.
        guard case .drop(.unknownSession) = second.route(Self.datagram(.secure(source: nil, destination: 0x0700_0000_0000_0001)),
                                                         from: Self.client, now: .now()) else {
            Issue.record("a SID of no worker was not an unknown session")
            return
        }
        #expect(second.counters.misroutedDatagrams == 1 && second.counters.totalDropped == 1)
        first.removeAll()
        #expect(budget.sessions == 2 && budget.halfOpen == 2)
        #expect(SessionID.onWorker(0x00FF_FFFF_FFFF_FFFF, worker: 3, of: 4) == 0x03FF_FFFF_FFFF_FFFF)
        #expect(SessionID.onWorker(0x0100_0000_0000_0000, worker: 0, of: 2) != 0)
        #expect(SessionID.onWorker(0x1234, worker: 5, of: 1) == 0x1234)
    }

    @Test("plain mode: a SYN starts a session; a segment that is no SYN is a bad attempt")
    func plainAdmission() throws {
        let listener = try Self.listener(plain: true)
        let (_, syn) = try Self.initiator(plain: true)
        guard case .newSession(let session, _) = listener.route(syn, from: Self.client, now: .now()) else {
            Issue.record("no session from a SYN")
            return
        }
        #expect(session.remoteSID != nil)
        var notSYN = ByteBufferAllocator().buffer(capacity: 40)
        GUEHeader.plain(source: 4, destination: nil).write(into: &notSYN)
        notSYN.writeBytes([0, 80, 0, 80, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xFF, 0xFF, 0, 0, 0, 0])
        guard case .drop(.badAttempt(.notASYN)) = listener.route(notSYN, from: Self.client, now: .now()) else {
            Issue.record("an ACK with S alone was not a bad attempt")
            return
        }
    }
}

private extension Array {
    var twoElements: (Element, Element) { (self[0], self[1]) }
}
