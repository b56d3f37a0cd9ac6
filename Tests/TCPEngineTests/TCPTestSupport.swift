import NIOCore
import TCPEngine
import TOUWire

// Templates in the style of smoltcp's tcp.rs: a segment from the peer and the segment we expect
// back, with only the differing fields spelled out at the call site.

let localPort: UInt16 = 40000
let remotePort: UInt16 = 6080
let localISS: UInt32 = 10_000
/// Near the top of the sequence space so the peer's numbers wrap during the tests.
let remoteISS: UInt32 = 0xFFFF_FF00
let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
/// Our scaled window field with the default 4 MiB buffer (shift 7).
let defaultWindowField: UInt16 = 32768

func at(_ milliseconds: Int64) -> NIODeadline { t0 + .milliseconds(milliseconds) }

func bytes(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

func bytes(count: Int, fill: UInt8 = 0x61) -> ByteBuffer {
    ByteBuffer(repeating: fill, count: count)
}

/// A segment the peer sends to us.
func fromPeer(
    seq: UInt32 = remoteISS &+ 1, ack: UInt32? = localISS &+ 1, flags: TCPFlags = [],
    window: UInt16 = 64000, options: TCPOptions = TCPOptions(), payload: ByteBuffer = ByteBuffer()
) -> TCPSegment {
    TCPSegment(
        sourcePort: remotePort, destinationPort: localPort, sequenceNumber: seq,
        acknowledgmentNumber: ack ?? 0, flags: ack == nil ? flags : flags.union(.ack),
        window: window, options: options, payload: payload)
}

/// A segment we expect the engine to send.
func toPeer(
    seq: UInt32 = localISS &+ 1, ack: UInt32? = remoteISS &+ 1, flags: TCPFlags = [],
    window: UInt16 = defaultWindowField, options: TCPOptions = TCPOptions(),
    payload: ByteBuffer = ByteBuffer()
) -> TCPSegment {
    TCPSegment(
        sourcePort: localPort, destinationPort: remotePort, sequenceNumber: seq,
        acknowledgmentNumber: ack ?? 0, flags: ack == nil ? flags : flags.union(.ack),
        window: window, options: options, payload: payload)
}

extension TCPConnection {
    /// Every segment the engine wants to send now.
    mutating func drain(at now: NIODeadline) -> [TCPSegment] {
        var out: [TCPSegment] = []
        while let segment = pollTransmit(now: now) { out.append(segment) }
        return out
    }

    mutating func drainEvents() -> [TCPEvent] {
        var out: [TCPEvent] = []
        while let event = pollEvent() { out.append(event) }
        return out
    }

    mutating func readAll() -> String {
        var text = ""
        while let chunk = read(maximumBytes: .max) { text += String(buffer: chunk) }
        return text
    }
}

/// The SYN an active open sends with the default configuration.
let ourSYNOptions = TCPOptions(maximumSegmentSize: 1399, windowScale: 7)
/// The peer's SYN options: window scaling offered with shift 0 so its windows read plainly.
let peerSYNOptions = TCPOptions(maximumSegmentSize: 1460, windowScale: 0)

/// A connection that did an active open at t0 and got the SYN-ACK at 10 ms (srtt 10 ms).
func establishedConnection(
    configuration: TCPConfiguration = classicConfiguration(), peerOptions: TCPOptions = peerSYNOptions,
    peerWindow: UInt16 = 64000
) -> TCPConnection {
    var connection = TCPConnection.connect(
        localPort: localPort, remotePort: remotePort, configuration: configuration,
        initialSequenceNumber: localISS, now: t0)
    _ = connection.drain(at: t0)
    connection.receive(
        fromPeer(seq: remoteISS, flags: .syn, window: peerWindow, options: peerOptions), now: at(10))
    _ = connection.drain(at: at(10))
    _ = connection.drainEvents()
    return connection
}

/// The engine as the first per-state tests knew it: no SACK or timestamps, NewReno, no pacing,
/// Nagle off and a fixed receive buffer, so each test exercises one mechanism in isolation.
func classicConfiguration(mss: Int = 1399) -> TCPConfiguration {
    var configuration = TCPConfiguration(maximumSegmentSize: mss)
    configuration.selectiveAcknowledgments = false
    configuration.timestamps = false
    configuration.congestionControl = .newReno
    configuration.pacing = false
    configuration.noDelay = true
    configuration.maximumReceiveBufferSize = 0
    return configuration
}
