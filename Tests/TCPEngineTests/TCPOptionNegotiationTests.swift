import NIOCore
import Testing
import TOUWire

@testable import TCPEngine

@Suite struct OptionNegotiationTests {
    @Test func defaultSYNOffersSACKTimestampsAndScaleForTheAutoTuningCap() {
        var c = TCPConnection.connect(
            localPort: localPort, remotePort: remotePort, configuration: TCPConfiguration(),
            initialSequenceNumber: localISS, now: t0)
        let options = TCPOptions(
            maximumSegmentSize: 1399, windowScale: 9, sackPermitted: true,
            timestamps: TCPTimestamps(value: c.timestampValue(at: t0), echoReply: 0))
        #expect(c.drain(at: t0) == [toPeer(seq: localISS, ack: nil, flags: .syn, window: 65535, options: options)])
        // The timestamp clock ticks in milliseconds from a per-connection offset.
        #expect(c.timestampValue(at: at(250)) == c.timestampValue(at: t0) &+ 250)
    }

    @Test func synACKNegotiatesBothAndEchoesTheTimestamp() {
        var c = modernConnection()
        #expect(c.stats.selectiveAcknowledgmentsEnabled && c.stats.timestampsEnabled)
        // Data segments carry MSS - 12 bytes: timestamps come out of the payload.
        #expect(c.write(bytes(count: 2000)) == 2000)
        #expect(c.drain(at: at(20)) == [
            toPeer(options: c.ourOptions(at: at(20)), payload: bytes(count: modernMSS)),
            toPeer(seq: ourSegmentStart(1), flags: .psh, options: c.ourOptions(at: at(20)), payload: bytes(count: 2000 - modernMSS)),
        ])
    }

    @Test func passiveOpenAnswersOnlyWhatWasOffered() {
        let synOptions = TCPOptions(
            maximumSegmentSize: 1460, windowScale: 2, sackPermitted: true, timestamps: peerTS(0, echo: 0))
        var c = TCPConnection.accept(
            syn: fromPeer(seq: remoteISS, ack: nil, flags: .syn, options: synOptions),
            configuration: modernConfiguration(), initialSequenceNumber: localISS, now: t0)!
        let expected = TCPOptions(
            maximumSegmentSize: 1399, windowScale: 7, sackPermitted: true,
            timestamps: TCPTimestamps(value: c.timestampValue(at: t0), echoReply: peerTSBase))
        #expect(c.drain(at: t0) == [toPeer(seq: localISS, flags: .syn, window: 65535, options: expected)])

        var plain = TCPConnection.accept(
            syn: fromPeer(seq: remoteISS, ack: nil, flags: .syn, options: TCPOptions(maximumSegmentSize: 1460)),
            configuration: modernConfiguration(), initialSequenceNumber: localISS, now: t0)!
        #expect(plain.drain(at: t0) == [toPeer(seq: localISS, flags: .syn, window: 65535, options: TCPOptions(maximumSegmentSize: 1399))])
        #expect(!plain.stats.selectiveAcknowledgmentsEnabled && !plain.stats.timestampsEnabled)
    }

    @Test func disabledLocallyMeansNotNegotiatedEvenIfOffered() {
        var configuration = modernConfiguration()
        configuration.selectiveAcknowledgments = false
        configuration.timestamps = false
        let synOptions = TCPOptions(maximumSegmentSize: 1460, sackPermitted: true, timestamps: peerTS(0, echo: 0))
        var c = TCPConnection.accept(
            syn: fromPeer(seq: remoteISS, ack: nil, flags: .syn, options: synOptions),
            configuration: configuration, initialSequenceNumber: localISS, now: t0)!
        #expect(c.drain(at: t0) == [toPeer(seq: localISS, flags: .syn, window: 65535, options: TCPOptions(maximumSegmentSize: 1399))])
    }

    @Test func timestampsAreEchoedAndTSRecentFollowsInOrderSegments() {
        var c = modernConnection()
        c.receive(fromPeer(options: TCPOptions(timestamps: peerTS(5, echo: 0)), payload: bytes("ab")), now: at(100))
        c.receive(fromPeer(seq: remoteISS &+ 3, options: TCPOptions(timestamps: peerTS(6, echo: 0)), payload: bytes("cd")), now: at(101))
        // RFC 7323 4.3: with the ACK delayed, TS.Recent stays at the earliest unacknowledged
        // segment's timestamp (the second one lies beyond Last.ACK.sent).
        #expect(c.drain(at: at(101)) == [toPeer(ack: remoteISS &+ 5, options: c.ourOptions(at: at(101), echo: peerTSBase &+ 5))])
        // An out-of-order segment (beyond Last.ACK.sent) does not move TS.Recent either.
        c.receive(fromPeer(seq: remoteISS &+ 9, options: TCPOptions(timestamps: peerTS(9, echo: 0)), payload: bytes("x")), now: at(102))
        let dup = c.drain(at: at(102))
        #expect(dup.first?.options.timestamps?.echoReply == peerTSBase &+ 5)
        // The next in-order segment does.
        c.receive(fromPeer(seq: remoteISS &+ 5, options: TCPOptions(timestamps: peerTS(10, echo: 0)), payload: bytes("y")), now: at(103))
        c.handleTimeout(now: at(143))
        #expect(c.drain(at: at(143)).first?.options.timestamps?.echoReply == peerTSBase &+ 10)
    }

    @Test func pawsDropsOldTimestampsAndAcknowledges() {
        var c = modernConnection()
        c.receive(fromPeer(options: TCPOptions(timestamps: peerTS(50, echo: 0)), payload: bytes("new")), now: at(100))
        c.handleTimeout(now: at(140))
        _ = c.drain(at: at(140))
        // A wrapped-sequence old duplicate with an older timestamp: dropped, answered with an ACK.
        c.receive(fromPeer(seq: remoteISS &+ 4, options: TCPOptions(timestamps: peerTS(20, echo: 0)), payload: bytes("old")), now: at(150))
        #expect(c.readAll() == "new")
        #expect(c.stats.pawsRejected == 1)
        #expect(c.drain(at: at(150)) == [toPeer(ack: remoteISS &+ 4, options: c.ourOptions(at: at(150), echo: peerTSBase &+ 50))])
        // A RST is exempt from PAWS (and this one is exact).
        c.receive(fromPeer(seq: remoteISS &+ 4, ack: nil, flags: .rst, options: TCPOptions(timestamps: peerTS(1, echo: 0))), now: at(160))
        #expect(c.state == .closed)
    }

    @Test func retransmittedSegmentIsTimedByItsTimestampEcho() {
        var c = modernConnection()
        #expect(c.write(bytes("abc")) == 3)
        _ = c.drain(at: at(100))
        c.handleTimeout(now: at(300))
        let resent = c.drain(at: at(300))
        #expect(resent.count == 1)
        let echo = resent[0].options.timestamps!.value
        // Karn's rule forbids timing the retransmission by the clock; the echo names it exactly.
        c.receive(peerACK(localISS &+ 4, echo: echo), now: at(330))
        #expect(c.stats.smoothedRTT == .nanoseconds((7 * 10_000_000 + 30_000_000) / 8))
    }
}
