import DTLS
import Foundation
import NIOCore
import TCPEngine
import TOUWire
import Testing
@testable import TOUDTLS

/// Two sans-IO sessions joined in memory: the initiator's datagrams reach the target through the
/// listener's own demultiplexer (the same admission and session table as the endpoint's), without
/// sockets.
@Suite("TOUSession pair")
struct TOUSessionTests {
    static let certs = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("certs").path
    static let clientAddress = try! SocketAddress(ipAddress: "127.0.0.1", port: 40_000)
    static let serverAddress = try! SocketAddress(ipAddress: "127.0.0.1", port: 6080)

    static func pem(_ name: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(certs)/\(name)")))
    }

    final class Pair {
        let initiator: TOUSession
        var target: TOUSession?
        let serverContext: DTLSContext
        /// The target's side of the link, as a listener's endpoint has it.
        let demultiplexer: Demultiplexer<TOUSession>
        /// Every datagram each side sent, as parsed GUE headers plus payloads.
        var fromInitiator: [(GUEHeader, ByteBuffer)] = []
        var fromTarget: [(GUEHeader, ByteBuffer)] = []
        /// Who sent each datagram, in the order they crossed the link (true: the initiator).
        var order: [Bool] = []
        var initiatorEvents: [SessionEvent] = []
        /// Where the initiator's datagrams appear to come from (a NAT may change it).
        var initiatorAddress = TOUSessionTests.clientAddress
        var targetEvents: [SessionEvent] = []

        /// What the link does with a datagram, per direction.
        enum LinkAction { case deliver, drop, hold, duplicate }
        var toTarget: (GUEHeader, ByteBuffer) -> LinkAction = { _, _ in .deliver }
        var toInitiator: (GUEHeader, ByteBuffer) -> LinkAction = { _, _ in .deliver }
        /// Datagrams held by the link, until `release`.
        var heldForTarget: [(GUEHeader, ByteBuffer)] = []
        var heldForInitiator: [(GUEHeader, ByteBuffer)] = []
        /// The target answers a padded cookieless ClientHello at once, as a listener not under
        /// pressure; otherwise it asks for a cookie first.
        let admitWithoutCookie: Bool

        init(parameters: SessionParameters, targetParameters: SessionParameters? = nil,
             initialData: ByteBuffer? = nil, admitWithoutCookie: Bool = false) throws {
            let clientContext = try DTLSContext.client(trustRootsPEM: try pem("ca.pem"))
            serverContext = try DTLSContext.server(certificateChainPEM: try pem("server.pem"),
                                                   privateKeyPEM: try pem("server.key"))
            initiator = try TOUSession.initiate(context: clientContext, serverName: "localhost",
                                                peer: serverAddress, parameters: parameters,
                                                innerRemotePort: 6080, initialData: initialData, now: .now())
            self.parameters = targetParameters ?? parameters
            self.admitWithoutCookie = admitWithoutCookie
            var listener = TOUConfiguration.server(certificateChain: .pemBytes([]), privateKey: .pemBytes([]))
            listener.alwaysRequireCookie = !admitWithoutCookie
            demultiplexer = Demultiplexer(role: .listener, configuration: listener,
                                          parameters: self.parameters, dtlsContext: serverContext)
        }

        /// The target's parameters.
        let parameters: SessionParameters

        /// Delivers what the link held, in the order it was held.
        func release() {
            let now = NIODeadline.now()
            let forTarget = heldForTarget
            let forInitiator = heldForInitiator
            heldForTarget = []
            heldForInitiator = []
            for (header, payload) in forTarget { deliverToTarget(header: header, payload: payload, now: now) }
            for (header, payload) in forInitiator { deliverToInitiator(header: header, payload: payload, now: now) }
        }

        /// Moves datagrams both ways until nothing moves.
        func run(maximumRounds: Int = 10_000) throws {
            for _ in 0..<maximumRounds {
                var moved = false
                let now = NIODeadline.now()
                while let datagram = initiator.pollDatagram() {
                    moved = true
                    try cross(datagram, fromInitiator: true, now: now)
                }
                while let datagram = target?.pollDatagram() {
                    moved = true
                    try cross(datagram, fromInitiator: false, now: now)
                }
                while let event = initiator.pollEvent() { initiatorEvents.append(event) }
                while let event = target?.pollEvent() { targetEvents.append(event) }
                if !moved, !runTimersDueSoon(horizon: timerHorizon) { return }
            }
        }

        /// One datagram onto the link: recorded, then delivered, dropped, held or duplicated as the
        /// link's action for its direction says.
        private func cross(_ datagram: ByteBuffer, fromInitiator sender: Bool, now: NIODeadline) throws {
            var payload = datagram
            let header = try GUEHeader.parse(from: &payload, mode: .secure)
            order.append(sender)
            if sender { fromInitiator.append((header, payload)) } else { fromTarget.append((header, payload)) }
            func deliver() {
                if sender {
                    deliverToTarget(header: header, payload: payload, now: now)
                } else {
                    deliverToInitiator(header: header, payload: payload, now: now)
                }
            }
            switch sender ? toTarget(header, payload) : toInitiator(header, payload) {
            case .deliver: deliver()
            case .drop: break
            case .hold:
                if sender { heldForTarget.append((header, payload)) } else { heldForInitiator.append((header, payload)) }
            case .duplicate:
                deliver()
                deliver()
            }
        }

        /// How far ahead `run` waits for timers; raise it to let a retransmission timer fire.
        var timerHorizon: TimeAmount = .milliseconds(100)

        /// Pacing and delayed ACKs hold segments for a few milliseconds of real time: wait for
        /// timers due within 100 ms and fire them. False when none is (handshake and idle timers
        /// are seconds away, so the pair goes quiet).
        private func runTimersDueSoon(horizon: TimeAmount) -> Bool {
            let sessions = [initiator] + (target.map { [$0] } ?? [])
            guard let next = sessions.compactMap(\.nextDeadline).min(), next < .now() + horizon else {
                return false
            }
            let wait = next - .now()
            if wait > .zero { Thread.sleep(forTimeInterval: Double(wait.nanoseconds) / 1e9) }
            let now = NIODeadline.now()
            for session in sessions where (session.nextDeadline ?? .distantFuture) <= now {
                session.handleTimeout(now: now)
            }
            return true
        }

        private func deliverToInitiator(header: GUEHeader, payload: ByteBuffer, now: NIODeadline) {
            initiator.receive(header: header, payload: payload, from: serverAddress, now: now)
            initiator.pump(now: now)
        }

        private func deliverToTarget(header: GUEHeader, payload: ByteBuffer, now: NIODeadline) {
            switch demultiplexer.route(header: header, payload: payload, from: initiatorAddress, now: now) {
            case .deliver(let session, let header, let payload):
                session.receive(header: header, payload: payload, from: initiatorAddress, now: now)
                session.pump(now: now)
            case .newSession(let session, let key):
                demultiplexer.insert(session, sid: session.localSID, admissionKey: key)
                target = session
            case .reply(let datagram, _):
                var payload = datagram
                let replyHeader = try! GUEHeader.parse(from: &payload, mode: .secure)
                fromTarget.append((replyHeader, payload))
                order.append(false)
                deliverToInitiator(header: replyHeader, payload: payload, now: now)
            case .drop, .handOver:
                break
            }
        }
    }

    static var parameters: SessionParameters { SessionParameters(.client(trustRoots: .pemBytes([]))) }

    @Test("handshake, data both ways, and the closing rules: passive closer's close_notify ends both")
    func handshakeDataAndClose() throws {
        let pair = try Pair(parameters: Self.parameters)
        try pair.run()
        let target = try #require(pair.target)
        #expect(pair.initiatorEvents.contains(.established))
        #expect(pair.targetEvents.contains(.established))
        #expect(pair.initiator.remoteSID == target.localSID)
        #expect(target.remoteSID == pair.initiator.localSID)
        // MSS at path MTU 1500 over IPv4 with AES-256-GCM (wire format: 1399).
        #expect(pair.initiator.maximumSegmentSize == 1399)
        // TCP's handshake proved both DTLS handshakes done: OpenSSL's objects are gone, and the
        // data and closing below run on the record layer alone.
        #expect(pair.initiator.handshakeStateReleased && target.handshakeStateReleased)

        var data = ByteBufferAllocator().buffer(capacity: 100_000)
        data.writeRepeatingByte(7, count: 100_000)
        #expect(pair.initiator.write(data, now: .now()) == 100_000)
        try pair.run()
        var received = 0
        while let chunk = target.read(maximumBytes: 1 << 20, now: .now()) { received += chunk.readableBytes }
        try pair.run()
        #expect(received == 100_000)

        // The initiator closes first (active closer), then the target (passive closer).
        pair.initiator.finishWriting(now: .now())
        try pair.run()
        #expect(pair.targetEvents.contains(.peerFinished))
        #expect(pair.initiator.tcp?.state == .finWait2)
        target.finishWriting(now: .now())
        try pair.run()
        #expect(pair.targetEvents.last == .finished(nil))
        #expect(pair.initiatorEvents.last == .finished(nil), "close_notify must end TIME-WAIT early")
        // The last datagram from each side is its close_notify alert (type 21) without S.
        let lastFromTarget = try #require(pair.fromTarget.last)
        #expect(lastFromTarget.0.sourceSID == nil && lastFromTarget.0.destinationSID == pair.initiator.localSID)
        #expect(lastFromTarget.1.getInteger(at: lastFromTarget.1.readerIndex, as: UInt8.self) == 21)
        // ... and the active closer answers with its own.
        let lastFromInitiator = try #require(pair.fromInitiator.last)
        #expect(lastFromInitiator.0.sourceSID == nil && lastFromInitiator.0.destinationSID == target.localSID)
        #expect(lastFromInitiator.1.getInteger(at: lastFromInitiator.1.readerIndex, as: UInt8.self) == 21)
    }

    @Test("S marks exactly the handshake datagrams; data records carry D alone")
    func sourceFlagRules() throws {
        let pair = try Pair(parameters: Self.parameters)
        try pair.run()
        var data = ByteBufferAllocator().buffer(capacity: 10)
        data.writeString("hello")
        _ = pair.initiator.write(data, now: .now())
        try pair.run()
        for (header, payload) in pair.fromInitiator + pair.fromTarget {
            let summary = try #require(DTLSDatagramSummary.scan(payload))
            #expect((header.sourceSID != nil) == summary.carriesHandshakeOrEpoch0)
        }
        // The very first ClientHello carries S but no D; everything else carries D.
        #expect(pair.fromInitiator.first?.0.destinationSID == nil)
        #expect(pair.fromInitiator.dropFirst().allSatisfy { $0.0.destinationSID != nil })
        #expect(pair.fromTarget.allSatisfy { $0.0.destinationSID == pair.initiator.localSID })
    }

    @Test("after the ServerHello, a datagram with another source SID is dropped")
    func sourceSIDLockedAfterServerHello() throws {
        let pair = try Pair(parameters: Self.parameters)
        try pair.run()
        let (header, payload) = try #require(pair.fromTarget.last)
        let forged = GUEHeader.secure(source: 0xdead_beef, destination: header.destinationSID)
        let before = pair.initiator.droppedDatagrams
        pair.initiator.receive(header: forged, payload: payload, from: Self.serverAddress, now: .now())
        #expect(pair.initiator.droppedDatagrams == before + 1)
    }

    @Test("a handshake that never completes times out")
    func handshakeTimeout() throws {
        var parameters = Self.parameters
        parameters.handshakeTimeout = .seconds(10)
        let pair = try Pair(parameters: parameters)
        let start = NIODeadline.now()
        pair.initiator.handleTimeout(now: start + .seconds(11))
        var events: [SessionEvent] = []
        while let event = pair.initiator.pollEvent() { events.append(event) }
        #expect(events.last == .finished(.timedOut("no handshake with the peer within 10 s")))
    }

    @Test("address learning: an authenticated, newest datagram moves the peer; a replay never does; 3x limit")
    func addressLearning() throws {
        var parameters = Self.parameters
        parameters.noDelay = true  // each write leaves at once, whatever is unacknowledged
        let pair = try Pair(parameters: parameters)
        try pair.run()
        let target = try #require(pair.target)
        var data = ByteBufferAllocator().buffer(capacity: 10)
        data.writeString("before")
        _ = pair.initiator.write(data, now: .now())
        try pair.run()
        let old = try #require(pair.fromInitiator.last(where: { $0.0.sourceSID == nil }))

        // The client's NAT rebinds: its next datagram arrives from another port.
        let rebound = try SocketAddress(ipAddress: "127.0.0.1", port: 40_001)
        pair.initiatorAddress = rebound
        data.clear()
        // Large enough that 3x its size lets a full segment through, whether or not the target's
        // ACK for it is delayed.
        data.writeRepeatingByte(0x61, count: 1000)
        _ = pair.initiator.write(data, now: .now())
        let moving = try #require(pair.initiator.pollDatagram())
        var payload = moving
        let header = try GUEHeader.parse(from: &payload, mode: .secure)
        target.receive(header: header, payload: payload, from: rebound, now: .now())
        target.pump(now: .now())  // as the endpoint does after each read batch
        #expect(target.peerAddress == rebound)
        #expect(target.stats.addressChanges == 1)

        // Until the new address proves it is live, at most 3x what it sent comes back.
        var bulk = ByteBufferAllocator().buffer(capacity: 200_000)
        bulk.writeRepeatingByte(1, count: 200_000)
        _ = target.write(bulk, now: .now())
        var sent = 0
        while let datagram = target.pollDatagram() { sent += datagram.readableBytes }
        #expect(sent > 0 && sent <= 3 * moving.readableBytes)
        #expect(target.stats.amplificationLimitedDatagrams > 0)

        // A replayed older datagram from a third address does not move the session.
        let attacker = try SocketAddress(ipAddress: "127.0.0.9", port: 50_000)
        target.receive(header: old.0, payload: old.1, from: attacker, now: .now())
        #expect(target.peerAddress == rebound)
        #expect(target.stats.addressChanges == 1)
    }

    @Test("the initiator pads a cookieless ClientHello to 1,200 bytes of UDP payload, and only that one")
    func cookielessClientHelloIsPadded() throws {
        let pair = try Pair(parameters: Self.parameters)
        try pair.run()
        #expect(pair.initiatorEvents.contains(.established))
        let hellos = pair.fromInitiator.filter { DTLSDatagramSummary.scan($0.1)?.isClientHello == true }
        try #require(hellos.count == 2)  // this pair's target always asks for a cookie
        let first = try #require(DTLSDatagramSummary.scan(hellos[0].1))
        #expect(first.clientHelloHasCookie == false)
        #expect(hellos[0].0.encodedLength + hellos[0].1.readableBytes == 1200)
        #expect(first.paddingLength > 0)
        let second = try #require(DTLSDatagramSummary.scan(hellos[1].1))
        #expect(second.clientHelloHasCookie == true)
        #expect(second.paddingLength == 0)
    }

    @Test("DTLS False Start: the initiator's SYN leaves right after its Finished, before the target's Finished")
    func synFollowsTheInitiatorsFinished() throws {
        let pair = try Pair(parameters: Self.parameters)
        try pair.run()
        #expect(pair.initiatorEvents.contains(.established))
        let finished = try #require(pair.fromInitiator.firstIndex { $0.1.carriesEpoch1Handshake })
        let syn = try #require(pair.fromInitiator.firstIndex { $0.1.startsWithApplicationData })
        #expect(syn == finished + 1)
        let targetFinished = try #require(pair.fromTarget.firstIndex { $0.1.carriesEpoch1Handshake })
        // Positions in the shared order of the link.
        let initiatorPositions = pair.order.indices.filter { pair.order[$0] }
        let targetPositions = pair.order.indices.filter { !pair.order[$0] }
        #expect(initiatorPositions[syn] < targetPositions[targetFinished])
    }
}
