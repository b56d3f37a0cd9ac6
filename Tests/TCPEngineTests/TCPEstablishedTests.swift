import NIOCore
import Testing
import TOUWire

@testable import TCPEngine

@Suite struct EstablishedTests {
    @Test func singleSegmentIsAcknowledgedAfterDelay() {
        var c = establishedConnection()
        c.receive(fromPeer(payload: bytes("abcdef")), now: at(100))
        #expect(c.drainEvents() == [.readable])
        #expect(c.drain(at: at(100)) == [])
        #expect(c.nextDeadline == at(140))
        c.handleTimeout(now: at(140))
        #expect(c.drain(at: at(140)) == [toPeer(ack: remoteISS &+ 7)])
        #expect(c.readAll() == "abcdef")
        #expect(c.stats.bytesReceived == 6)
    }

    @Test func everySecondSegmentIsAcknowledgedAtOnce() {
        var c = establishedConnection()
        c.receive(fromPeer(payload: bytes("abc")), now: at(100))
        c.receive(fromPeer(seq: remoteISS &+ 4, payload: bytes("def")), now: at(101))
        #expect(c.drain(at: at(101)) == [toPeer(ack: remoteISS &+ 7)])
        #expect(c.nextDeadline == nil)
        #expect(c.drainEvents() == [.readable])  // coalesced
    }

    @Test func sendsDataInMSSSizedSegmentsWithPSHOnTheLast() {
        var c = establishedConnection()
        #expect(c.write(bytes(count: 3000)) == 3000)
        let sent = c.drain(at: at(20))
        #expect(sent == [
            toPeer(payload: bytes(count: 1399)),
            toPeer(seq: localISS &+ 1400, payload: bytes(count: 1399)),
            toPeer(seq: localISS &+ 2799, flags: .psh, payload: bytes(count: 202)),
        ])
        #expect(c.nextDeadline == at(220))
        #expect(c.stats.bytesSent == 3000)
    }

    @Test func initialWindowIsTenSegments() {
        var c = establishedConnection()
        #expect(c.write(bytes(count: 100_000)) == 100_000)
        #expect(c.drain(at: at(20)).count == 10)
        #expect(c.stats.congestionWindow == 13990)
        // An ACK for two segments grows the window by two segments (slow start, ABC L=2).
        c.receive(fromPeer(ack: localISS &+ 1 &+ 2798), now: at(40))
        #expect(c.drain(at: at(40)).count == 4)
        #expect(c.stats.congestionWindow == 13990 + 2798)
    }

    @Test func outOfOrderSegmentsAreReassembled() {
        var c = establishedConnection()
        c.receive(fromPeer(seq: remoteISS &+ 4, payload: bytes("def")), now: at(100))
        #expect(c.drain(at: at(100)) == [toPeer()])  // duplicate ACK at once
        #expect(c.readableBytes == 0)
        c.receive(fromPeer(seq: remoteISS &+ 10, payload: bytes("jkl")), now: at(101))
        #expect(c.drain(at: at(101)) == [toPeer()])
        c.receive(fromPeer(seq: remoteISS &+ 1, payload: bytes("abc")), now: at(102))
        #expect(c.drain(at: at(102)) == [toPeer(ack: remoteISS &+ 7)])  // a hole filled: ACK at once
        c.receive(fromPeer(seq: remoteISS &+ 5, payload: bytes("efghi")), now: at(103))  // overlaps
        #expect(c.drain(at: at(103)) == [toPeer(ack: remoteISS &+ 13)])
        #expect(c.readAll() == "abcdefghijkl")
    }

    @Test func oldDuplicateIsAcknowledgedAndIgnored() {
        var c = establishedConnection()
        c.receive(fromPeer(payload: bytes("abc")), now: at(100))
        c.receive(fromPeer(payload: bytes("abc")), now: at(101))
        #expect(c.drain(at: at(101)) == [toPeer(ack: remoteISS &+ 4)])
        #expect(c.readAll() == "abc")
    }

    @Test func resetMustMatchExactly() {
        var c = establishedConnection()
        c.receive(fromPeer(seq: remoteISS &+ 1000, ack: nil, flags: .rst), now: at(100))
        #expect(c.drain(at: at(100)) == [toPeer()])  // challenge ACK (RFC 5961)
        c.receive(fromPeer(seq: remoteISS &- 1000, ack: nil, flags: .rst), now: at(101))
        #expect(c.drain(at: at(101)) == [])  // outside the window: ignored
        #expect(c.state == .established)
        c.receive(fromPeer(ack: nil, flags: .rst), now: at(102))
        #expect(c.state == .closed)
        #expect(c.drainEvents() == [.closed(.reset)])
    }

    @Test func synInWindowEarnsChallengeACK() {
        var c = establishedConnection()
        c.receive(fromPeer(seq: remoteISS &+ 1, ack: nil, flags: .syn), now: at(100))
        #expect(c.drain(at: at(100)) == [toPeer()])
        #expect(c.state == .established)
    }

    @Test func retransmittedSYNACKIsReacknowledged() {
        var c = establishedConnection()
        c.receive(fromPeer(seq: remoteISS, ack: localISS &+ 1, flags: .syn, options: peerSYNOptions), now: at(100))
        #expect(c.drain(at: at(100)) == [toPeer()])
    }

    @Test func ackOfUnsentDataIsIgnored() {
        var c = establishedConnection()
        c.receive(fromPeer(ack: localISS &+ 500, payload: bytes("x")), now: at(100))
        #expect(c.drain(at: at(100)) == [toPeer()])
        #expect(c.readableBytes == 0)
    }

    @Test func windowScalingAppliesToBothDirections() {
        var c = establishedConnection(peerOptions: TCPOptions(maximumSegmentSize: 1460, windowScale: 2))
        // The SYN-ACK's window (64000) is unscaled; later windows are shifted by 2.
        #expect(c.stats.sendWindow == 64000)
        c.receive(fromPeer(window: 1000), now: at(20))
        #expect(c.stats.sendWindow == 4000)
        #expect(c.write(bytes(count: 10_000)) == 10_000)
        let sent = c.drain(at: at(20))
        // 1202 bytes of window are left, but with data in flight a partial segment waits
        // (sender-side silly window avoidance).
        #expect(sent.map(\.payload.readableBytes) == [1399, 1399])
        #expect(sent.allSatisfy { $0.window == defaultWindowField })  // 4 MiB >> 7
        c.receive(fromPeer(ack: localISS &+ 2799, window: 1000), now: at(40))
        #expect(c.drain(at: at(40)).map(\.payload.readableBytes) == [1399, 1399])
    }

    @Test func receiveWindowFillsClosesAndReopens() {
        var configuration = classicConfiguration()
        configuration.receiveBufferSize = 4000
        var c = establishedConnection(configuration: configuration)
        // Shift 0 for a 4000-byte buffer; the first ACK still offers what the SYN offered.
        c.receive(fromPeer(payload: bytes(count: 1000)), now: at(100))
        c.receive(fromPeer(seq: remoteISS &+ 1001, payload: bytes(count: 1000)), now: at(101))
        #expect(c.drain(at: at(101)) == [toPeer(ack: remoteISS &+ 2001, window: 2000)])
        c.receive(fromPeer(seq: remoteISS &+ 2001, payload: bytes(count: 3000)), now: at(102))
        // Only the 2000 bytes that fit were taken; the window is now closed.
        c.handleTimeout(now: at(142))
        #expect(c.drain(at: at(142)) == [toPeer(ack: remoteISS &+ 4001, window: 0)])
        #expect(c.readableBytes == 4000)
        // Beyond a closed window: dropped, answered with an ACK.
        c.receive(fromPeer(seq: remoteISS &+ 4001, payload: bytes(count: 10)), now: at(150))
        #expect(c.drain(at: at(150)) == [toPeer(ack: remoteISS &+ 4001, window: 0)])
        // A small read does not reopen the window (receiver-side silly window avoidance)...
        _ = c.read(maximumBytes: 100)
        #expect(c.drain(at: at(160)) == [])
        // ...reading half the buffer does, with an unsolicited window update.
        _ = c.read(maximumBytes: 2000)
        #expect(c.drain(at: at(170)) == [toPeer(ack: remoteISS &+ 4001, window: 2100)])
    }

    /// A listener shares one UDP queue among its connections and caps each one's window.
    @Test func receiveWindowCapBoundsNewWindowButNeverShrinksOne() {
        func windows(cap: Int?) -> [UInt16] {
            var configuration = classicConfiguration()
            configuration.receiveBufferSize = 8000
            var c = establishedConnection(configuration: configuration)
            if let cap { c.receiveWindowCap = cap }
            var sequence = remoteISS &+ 1
            var offered: [UInt16] = []
            // Two segments at a time (each pair is ACKed at once); the application reads after
            // the first and second pairs.
            for (pair, read) in [(0, 2000), (1, 3000), (2, 0)] {
                for index in 0..<2 {
                    c.receive(fromPeer(seq: sequence, payload: bytes(count: pair == 1 && index == 1 ? 2000 : 1000)),
                              now: at(Int64(100 + pair * 10 + index)))
                    sequence = sequence &+ UInt32(pair == 1 && index == 1 ? 2000 : 1000)
                }
                offered += c.drain(at: at(Int64(100 + pair * 10 + 2))).map(\.window)
                if read > 0 { _ = c.read(maximumBytes: read) }
            }
            return offered
        }
        // Uncapped, the window follows free buffer space.
        #expect(windows(cap: nil) == [6000, 5000, 6000])
        // Capped at 3000: the 6000 already offered stands, later windows offer at most 3000.
        #expect(windows(cap: 3000) == [6000, 3000, 3000])
    }

    @Test func zeroWindowIsProbedUntilItOpens() {
        var c = establishedConnection()
        c.receive(fromPeer(window: 0), now: at(20))
        #expect(c.write(bytes("hello")) == 5)
        #expect(c.drain(at: at(20)) == [])
        #expect(c.nextDeadline == at(220))  // persist timer: one RTO
        c.handleTimeout(now: at(220))
        // Probe: SND.UNA-1, no data, which the peer must answer with its window.
        #expect(c.drain(at: at(220)) == [toPeer(seq: localISS)])
        #expect(c.nextDeadline == at(620))  // backed off
        c.receive(fromPeer(window: 0), now: at(230))
        c.handleTimeout(now: at(620))
        #expect(c.drain(at: at(620)) == [toPeer(seq: localISS)])
        c.receive(fromPeer(window: 100), now: at(630))
        #expect(c.drain(at: at(630)) == [toPeer(flags: .psh, payload: bytes("hello"))])
    }

    @Test func smallWindowIsUsedWhenNothingIsInFlight() {
        var c = establishedConnection()
        c.receive(fromPeer(window: 10), now: at(20))
        #expect(c.write(bytes("0123456789abcdef")) == 16)
        #expect(c.drain(at: at(20)) == [toPeer(payload: bytes("0123456789"))])
        #expect(c.drain(at: at(21)) == [])  // the rest waits for the window
        c.receive(fromPeer(ack: localISS &+ 11, window: 10), now: at(30))
        #expect(c.drain(at: at(30)) == [toPeer(seq: localISS &+ 11, flags: .psh, payload: bytes("abcdef"))])
    }

    @Test func writeIsBoundedBySendBufferAndSignalsWritable() {
        var configuration = classicConfiguration()
        configuration.sendBufferSize = 3000
        var c = establishedConnection(configuration: configuration)
        #expect(c.write(bytes(count: 5000)) == 3000)
        #expect(c.sendBufferFreeSpace == 0)
        let sent = c.drain(at: at(20))
        #expect(sent.count == 3)
        c.receive(fromPeer(ack: localISS &+ 1 &+ 1399), now: at(40))
        #expect(c.drainEvents() == [])  // 1399 free: below the wake-up threshold of half the buffer
        c.receive(fromPeer(ack: localISS &+ 1 &+ 2798), now: at(40))
        #expect(c.drainEvents() == [.writable])
        #expect(c.sendBufferFreeSpace == 2798)
        #expect(!c.isSendQueueEmptyAndAcknowledged)
        c.receive(fromPeer(ack: localISS &+ 3001), now: at(41))
        #expect(c.isSendQueueEmptyAndAcknowledged)
    }

    @Test func abortSendsResetAndCloses() {
        var c = establishedConnection()
        c.abort()
        #expect(c.state == .closed)
        #expect(c.drain(at: at(20)) == [toPeer(flags: .rst, window: 0)])
        #expect(c.drainEvents() == [.closed(.aborted)])
        #expect(c.write(bytes("x")) == 0)
    }

    @Test func closedConnectionAnswersWithReset() {
        var c = establishedConnection()
        c.abort()
        _ = c.drain(at: at(20))
        c.receive(fromPeer(payload: bytes("late")), now: at(30))
        #expect(c.drain(at: at(30)) == [toPeer(seq: localISS &+ 1, ack: nil, flags: .rst, window: 0)])
    }

    @Test func segmentsForOtherPortsAreIgnored() {
        var c = establishedConnection()
        var stray = fromPeer(payload: bytes("x"))
        stray.destinationPort = 1
        c.receive(stray, now: at(20))
        #expect(c.readableBytes == 0)
        #expect(c.drain(at: at(20)) == [])
    }
}
