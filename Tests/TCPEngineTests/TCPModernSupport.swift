import NIOCore
@testable import TCPEngine
import Testing
import TOUWire

// Templates for connections that negotiated SACK and timestamps.

/// The peer's first timestamp value; later segments count up from it.
let peerTSBase: UInt32 = 7_000
/// With timestamps each segment carries 12 option bytes less payload.
let modernMSS = 1399 - 12

/// SACK and timestamps on; NewReno, no pacing and no Nagle unless a test turns them on.
func modernConfiguration() -> TCPConfiguration {
    var configuration = classicConfiguration()
    configuration.selectiveAcknowledgments = true
    configuration.timestamps = true
    return configuration
}

func peerTS(_ offset: UInt32, echo: UInt32) -> TCPTimestamps {
    TCPTimestamps(value: peerTSBase &+ offset, echoReply: echo)
}

/// A connection that did an active open at t0 and got a SYN-ACK offering SACK and timestamps
/// at 10 ms (srtt 10 ms, TS.Recent = peerTSBase).
func modernConnection(
    configuration: TCPConfiguration = modernConfiguration(), peerWindow: UInt16 = 64000, peerMSS: UInt16 = 1460,
    peerWindowScale: UInt8 = 0
) -> TCPConnection {
    var connection = TCPConnection.connect(
        localPort: localPort, remotePort: remotePort, configuration: configuration,
        initialSequenceNumber: localISS, now: t0)
    _ = connection.drain(at: t0)
    let options = TCPOptions(
        maximumSegmentSize: peerMSS, windowScale: peerWindowScale, sackPermitted: true,
        timestamps: peerTS(0, echo: connection.timestampValue(at: t0)))
    connection.receive(fromPeer(seq: remoteISS, flags: .syn, window: peerWindow, options: options), now: at(10))
    _ = connection.drain(at: at(10))
    _ = connection.drainEvents()
    return connection
}

extension TCPConnection {
    /// Options we send at `now`: our timestamp, the echo, and any SACK blocks.
    func ourOptions(at now: NIODeadline, echo: UInt32 = peerTSBase, sack: [TCPSACKBlock] = []) -> TCPOptions {
        TCPOptions(sackBlocks: sack, timestamps: TCPTimestamps(value: timestampValue(at: now), echoReply: echo))
    }
}

/// Sequence number of our n-th full segment after the handshake.
func ourSegmentStart(_ n: Int, mss: Int = modernMSS) -> UInt32 { localISS &+ 1 &+ UInt32(n * mss) }

func block(_ left: UInt32, _ right: UInt32) -> TCPSACKBlock { TCPSACKBlock(left: left, right: right) }

/// An ACK from the peer with its timestamp and optional SACK blocks.
func peerACK(
    _ ack: UInt32, tsOffset: UInt32 = 1, echo: UInt32, sack: [TCPSACKBlock] = [], window: UInt16 = 64000
) -> TCPSegment {
    fromPeer(ack: ack, window: window, options: TCPOptions(sackBlocks: sack, timestamps: peerTS(tsOffset, echo: echo)))
}

/// The configurations a recovery test runs under: the isolated one the per-state tests use
/// (SACK and timestamps, NewReno, no pacing, no Nagle, fixed buffers), the same with CUBIC, and
/// the shipped defaults (CUBIC, pacing, Nagle, auto-tuning).
enum Setup: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case modern, modernCubic, shippedDefaults

    var configuration: TCPConfiguration {
        switch self {
        case .modern: return modernConfiguration()
        case .modernCubic:
            var configuration = modernConfiguration()
            configuration.congestionControl = .cubic
            return configuration
        case .shippedDefaults: return TCPConfiguration()
        }
    }

    var testDescription: String { rawValue }
}

/// An active open under `setup`, its SYN sent at t0 (SYN-SENT).
func synSentConnection(_ setup: Setup) -> TCPConnection {
    var connection = TCPConnection.connect(
        localPort: localPort, remotePort: remotePort, configuration: setup.configuration,
        initialSequenceNumber: localISS, now: t0)
    _ = connection.drain(at: t0)
    return connection
}

/// Forty segments written and the first ten in flight from 100 ms (paced, within a few ms).
func tenSegmentsInFlight(_ setup: Setup) -> TCPConnection {
    var connection = modernConnection(configuration: setup.configuration)
    #expect(connection.write(bytes(count: 40 * modernMSS)) == 40 * modernMSS)
    #expect(connection.drainPaced(at: at(100)).count == 10)
    return connection
}

/// Ten segments in flight; at 113 ms 1-3 are SACKed, so RACK finds 0 lost and fast recovery
/// resends it.
func recoveringFirstSegment(_ setup: Setup) -> TCPConnection {
    var connection = tenSegmentsInFlight(setup)
    let echo = connection.timestampValue(at: at(100))
    connection.receive(
        peerACK(ourSegmentStart(0), echo: echo, sack: [block(ourSegmentStart(1), ourSegmentStart(4))]), now: at(113))
    #expect(connection.drainPaced(at: at(113)).first?.sequenceNumber == ourSegmentStart(0))
    return connection
}

extension TCPConnection {
    /// Everything sent from `now` while only the pacer holds segments back: its wakeups are
    /// taken as they come, up to `limit` later; other timers are left alone.
    mutating func drainPaced(at now: NIODeadline, limit: TimeAmount = .milliseconds(20)) -> [TCPSegment] {
        var out = drain(at: now)
        while let wakeup = timers[.pacing], wakeup == nextDeadline, wakeup <= now + limit {
            handleTimeout(now: wakeup)
            out += drain(at: wakeup)
        }
        return out
    }

    /// Fires timers in order up to `end`, collecting what is sent.
    mutating func runTimers(until end: NIODeadline) -> [TCPSegment] {
        var out: [TCPSegment] = []
        while let deadline = nextDeadline, deadline <= end {
            handleTimeout(now: deadline)
            out += drain(at: deadline)
        }
        return out
    }
}
