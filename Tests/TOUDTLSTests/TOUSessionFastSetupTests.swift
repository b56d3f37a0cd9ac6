import DTLS
import Foundation
import NIOCore
import TCPEngine
import TOUWire
import Testing
@testable import TOUDTLS

/// The wire format's "Fast setup" between two sessions in memory: the SYN with the request after
/// the initiator's Finished, the answer from SYN-RECEIVED, and what the link may do to them.
@Suite("TOUSession fast setup", .serialized)
struct TOUSessionFastSetupTests {
    typealias Pair = TOUSessionTests.Pair
    static var parameters: SessionParameters { TOUSessionTests.parameters }
    static let request = ByteBuffer(string: "GET / HTTP/1.0\r\n\r\n")
    static let answer = ByteBuffer(string: "HTTP/1.0 200 OK\r\n\r\nhello")

    /// A pair whose initiator has the request to send first, and whose target answers a padded
    /// ClientHello at once (a listener not under pressure).
    static func requestPair() throws -> Pair {
        try Pair(parameters: parameters, initialData: request, admitWithoutCookie: true)
    }

    /// Everything readable at `session`, as text.
    static func readAll(_ session: TOUSession) -> String {
        var text = ""
        while let chunk = session.read(maximumBytes: 1 << 20, now: .now()) { text += String(buffer: chunk) }
        return text
    }

    /// The target reads the request and writes the answer, then both sides run to quiet (the
    /// link may hold what the test's actions say).
    static func targetAnswers(_ pair: Pair) throws -> TOUSession {
        let target = try #require(pair.target)
        #expect(Self.readAll(target) == String(buffer: Self.request))
        #expect(target.write(Self.answer, now: .now()) == Self.answer.readableBytes)
        try pair.run()
        return target
    }

    /// The target answers as soon as the request is readable, and the initiator has the answer.
    static func answerAndRun(_ pair: Pair) throws -> TOUSession {
        let target = try targetAnswers(pair)
        #expect(Self.readAll(pair.initiator) == String(buffer: Self.answer))
        return target
    }

    @Test("the request rides on the SYN and the answer leaves from SYN-RECEIVED, before the handshake's last ACK")
    func requestOnTheSYNAnswerFromSynReceived() throws {
        let pair = try Self.requestPair()
        // Hold the initiator's datagrams after its SYN, so the target answers before TCP's last ACK.
        var synSeen = false
        pair.toTarget = { _, payload in
            if synSeen { return .hold }
            if payload.startsWithApplicationData { synSeen = true }
            return .deliver
        }
        try pair.run()
        let target = try #require(pair.target)
        #expect(pair.targetEvents.first == .established)
        #expect(target.tcp?.state == .synReceived)
        #expect(try Self.answerAndRun(pair).tcp?.state == .synReceived)
        // The SYN carried the whole request.
        let syn = try #require(pair.fromInitiator.first { $0.1.startsWithApplicationData })
        #expect(syn.1.readableBytes == 13 + 24 + 20 + 24 + Self.request.readableBytes)  // record, TCP header, SYN options
        pair.toTarget = { _, _ in .deliver }
        pair.release()
        try pair.run()
        #expect(target.tcp?.state == .established)
        #expect(pair.initiator.droppedCount == 0 && target.droppedCount == 0)
        #expect(pair.initiator.tcp?.stats.retransmissions == 0)
    }

    @Test("the SYN before the initiator's Finished: held by the target, then taken, nothing counted as dropped")
    func synOvertakesTheFinished() throws {
        let pair = try Self.requestPair()
        var finished: (GUEHeader, ByteBuffer)?
        pair.toTarget = { header, payload in
            if finished == nil, payload.carriesEpoch1Handshake {
                finished = (header, payload)
                return .hold
            }
            return .deliver
        }
        try pair.run()
        let target = try #require(pair.target)
        #expect(target.tcp == nil)  // the SYN waits for the Finished
        pair.toTarget = { _, _ in .deliver }
        pair.release()
        try pair.run()
        _ = try Self.answerAndRun(pair)
        #expect(target.droppedCount == 0)
    }

    @Test("a lost SYN is resent by TCP's timer, with its data")
    func lostSYN() throws {
        let pair = try Self.requestPair()
        pair.timerHorizon = .milliseconds(1500)
        var dropped = false
        pair.toTarget = { _, payload in
            if !dropped, payload.startsWithApplicationData {
                dropped = true
                return .drop
            }
            return .deliver
        }
        try pair.run()
        #expect(dropped)
        _ = try Self.answerAndRun(pair)
        #expect(pair.initiator.tcp?.stats.retransmissions == 1)
    }

    @Test("a duplicated SYN: one connection, its data once")
    func duplicatedSYN() throws {
        let pair = try Self.requestPair()
        pair.toTarget = { _, payload in payload.startsWithApplicationData ? .duplicate : .deliver }
        try pair.run()
        let target = try Self.answerAndRun(pair)
        #expect(target.tcp?.stats.bytesReceived == Self.request.readableBytes)
        #expect(pair.targetEvents.filter { $0 == .established }.count == 1)
    }

    @Test("the target's Finished lost: the flights are resent from OpenSSL's state, freed only once TCP is established")
    func targetsFinishedLost() throws {
        let pair = try Self.requestPair()
        pair.timerHorizon = .milliseconds(3000)
        var dropped = false
        pair.toInitiator = { _, payload in
            if !dropped, payload.carriesEpoch1Handshake {
                dropped = true
                return .drop
            }
            return .deliver
        }
        try pair.run()
        #expect(dropped)
        let target = try Self.answerAndRun(pair)
        #expect(target.tcp?.state == .established)
        #expect(pair.initiator.handshakeStateReleased && target.handshakeStateReleased)
    }

    @Test("the target's SYN-ACK and answer before its Finished: held by the initiator, then taken")
    func answerOvertakesTheTargetsFinished() throws {
        let pair = try Self.requestPair()
        pair.toInitiator = { _, payload in payload.carriesEpoch1Handshake ? .hold : .deliver }
        try pair.run()
        _ = try Self.targetAnswers(pair)
        #expect(pair.heldForInitiator.count == 1)
        #expect(pair.initiator.readableBytes == 0)  // SYN-ACK and answer held until the Finished
        pair.toInitiator = { _, _ in .deliver }
        pair.release()
        try pair.run()
        #expect(Self.readAll(pair.initiator) == String(buffer: Self.answer))
        #expect(pair.initiator.droppedCount == 0)
    }

    @Test("reading the answer sends nothing: the ACK of the SYN-ACK rides on the initiator's FIN")
    func acknowledgmentRidesOnTheFIN() throws {
        let pair = try Self.requestPair()
        pair.toInitiator = { _, payload in payload.startsWithApplicationData ? .hold : .deliver }
        try pair.run()
        let target = try Self.targetAnswers(pair)
        #expect(pair.heldForInitiator.count == 2)  // SYN-ACK and answer
        // Both arrive in one read: taken in, not yet answered (the endpoint lets the application act first).
        let now = NIODeadline.now()
        for (header, payload) in pair.heldForInitiator {
            pair.initiator.receive(header: header, payload: payload, from: TOUSessionTests.serverAddress, now: now)
        }
        pair.heldForInitiator.removeAll()
        #expect(Self.readAll(pair.initiator) == String(buffer: Self.answer))
        let sentBefore = pair.fromInitiator.count
        pair.initiator.finishWriting(now: now)
        pair.toInitiator = { _, _ in .deliver }
        try pair.run()
        // One segment, FIN and ACK: reading did not send the ACK that was due on its own.
        #expect(pair.fromInitiator.count - sentBefore == 1)
        #expect(target.tcp?.state == .closeWait)
        #expect(pair.initiator.tcp?.stats.retransmissions == 0)
    }

    /// A peer using the earlier sequence (no padding, SYN only after the whole DTLS handshake, no
    /// data on it, no answer before ESTABLISHED) interoperates in either role.
    @Test("the earlier SYN-after-handshake sequence still works in both roles", arguments: [true, false])
    func earlierSequence(initiatorIsOld: Bool) throws {
        var old = Self.parameters
        old.fastSetup = false
        let pair = try Pair(parameters: initiatorIsOld ? old : Self.parameters,
                            targetParameters: initiatorIsOld ? Self.parameters : old, initialData: Self.request,
                            admitWithoutCookie: true)
        try pair.run()
        #expect(pair.initiatorEvents.contains(.established))
        _ = try Self.answerAndRun(pair)
        if initiatorIsOld {
            // No padding: the target asked for a cookie.
            #expect(pair.fromTarget.contains { DTLSDatagramSummary.scan($0.1)?.recordCount == 1
                && $0.1.getInteger(at: $0.1.readerIndex + 13, as: UInt8.self) == 3 })
        }
        #expect(pair.initiator.droppedCount == 0)
    }
}
