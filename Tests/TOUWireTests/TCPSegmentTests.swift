import NIOCore
import Testing

@testable import TOUWire

private func bytes(_ hex: String) -> ByteBuffer {
    var buffer = ByteBuffer()
    var chars = hex.makeIterator()
    while let high = chars.next(), let low = chars.next() {
        buffer.writeInteger(UInt8(String([high, low]), radix: 16)!)
    }
    return buffer
}

private func encode(_ segment: TCPSegment, _ mode: TCPChecksumMode) -> ByteBuffer {
    var buffer = ByteBuffer()
    segment.write(into: &buffer, checksum: mode)
    return buffer
}

@Suite struct TCPSegmentTests {
    let sample = TCPSegment(
        sourcePort: 40000, destinationPort: 80, sequenceNumber: 1000, acknowledgmentNumber: 2000,
        flags: [.psh, .ack], window: 512, payload: ByteBuffer(string: "hello"))

    @Test func checksumKnownAnswerDataSegment() throws {
        // Expected bytes and checksum computed independently (Python, RFC 1071 word by word).
        let wire = encode(sample, .addressFree)
        #expect(wire == bytes("9c400050000003e8000007d05018020000000000" + "68656c6c6f").withChecksum(0xC1AD))
        #expect(wire.getInteger(at: 16, as: UInt16.self) == 0xC1AD)
        #expect(InternetChecksum.addressFreeTCP(segment: wire) == 0)
    }

    @Test func checksumKnownAnswerSYNWithMSS() throws {
        let syn = TCPSegment(
            sourcePort: 1234, destinationPort: 6080, sequenceNumber: 0x0102_0304, flags: .syn,
            window: 65535, options: TCPOptions(maximumSegmentSize: 1399))
        let wire = encode(syn, .addressFree)
        #expect(wire == bytes("04d217c001020304000000006002ffff0000000002040577").withChecksum(0x77CC))
    }

    @Test func zeroModeWritesZeroAndIgnoresChecksum() throws {
        var wire = encode(sample, .zero)
        #expect(wire.getInteger(at: 16, as: UInt16.self) == 0)
        wire.setInteger(UInt16(0xBEEF), at: 16)
        let parsed = try TCPSegment.parse(wire, checksum: .zero)
        #expect(parsed == sample)
    }

    @Test func addressFreeRejectsCorruption() throws {
        var wire = encode(sample, .addressFree)
        #expect(try TCPSegment.parse(wire, checksum: .addressFree) == sample)
        wire.setInteger(UInt8(ascii: "j"), at: 20)
        #expect(throws: TCPParseError.badChecksum(received: 0xC1AD)) {
            try TCPSegment.parse(wire, checksum: .addressFree)
        }
    }

    @Test func checksumOddLengthsMatchWordByWordSum() {
        // The eight-bytes-at-a-time summation must agree with the plain RFC 1071 loop.
        var generator = SystemRandomNumberGenerator()
        for length in 0..<80 {
            let raw = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            var reference: UInt32 = 6 + UInt32(length)
            var index = 0
            while index < length {
                let low = index + 1 < length ? UInt32(raw[index + 1]) : 0
                reference += UInt32(raw[index]) << 8 | low
                index += 2
            }
            while reference > 0xFFFF { reference = (reference & 0xFFFF) + (reference >> 16) }
            let fast = raw.withUnsafeBytes { InternetChecksum.addressFreeTCP(segmentBytes: $0) }
            #expect(fast == ~UInt16(reference), "length \(length)")
        }
    }

    @Test(arguments: [TCPChecksumMode.zero, .addressFree])
    func roundTripEveryOption(mode: TCPChecksumMode) throws {
        let options = TCPOptions(
            maximumSegmentSize: 1399, windowScale: 7, sackPermitted: true,
            timestamps: TCPTimestamps(value: 0xDEAD_BEEF, echoReply: 42))
        let syn = TCPSegment(
            sourcePort: 1, destinationPort: 2, sequenceNumber: .max, acknowledgmentNumber: 7,
            flags: [.syn, .ack, .ece, .cwr], window: 1234, urgentPointer: 9, options: options)
        let wire = encode(syn, mode)
        #expect(wire.readableBytes == syn.headerLength)
        #expect(syn.headerLength == 20 + 4 + 4 + 4 + 12)
        #expect(try TCPSegment.parse(wire, checksum: mode) == syn)
    }

    @Test func sackBlocksRoundTripAndAreCappedToFit() throws {
        let blocks = (0..<4).map { TCPSACKBlock(left: UInt32($0) * 100, right: UInt32($0) * 100 + 50) }
        var segment = sample
        segment.options = TCPOptions(sackBlocks: blocks)
        #expect(segment.headerLength == 20 + 4 + 32)
        #expect(try TCPSegment.parse(encode(segment, .addressFree), checksum: .addressFree) == segment)

        // With timestamps only three blocks fit in 40 bytes; the fourth is not written.
        segment.options.timestamps = TCPTimestamps(value: 1, echoReply: 2)
        #expect(segment.headerLength == 20 + 12 + 4 + 24)
        let parsed = try TCPSegment.parse(encode(segment, .zero), checksum: .zero)
        #expect(parsed.options.sackBlocks == Array(blocks.prefix(3)))
        #expect(parsed.options.timestamps == segment.options.timestamps)
    }

    @Test func payloadIsZeroCopySlice() throws {
        var wire = ByteBuffer(string: "xx")
        wire.moveReaderIndex(forwardBy: 2)
        sample.write(into: &wire, checksum: .zero)
        let parsed = try TCPSegment.parse(wire, checksum: .zero)
        #expect(parsed.payload == ByteBuffer(string: "hello"))
        let samePointer = wire.withUnsafeReadableBytes { whole in
            parsed.payload.withUnsafeReadableBytes { part in
                part.baseAddress == whole.baseAddress.map { $0 + 20 }
            }
        }
        #expect(samePointer)
    }

    @Test func unknownOptionsAreSkippedAndPaddingTolerated() throws {
        // MSS, an unknown kind 30 of length 4, NOP, window scale, EOL padding after.
        var wire = bytes("04d217c001020304000000009002ffff00000000" + "020405b4" + "1e04abcd" + "01030307" + "00000000")
        #expect(wire.readableBytes == 36)
        let parsed = try TCPSegment.parse(wire, checksum: .zero)
        #expect(parsed.options == TCPOptions(maximumSegmentSize: 1460, windowScale: 7))
        #expect(parsed.payload.readableBytes == 0)
        wire.setInteger(UInt8(0x70), at: 12)  // data offset 7: ignores the last option word
        let shorter = try TCPSegment.parse(wire, checksum: .zero)
        #expect(shorter.options == TCPOptions(maximumSegmentSize: 1460))
        #expect(shorter.payload.readableBytes == 8)
    }

    @Test(arguments: [
        "01010102", "020305b4", "0201", "0200", "01010202", "030205", "04030000", "0503000000000000",
        "050b000000000000000000", "080a00000000", "1e10abcd",
    ])
    func malformedOptionsAreRejected(options: String) {
        let padded = options + String(repeating: "00", count: (4 - options.count / 2 % 4) % 4)
        let words = 5 + padded.count / 8
        let header = "04d217c00102030400000000" + String(words << 4, radix: 16) + "02ffff00000000"
        #expect(throws: TCPParseError.self) {
            try TCPSegment.parse(bytes(header + padded), checksum: .zero)
        }
    }

    @Test func truncatedAndBadOffsetsAreRejected() {
        let wire = encode(sample, .zero)
        for length in 0..<20 {
            #expect(throws: TCPParseError.truncated(length: length)) {
                try TCPSegment.parse(wire.getSlice(at: 0, length: length)!, checksum: .zero)
            }
        }
        for offset in [0, 1, 4] {
            var bad = wire
            bad.setInteger(UInt8(offset << 4), at: 12)
            #expect(throws: TCPParseError.badDataOffset(words: offset, length: 25)) {
                try TCPSegment.parse(bad, checksum: .zero)
            }
        }
        var tooLong = wire
        tooLong.setInteger(UInt8(15 << 4), at: 12)
        #expect(throws: TCPParseError.badDataOffset(words: 15, length: 25)) {
            try TCPSegment.parse(tooLong, checksum: .zero)
        }
    }

    @Test func randomGarbageNeverCrashes() {
        var rng = SplitMix(seed: 7)
        var parsedCount = 0
        for _ in 0..<4_000 {
            let length = Int(rng.next() % 80)
            var buffer = ByteBuffer()
            for _ in 0..<length { buffer.writeInteger(UInt8(truncatingIfNeeded: rng.next())) }
            if length > 12, rng.next() % 2 == 0 {
                // Plausible data offsets reach the option parser more often.
                buffer.setInteger(UInt8(5 + rng.next() % 11) << 4, at: 12)
            }
            if let segment = try? TCPSegment.parse(buffer, checksum: .zero) {
                parsedCount += 1
                #expect(segment.payload.readableBytes <= length - 20)
            }
            _ = try? TCPSegment.parse(buffer, checksum: .addressFree)
        }
        #expect(parsedCount > 0)
    }
}

private struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension ByteBuffer {
    fileprivate func withChecksum(_ value: UInt16) -> ByteBuffer {
        var copy = self
        copy.setInteger(value, at: 16)
        return copy
    }
}
