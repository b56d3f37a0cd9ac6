import NIOCore
import Testing
import TOUWire

@testable import TCPEngine

@Suite struct NagleTests {
    func nagleConfiguration() -> TCPConfiguration {
        var configuration = classicConfiguration()
        configuration.noDelay = false
        return configuration
    }

    @Test func smallSegmentWaitsForTheOutstandingOneToBeAcknowledged() {
        var c = establishedConnection(configuration: nagleConfiguration())
        #expect(c.write(bytes("a")) == 1)
        #expect(c.drain(at: at(20)) == [toPeer(flags: .psh, payload: bytes("a"))])
        #expect(c.write(bytes("b")) == 1)
        #expect(c.write(bytes("c")) == 1)
        #expect(c.drain(at: at(21)) == [])  // Nagle: one small segment in flight
        c.receive(fromPeer(ack: localISS &+ 2), now: at(30))
        #expect(c.drain(at: at(30)) == [toPeer(seq: localISS &+ 2, flags: .psh, payload: bytes("bc"))])
    }

    @Test func fullSegmentsAreNotHeldAndTheTailIsHeld() {
        var c = establishedConnection(configuration: nagleConfiguration())
        #expect(c.write(bytes(count: 3000)) == 3000)
        #expect(c.drain(at: at(20)).map(\.payload.readableBytes) == [1399, 1399])
        c.receive(fromPeer(ack: localISS &+ 2799), now: at(30))
        #expect(c.drain(at: at(30)).map(\.payload.readableBytes) == [202])
    }

    @Test func finIsNotHeldBehindNagle() {
        var c = establishedConnection(configuration: nagleConfiguration())
        _ = c.write(bytes("a"))
        _ = c.drain(at: at(20))
        _ = c.write(bytes("b"))
        c.finishWriting()
        #expect(c.drain(at: at(21)) == [toPeer(seq: localISS &+ 2, flags: [.psh, .fin], payload: bytes("b"))])
    }

    @Test func noDelaySendsAtOnce() {
        var c = establishedConnection()
        _ = c.write(bytes("a"))
        _ = c.drain(at: at(20))
        _ = c.write(bytes("b"))
        #expect(c.drain(at: at(21)) == [toPeer(seq: localISS &+ 2, flags: .psh, payload: bytes("b"))])
    }
}

@Suite struct RTTSampleTests {
    @Test func anAckHandedInWithATimeFromBeforeTheSendMeasuresNothing() {
        var c = establishedConnection()
        let smoothed = c.rtt.smoothed, minimum = c.minimumRTT
        _ = c.write(bytes("a"))
        _ = c.drain(at: at(50))
        // The caller read its clock before the segment went out (a batch's time, say).
        c.receive(fromPeer(ack: localISS &+ 2), now: at(40))
        #expect(c.rtt.smoothed == smoothed)
        #expect(c.minimumRTT == minimum)
        #expect(c.minimumRTT.map { $0 >= .nanoseconds(0) } ?? true)
    }
}

@Suite struct KeepAliveTests {
    @Test func idleConnectionIsProbedAndTimesOut() {
        var configuration = classicConfiguration()
        configuration.keepAlive = TCPKeepAlive(idle: .seconds(10), interval: .seconds(2), count: 2)
        var c = establishedConnection(configuration: configuration)
        #expect(c.nextDeadline == at(10_010))  // idle since the SYN-ACK at 10 ms
        c.handleTimeout(now: at(10_010))
        #expect(c.drain(at: at(10_010)) == [toPeer(seq: localISS)])
        #expect(c.nextDeadline == at(12_010))
        // An answer resets the idle clock.
        c.receive(fromPeer(), now: at(11_000))
        #expect(c.nextDeadline == at(21_000))
        c.handleTimeout(now: at(21_000))
        c.handleTimeout(now: at(23_000))
        #expect(c.drain(at: at(23_000)) == [toPeer(seq: localISS), toPeer(seq: localISS)])
        c.handleTimeout(now: at(25_000))
        #expect(c.state == .closed)
        #expect(c.drainEvents() == [.closed(.timedOut)])
    }

    @Test func noKeepAliveByDefault() {
        var c = establishedConnection()
        #expect(c.nextDeadline == nil)
        c.handleTimeout(now: at(10_000_000))
        #expect(c.drain(at: at(10_000_000)) == [])
    }
}

@Suite struct TimeWaitTests {
    @Test func timeWaitLastsTwiceTheConfiguredMSL() {
        var configuration = classicConfiguration()
        configuration.maximumSegmentLifetime = .seconds(5)
        #expect(configuration.timeWaitDuration == .seconds(10))
        var c = establishedConnection(configuration: configuration)
        c.finishWriting()
        _ = c.drain(at: at(20))
        c.receive(fromPeer(ack: localISS &+ 2, flags: .fin), now: at(30))
        #expect(c.state == .timeWait)
        #expect(c.nextDeadline == at(10_030))
        c.handleTimeout(now: at(10_030))
        #expect(c.drainEvents().last == .closed(.normal))
    }
}

@Suite struct AutoTuningTests {
    @Test func receiveBufferGrowsTowardTheCapWhenTheSenderFillsIt() {
        var configuration = classicConfiguration()
        configuration.receiveBufferSize = 64 * 1024
        configuration.maximumReceiveBufferSize = 1 << 20
        var c = establishedConnection(configuration: configuration)
        #expect(c.stats.receiveBufferSize == 64 * 1024)
        // 60 KB per 10 ms RTT, read promptly: the buffer grows to four times that.
        var sequence = remoteISS &+ 1
        var now = at(20)
        for _ in 0..<4 {
            for _ in 0..<40 {
                c.receive(fromPeer(seq: sequence, payload: bytes(count: 1500)), now: now)
                sequence = sequence &+ 1500
                _ = c.read(maximumBytes: .max)
            }
            _ = c.drain(at: now)
            now = now + .milliseconds(10)
        }
        #expect(c.stats.receiveBufferSize == 4 * 40 * 1500)
        // Our SYN offered shift 5 so the 1 MiB cap can be advertised.
        let ack = c.drain(at: now)
        #expect(ack.isEmpty || ack[0].window > 0)
    }
}

@Suite struct SenderSillyWindowTests {
    @Test func partialSegmentGoesWhenItIsHalfTheLargestWindow() {
        // The peer never offers more than 1000 bytes, less than one MSS.
        var c = establishedConnection(peerWindow: 1000)
        #expect(c.write(bytes(count: 5000)) == 5000)
        #expect(c.drain(at: at(20)).map(\.payload.readableBytes) == [1000])  // nothing in flight
        // 500 acknowledged, 500 still in flight: 500 of room is half the largest window, so
        // it goes (RFC 9293 3.8.6.2.1); 400 would not.
        c.receive(fromPeer(ack: localISS &+ 501, window: 1000), now: at(30))
        #expect(c.drain(at: at(30)).map(\.payload.readableBytes) == [500])
        c.receive(fromPeer(ack: localISS &+ 1401, window: 500), now: at(40))  // 100 in flight, 400 of room
        #expect(c.drain(at: at(40)) == [])
        // Once everything is acknowledged, whatever the window allows goes.
        c.receive(fromPeer(ack: localISS &+ 1501, window: 900), now: at(50))
        #expect(c.drain(at: at(50)).map(\.payload.readableBytes) == [900])
    }
}
