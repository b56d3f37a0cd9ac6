import NIOCore
import Testing
import TOUWire

@testable import TCPEngine

/// What a peer, broken or hostile, may make the engine do: segment sizes, how many ACKs its junk
/// earns, how long a closed window keeps us retrying, and sequence-space corner cases.
@Suite struct PeerBoundsTests {
    /// CVE-2019-11479 class: a peer announcing a 1-byte MSS would make us cut the stream into
    /// 1-byte segments (a scoreboard entry, a segment and a header each). The peer's MSS is
    /// raised to 48 bytes as Linux does; options still come out of it.
    @Test(arguments: [Setup.modern, .shippedDefaults])
    func tinyPeerMSSIsRaisedToTheFloor(_ setup: Setup) {
        var c = modernConnection(configuration: setup.configuration, peerMSS: 1)
        #expect(c.write(bytes(count: 1000)) == 1000)
        let sent = c.drainPaced(at: at(100))
        #expect(sent.first?.payload.readableBytes == 48 - 12)
    }

    /// Linux's tcp_invalid_ratelimit: a segment outside the window or failing PAWS is answered
    /// with an ACK at most every 500 ms (data and FINs are answered at once: their D-SACK or
    /// re-ACK matters). Two ends that disagree would otherwise ACK each other's ACKs forever.
    @Test(arguments: [Setup.modern, .shippedDefaults])
    func acksToUnacceptableSegmentsAreRateLimited(_ setup: Setup) {
        var c = modernConnection(configuration: setup.configuration)
        func junk(_ step: UInt32, paws: Bool) -> TCPSegment {
            let timestamps = paws ? peerTS(0, echo: 0) : peerTS(100 + step, echo: 0)
            let sequence = paws ? remoteISS &+ 1 : remoteISS &+ 1 &+ 100_000_000
            return fromPeer(seq: sequence, options: TCPOptions(timestamps: timestamps))
        }
        // TS.Recent moves up so that the PAWS probes below are older.
        c.receive(fromPeer(options: TCPOptions(timestamps: peerTS(50, echo: 0))), now: at(90))
        var answers = 0
        for step in 0..<6 {
            c.receive(junk(UInt32(step), paws: step % 2 == 1), now: at(100 + Int64(step)))
            answers += c.drain(at: at(100 + Int64(step))).count
        }
        #expect(answers == 1)
        c.receive(junk(10, paws: false), now: at(600))
        #expect(c.drain(at: at(600)).count == 1)
        // A duplicate carrying data is not held back: its D-SACK tells the sender it was spurious.
        c.receive(fromPeer(options: TCPOptions(timestamps: peerTS(60, echo: 0)), payload: bytes("ab")), now: at(601))
        _ = c.drain(at: at(601))
        c.receive(fromPeer(options: TCPOptions(timestamps: peerTS(61, echo: 0)), payload: bytes("ab")), now: at(602))
        #expect(c.drain(at: at(602)).first?.options.sackBlocks == [block(remoteISS &+ 1, remoteISS &+ 3)])
    }

    /// A receiver that closes its window drops what we resend, but answers each retransmission:
    /// those RTOs do not count toward the retry limit (as Linux); only a peer silent for the
    /// longest RTO times the connection out.
    @Test(arguments: [Setup.modern, .shippedDefaults])
    func timeoutsIntoAClosedWindowDoNotExhaustRetriesWhileThePeerAnswers(_ setup: Setup) {
        var configuration = setup.configuration
        configuration.maximumRetransmissions = 3
        configuration.maximumRTO = .seconds(4)
        var c = modernConnection(configuration: configuration)
        #expect(c.write(bytes(count: 100)) == 100)
        _ = c.drain(at: at(100))
        c.receive(peerACK(ourSegmentStart(0), echo: c.timestampValue(at: at(100)), window: 0), now: at(110))
        var now = at(110)
        for step in 0..<12 where c.stats.rtoExpiries < 8 {
            guard let deadline = c.nextDeadline else { break }
            now = deadline
            c.handleTimeout(now: now)
            _ = c.drain(at: now)
            c.receive(peerACK(ourSegmentStart(0), tsOffset: UInt32(step + 2), echo: c.timestampValue(at: now), window: 0), now: now + .milliseconds(10))
            _ = c.drain(at: now + .milliseconds(10))
        }
        #expect(c.stats.rtoExpiries >= 8)
        #expect(c.state == .established)
        // Silence: the connection gives up.
        _ = c.runTimers(until: now + .seconds(60))
        #expect(c.state == .closed)
        #expect(c.drainEvents().last == .closed(.timedOut))
    }

    /// RFC 7323 2.2: the window in a SYN-ACK is never scaled, in a simultaneous open too.
    @Test(arguments: [Setup.modern, .shippedDefaults])
    func simultaneousOpenSYNACKWindowIsNotScaled(_ setup: Setup) {
        var c = synSentConnection(setup)
        let options = TCPOptions(maximumSegmentSize: 1460, windowScale: 7, sackPermitted: true, timestamps: peerTS(0, echo: 0))
        c.receive(fromPeer(seq: remoteISS, ack: nil, flags: .syn, window: 1000, options: options), now: at(5))
        #expect(c.state == .synReceived)
        _ = c.drain(at: at(5))
        var synACKOptions = options
        synACKOptions.timestamps = peerTS(1, echo: c.timestampValue(at: at(5)))
        c.receive(fromPeer(seq: remoteISS, flags: .syn, window: 1000, options: synACKOptions), now: at(10))
        #expect(c.state == .established)
        #expect(c.stats.sendWindow == 1000)
    }

    /// After 2^32 bytes SND.UNA is back at the ISS. The ACK that moves on from there is not the
    /// SYN's: it must neither time the SYN again (an RTT of the connection's age) nor take a
    /// byte off what it acknowledges.
    @Test(arguments: [Setup.modern, .shippedDefaults])
    func ackAfterFourGiBAtTheISSIsNotTheSYNs(_ setup: Setup) {
        var configuration = setup.configuration
        configuration.maximumSegmentSize = 65535
        configuration.sendBufferSize = 8 << 20
        configuration.timestamps = false
        var c = TCPConnection.connect(
            localPort: localPort, remotePort: remotePort, configuration: configuration,
            initialSequenceNumber: localISS, now: t0)
        _ = c.drain(at: t0)
        c.receive(
            fromPeer(seq: remoteISS, flags: .syn, window: 65535, options: TCPOptions(maximumSegmentSize: 65535, windowScale: 14)),
            now: at(1))
        _ = c.drain(at: at(1))
        c.receive(fromPeer(window: 65535), now: at(2))  // 1 GiB, scaled
        let chunk = bytes(count: 4 << 20)
        var remaining = Int(UInt32.max)  // with the SYN, SND.UNA returns to the ISS
        var now = at(10)
        var highest = localISS &+ 1
        while c.sndUna != localISS, now < at(600_000) {
            while remaining > 0, c.sendBufferFreeSpace > 0 {
                let piece = chunk.getSlice(at: 0, length: min(remaining, chunk.readableBytes))!
                let accepted = c.write(piece)
                remaining -= accepted
                if accepted < piece.readableBytes { break }
            }
            for segment in c.drain(at: now) where segment.payload.readableBytes > 0 {
                highest = segment.sequenceNumber &+ UInt32(segment.payload.readableBytes)
            }
            now = now + .milliseconds(1)
            c.receive(fromPeer(ack: highest, window: 65535), now: now)
        }
        #expect(c.sndUna == localISS)
        let smoothed = c.stats.smoothedRTT
        #expect(c.write(bytes(count: 1000)) == 1000)
        #expect(c.drain(at: now).count == 1)
        c.receive(fromPeer(ack: localISS &+ 1000, window: 65535), now: now + .milliseconds(1))
        #expect(c.stats.smoothedRTT == smoothed)
        #expect(c.stats.smoothedRTT.map { $0 < .milliseconds(5) } == true)
    }
}
