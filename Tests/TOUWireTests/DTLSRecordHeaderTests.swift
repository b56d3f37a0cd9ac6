import NIOCore
import Testing
import TOUWire

/// Appends one record with a fragment of `fragment` bytes.
private func appendRecord(_ out: inout ByteBuffer, type: UInt8, epoch: UInt16, seq: UInt64,
                          fragment: [UInt8], version: UInt16 = 0xFEFD) {
    DTLSRecordHeader(contentType: type, version: version, epoch: epoch, sequenceNumber: seq,
                     length: fragment.count).write(into: &out)
    out.writeBytes(fragment)
}

private let clientHelloFragment: [UInt8] = [1, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 3, 0xFE, 0xFD, 0]
private let serverHelloFragment: [UInt8] = [2, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0]

@Suite struct DTLSRecordHeaderTests {
    @Test func headerBytesAndPeekRoundTrip() throws {
        var out = ByteBuffer()
        let header = DTLSRecordHeader(contentType: 23, version: 0xFEFD, epoch: 0x0102,
                                      sequenceNumber: 0xA1A2_A3A4_A5A6, length: 0x0304)
        header.write(into: &out)
        #expect(out.readableBytes == 13)
        #expect(out.getBytes(at: 0, length: 13) == [23, 0xFE, 0xFD, 0x01, 0x02,
                                                    0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0x03, 0x04])
        #expect(DTLSRecordHeader.peek(in: out, at: 0) == header)
        #expect(DTLSRecordHeader.peek(in: out, at: 1) == nil)
    }

    @Test func singleClientHello() throws {
        var out = ByteBuffer()
        appendRecord(&out, type: 22, epoch: 0, seq: 0, fragment: clientHelloFragment, version: 0xFEFF)
        let summary = try #require(DTLSDatagramSummary.scan(out))
        #expect(summary.recordCount == 1)
        #expect(summary.isClientHello)
        #expect(summary.carriesHandshakeOrEpoch0)
        #expect(summary.lastApplicationData == nil)
    }

    @Test func serverFlightIsHandshakeButNotClientHello() throws {
        var out = ByteBuffer()
        appendRecord(&out, type: 22, epoch: 0, seq: 1, fragment: serverHelloFragment)
        appendRecord(&out, type: 22, epoch: 0, seq: 2, fragment: [11, 0, 0, 0])
        let summary = try #require(DTLSDatagramSummary.scan(out))
        #expect(summary.recordCount == 2)
        #expect(!summary.isClientHello)
        #expect(summary.carriesHandshakeOrEpoch0)
    }

    @Test func clientHelloOnlyCountsAsFirstRecordInEpoch0() throws {
        var later = ByteBuffer()
        appendRecord(&later, type: 22, epoch: 0, seq: 0, fragment: serverHelloFragment)
        appendRecord(&later, type: 22, epoch: 0, seq: 1, fragment: clientHelloFragment)
        #expect(DTLSDatagramSummary.scan(later)?.isClientHello == false)

        var encrypted = ByteBuffer()
        appendRecord(&encrypted, type: 22, epoch: 1, seq: 0, fragment: clientHelloFragment)
        #expect(DTLSDatagramSummary.scan(encrypted)?.isClientHello == false)

        var emptyFragment = ByteBuffer()
        appendRecord(&emptyFragment, type: 22, epoch: 0, seq: 0, fragment: [])
        #expect(DTLSDatagramSummary.scan(emptyFragment)?.isClientHello == false)

        var wrongType = ByteBuffer()
        appendRecord(&wrongType, type: 23, epoch: 0, seq: 0, fragment: clientHelloFragment)
        #expect(DTLSDatagramSummary.scan(wrongType)?.isClientHello == false)
    }

    @Test func finishedFlightCarriesS() throws {
        // CCS (epoch 0) then an encrypted Finished (epoch 1, type 22).
        var out = ByteBuffer()
        appendRecord(&out, type: 20, epoch: 0, seq: 5, fragment: [1])
        appendRecord(&out, type: 22, epoch: 1, seq: 0, fragment: [UInt8](repeating: 0x55, count: 40))
        let summary = try #require(DTLSDatagramSummary.scan(out))
        #expect(summary.recordCount == 2)
        #expect(summary.carriesHandshakeOrEpoch0)
        #expect(!summary.isClientHello)

        var retransmittedFinished = ByteBuffer()
        appendRecord(&retransmittedFinished, type: 22, epoch: 1, seq: 9, fragment: [0x55])
        #expect(DTLSDatagramSummary.scan(retransmittedFinished)?.carriesHandshakeOrEpoch0 == true)
    }

    @Test func applicationDataAndAlertsAfterHandshakeDoNotCarryS() throws {
        var data = ByteBuffer()
        appendRecord(&data, type: 23, epoch: 1, seq: 77, fragment: [UInt8](repeating: 1, count: 100))
        let summary = try #require(DTLSDatagramSummary.scan(data))
        #expect(!summary.carriesHandshakeOrEpoch0)
        #expect(summary.lastApplicationData == DTLSRecordPosition(epoch: 1, sequenceNumber: 77))

        var alert = ByteBuffer()
        appendRecord(&alert, type: 21, epoch: 1, seq: 78, fragment: [1, 0])
        let alertSummary = try #require(DTLSDatagramSummary.scan(alert))
        #expect(!alertSummary.carriesHandshakeOrEpoch0)
        #expect(alertSummary.lastApplicationData == nil)

        var epoch0Alert = ByteBuffer()
        appendRecord(&epoch0Alert, type: 21, epoch: 0, seq: 3, fragment: [2, 40])
        #expect(DTLSDatagramSummary.scan(epoch0Alert)?.carriesHandshakeOrEpoch0 == true)
    }

    @Test func lastApplicationDataIsTheHighestPosition() throws {
        var out = ByteBuffer()
        appendRecord(&out, type: 23, epoch: 1, seq: 0xFFFF_FFFF_FFFF, fragment: [1])
        appendRecord(&out, type: 23, epoch: 2, seq: 3, fragment: [2])
        appendRecord(&out, type: 23, epoch: 2, seq: 1, fragment: [3])
        appendRecord(&out, type: 21, epoch: 3, seq: 0, fragment: [1, 0])
        let summary = try #require(DTLSDatagramSummary.scan(out))
        #expect(summary.recordCount == 4)
        #expect(summary.lastApplicationData == DTLSRecordPosition(epoch: 2, sequenceNumber: 3))
        #expect(DTLSRecordPosition(epoch: 1, sequenceNumber: .max) < DTLSRecordPosition(epoch: 2, sequenceNumber: 0))
    }

    @Test func scanUsesOnlyTheReadableBytes() throws {
        var out = ByteBuffer(bytes: [0xFF, 0xFF, 0xFF])
        out.moveReaderIndex(forwardBy: 3)
        appendRecord(&out, type: 23, epoch: 1, seq: 1, fragment: [9, 9])
        #expect(DTLSDatagramSummary.scan(out)?.recordCount == 1)
        let slice = try #require(out.getSlice(at: out.readerIndex, length: out.readableBytes))
        #expect(DTLSDatagramSummary.scan(slice)?.recordCount == 1)
    }

    @Test func emptyDatagramIsRejected() {
        #expect(DTLSDatagramSummary.scan(ByteBuffer()) == nil)
    }

    @Test func everyTruncationAndAnyTrailingByteIsRejected() throws {
        var out = ByteBuffer()
        appendRecord(&out, type: 22, epoch: 0, seq: 0, fragment: clientHelloFragment)
        appendRecord(&out, type: 23, epoch: 1, seq: 1, fragment: [1, 2, 3, 4])
        let whole = try #require(out.getBytes(at: 0, length: out.readableBytes))
        #expect(DTLSDatagramSummary.scan(out)?.recordCount == 2)
        let boundary = 13 + clientHelloFragment.count
        for cut in 1..<whole.count where cut != boundary {
            #expect(DTLSDatagramSummary.scan(ByteBuffer(bytes: whole.prefix(cut))) == nil, "cut at \(cut)")
        }
        #expect(DTLSDatagramSummary.scan(ByteBuffer(bytes: whole.prefix(boundary)))?.recordCount == 1)
        #expect(DTLSDatagramSummary.scan(ByteBuffer(bytes: whole + [7])) == nil)
        // A ClientHello datagram may be padded with zeros; no other may.
        #expect(DTLSDatagramSummary.scan(ByteBuffer(bytes: whole + [0, 0, 0]))?.paddingLength == 3)
        let data = Array(whole[boundary...])
        #expect(DTLSDatagramSummary.scan(ByteBuffer(bytes: data + [0])) == nil)
    }

    @Test func lengthLargerThanTheRestIsRejected() {
        var out = ByteBuffer()
        DTLSRecordHeader(contentType: 23, version: 0xFEFD, epoch: 1, sequenceNumber: 0, length: 0xFFFF)
            .write(into: &out)
        out.writeBytes([UInt8](repeating: 0, count: 100))
        #expect(DTLSDatagramSummary.scan(out) == nil)
    }

    @Test func seededFuzzNeverCrashesAndAcceptedInputsTile() {
        var rng = SplitMix64(seed: 0xD715_0001)
        var accepted = 0
        for _ in 0..<50_000 {
            var out = ByteBuffer()
            if rng.next() & 1 == 0 {
                // Plausible records with random fields, then possibly a random cut or extra bytes.
                for _ in 0..<(1 + Int(rng.next() % 4)) {
                    let fragment = (0..<Int(rng.next() % 24)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                    appendRecord(&out, type: UInt8(20 + rng.next() % 5), epoch: UInt16(rng.next() % 3),
                                 seq: rng.next() & 0xFFFF_FFFF_FFFF, fragment: fragment)
                }
                switch rng.next() % 3 {
                case 0: out.moveWriterIndex(to: Int(rng.next() % UInt64(out.writerIndex + 1)))
                case 1: out.writeInteger(UInt8(truncatingIfNeeded: rng.next()))
                default: break
                }
            } else {
                out.writeBytes((0..<Int(rng.next() % 64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
            }
            guard let summary = DTLSDatagramSummary.scan(out) else { continue }
            accepted += 1
            // Re-walk independently: the record lengths must sum to the datagram exactly.
            var index = out.readerIndex
            var count = 0
            while let header = DTLSRecordHeader.peek(in: out, at: index), index < out.writerIndex {
                index += 13 + header.length
                count += 1
            }
            #expect(index == out.writerIndex)
            #expect(count == summary.recordCount)
        }
        #expect(accepted > 1_000)
    }
}
