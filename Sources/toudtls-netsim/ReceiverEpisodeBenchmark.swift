import Foundation
import NIOCore
import TCPEngine
import TOUWire

/// CPU a receiving engine spends on one loss episode: the first of `segments` full segments is
/// lost, the rest arrive out of order (each answered with its SACK-carrying ACK), then the
/// retransmission fills the hole. Segments are built before the clock starts; the application
/// reads afterwards, outside the measurement, and the bytes are checked.
struct ReceiverEpisodeBenchmark {
    var segments: Int
    var runs: Int

    struct Outcome {
        var segments: Int
        var cpuSeconds: [Double]
        var acknowledgments: Int
    }

    private static let localPort: UInt16 = 40000
    private static let remotePort: UInt16 = 6080
    private static let localISS: UInt32 = 10_000
    private static let remoteISS: UInt32 = 0xFFFF_0000
    /// The receiver's MSS less the timestamps option: what a full segment of the peer carries.
    private static let payloadLength = 1399 - 12

    func run() throws -> Outcome {
        var times: [Double] = []
        var acknowledgments = 0
        for _ in 0..<runs {
            let (seconds, acks) = try episode()
            times.append(seconds)
            acknowledgments = acks
        }
        return Outcome(segments: segments, cpuSeconds: times, acknowledgments: acknowledgments)
    }

    /// The shipped defaults (CUBIC, pacing, Nagle, auto-tuning), with a buffer the whole
    /// episode fits in from the start.
    private func configuration() -> TCPConfiguration {
        var configuration = TCPConfiguration()
        let needed = (segments + 16) * Self.payloadLength
        configuration.receiveBufferSize = needed
        configuration.maximumReceiveBufferSize = needed
        return configuration
    }

    private func episode() throws -> (seconds: Double, acknowledgments: Int) {
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var receiver = TCPConnection.connect(
            localPort: Self.localPort, remotePort: Self.remotePort, configuration: configuration(),
            initialSequenceNumber: Self.localISS, now: start)
        let syn = receiver.pollTransmit(now: start)
        let echo = syn?.options.timestamps?.value ?? 0
        let synACK = TCPSegment(
            sourcePort: Self.remotePort, destinationPort: Self.localPort, sequenceNumber: Self.remoteISS,
            acknowledgmentNumber: Self.localISS &+ 1, flags: [.syn, .ack], window: 65535,
            options: TCPOptions(
                maximumSegmentSize: 1460, windowScale: 7, sackPermitted: true,
                timestamps: TCPTimestamps(value: 1, echoReply: echo)))
        let established = start + .milliseconds(10)
        receiver.receive(synACK, now: established)
        while receiver.pollTransmit(now: established) != nil {}
        guard receiver.state == .established else { throw BenchmarkError("the receiver did not reach ESTABLISHED") }

        let data = (0..<segments).map { index in
            TCPSegment(
                sourcePort: Self.remotePort, destinationPort: Self.localPort,
                sequenceNumber: Self.remoteISS &+ 1 &+ UInt32(index * Self.payloadLength),
                acknowledgmentNumber: Self.localISS &+ 1, flags: .ack, window: 65535,
                options: TCPOptions(timestamps: TCPTimestamps(value: 2, echoReply: echo)),
                payload: ByteBuffer(repeating: UInt8(truncatingIfNeeded: index), count: Self.payloadLength))
        }
        var now = established + .milliseconds(10)
        var acknowledgments = 0
        let before = threadCPUTime()
        for segment in data.dropFirst() {
            now = now + .microseconds(1)
            receiver.receive(segment, now: now)
            while receiver.pollTransmit(now: now) != nil { acknowledgments += 1 }
        }
        if let first = data.first { receiver.receive(first, now: now) }
        while receiver.pollTransmit(now: now) != nil { acknowledgments += 1 }
        let seconds = threadCPUTime() - before

        var index = 0
        var offset = 0
        while let chunk = receiver.read(maximumBytes: .max) {
            for byte in chunk.readableBytesView {
                guard byte == UInt8(truncatingIfNeeded: index) else {
                    throw BenchmarkError("byte \(index * Self.payloadLength + offset) differs")
                }
                offset += 1
                if offset == Self.payloadLength { (index, offset) = (index + 1, 0) }
            }
        }
        guard index == segments, offset == 0 else {
            throw BenchmarkError("\(index * Self.payloadLength + offset) bytes delivered, expected \(segments * Self.payloadLength)")
        }
        return (seconds, acknowledgments)
    }

    private func threadCPUTime() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }
}

struct BenchmarkError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
