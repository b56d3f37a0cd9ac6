import NIOCore
import Testing
import TOUWire

private func bytes(_ buffer: ByteBuffer) -> [UInt8] {
    buffer.getBytes(at: buffer.readerIndex, length: buffer.readableBytes) ?? []
}

private func buffer(_ bytes: [UInt8]) -> ByteBuffer {
    ByteBuffer(bytes: bytes)
}

/// First word: Hlen byte, proto, flags (big-endian).
private func firstWord(hlen: UInt8, proto: UInt8, flags: UInt16) -> [UInt8] {
    [hlen, proto, UInt8(flags >> 8), UInt8(flags & 0xFF)]
}

private let sid8: [UInt8] = [1, 2, 3, 4, 5, 6, 7, 8]
private let transform: [UInt8] = [1, 6, 0, 0]

@Suite struct GUEHeaderTests {
    // MARK: encoding

    @Test func exactBytesForSecureHeaderWithBothSIDs() {
        var out = ByteBuffer()
        let header = GUEHeader.secure(source: 0x0102_0304_0506_0708, destination: 0x1112_1314_1516_1718)
        header.write(into: &out)
        #expect(header.encodedLength == 24)
        #expect(out.readableBytes == 24)
        // Hlen = 1 + 2 + 2 = 5; proto 59; flags T|S|D = 0x0380.
        #expect(bytes(out) == [0x05, 59, 0x03, 0x80,
                               1, 6, 0, 0,
                               1, 2, 3, 4, 5, 6, 7, 8,
                               0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18])
    }

    @Test func flagMasksAreTheTOU01Positions() {
        #expect(GUEHeader.flagT == 0x0200)
        #expect(GUEHeader.flagS == 0x0100)
        #expect(GUEHeader.flagD == 0x0080)
        var out = ByteBuffer()
        GUEHeader.secure(source: nil, destination: 7).write(into: &out)
        #expect(bytes(out).prefix(4) == [0x03, 59, 0x02, 0x80])  // T|D, Hlen 3
        out.clear()
        GUEHeader.plain(source: 7, destination: nil).write(into: &out)
        #expect(bytes(out) == [0x02, 6, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 7])  // S only, Hlen 2
    }

    @Test(arguments: [TOUMode.secure, TOUMode.plain], [(false, false), (false, true), (true, false), (true, true)])
    func roundTripEveryFlagCombination(mode: TOUMode, sids: (hasS: Bool, hasD: Bool)) throws {
        let (hasS, hasD) = sids
        let source: UInt64? = hasS ? 0xDEAD_BEEF_0000_0001 : nil
        let destination: UInt64? = hasD ? 0xFFFF_FFFF_FFFF_FFFF : nil
        let header = mode == .secure
            ? GUEHeader.secure(source: source, destination: destination)
            : GUEHeader.plain(source: source, destination: destination)
        var out = ByteBuffer()
        header.write(into: &out)
        out.writeBytes([0xAA, 0xBB, 0xCC])
        #expect(out.readableBytes == header.encodedLength + 3)
        #expect(header.encodedLength == 4 + (mode == .secure ? 4 : 0) + (hasS ? 8 : 0) + (hasD ? 8 : 0))

        if !hasS && !hasD {
            #expect(throws: GUEDropReason.noSessionID) { try GUEHeader.parse(from: &out, mode: mode) }
            return
        }
        let parsed = try GUEHeader.parse(from: &out, mode: mode)
        #expect(parsed == header)
        #expect(bytes(out) == [0xAA, 0xBB, 0xCC], "parse must leave exactly the payload")
    }

    @Test func emptyPayloadIsFine() throws {
        var out = ByteBuffer()
        GUEHeader.secure(source: 1, destination: nil).write(into: &out)
        let parsed = try GUEHeader.parse(from: &out, mode: .secure)
        #expect(parsed.sourceSID == 1)
        #expect(out.readableBytes == 0)
    }

    @Test func parseRespectsANonZeroReaderIndex() throws {
        var out = ByteBuffer(bytes: [9, 9, 9])
        out.moveReaderIndex(forwardBy: 3)
        GUEHeader.plain(source: nil, destination: 42).write(into: &out)
        let parsed = try GUEHeader.parse(from: &out, mode: .plain)
        #expect(parsed.destinationSID == 42)
    }

    // MARK: choosing flags on send

    @Test func secureSendFlagsFollowTheRecords() {
        let handshake = DTLSDatagramSummary(recordCount: 1, carriesHandshakeOrEpoch0: true, isClientHello: true,
                                            lastApplicationData: nil)
        let data = DTLSDatagramSummary(recordCount: 1, carriesHandshakeOrEpoch0: false, isClientHello: false,
                                       lastApplicationData: DTLSRecordPosition(epoch: 1, sequenceNumber: 4))
        // Initiator's first ClientHello: S only.
        #expect(GUEHeader.secure(carrying: handshake, localSID: 5, remoteSID: nil)
                == .secure(source: 5, destination: nil))
        // Handshake once the peer is known: S and D.
        #expect(GUEHeader.secure(carrying: handshake, localSID: 5, remoteSID: 9)
                == .secure(source: 5, destination: 9))
        // Data after the handshake: D only.
        #expect(GUEHeader.secure(carrying: data, localSID: 5, remoteSID: 9)
                == .secure(source: nil, destination: 9))
        // Never a header that names no session.
        #expect(GUEHeader.secure(carrying: data, localSID: 5, remoteSID: nil).sourceSID == 5)
    }

    @Test func plainSendFlagsFollowSYN() {
        #expect(GUEHeader.plain(synSet: true, localSID: 5, remoteSID: nil) == .plain(source: 5, destination: nil))
        #expect(GUEHeader.plain(synSet: true, localSID: 5, remoteSID: 9) == .plain(source: 5, destination: 9))
        #expect(GUEHeader.plain(synSet: false, localSID: 5, remoteSID: 9) == .plain(source: nil, destination: 9))
    }

    // MARK: drop rules, one test per reason and mode

    private static func valid(_ mode: TOUMode) -> [UInt8] {
        mode == .secure
            ? firstWord(hlen: 3, proto: 59, flags: 0x0280) + transform + sid8
            : firstWord(hlen: 2, proto: 6, flags: 0x0080) + sid8
    }

    private func expectDrop(_ reason: GUEDropReason, _ raw: [UInt8], _ mode: TOUMode,
                            sourceLocation: SourceLocation = #_sourceLocation) {
        var input = buffer(raw)
        let before = input
        #expect(throws: reason, sourceLocation: sourceLocation) { try GUEHeader.parse(from: &input, mode: mode) }
        #expect(input == before, "a rejected datagram is left untouched", sourceLocation: sourceLocation)
    }

    @Test(arguments: [TOUMode.secure, TOUMode.plain])
    func validBaselineParses(mode: TOUMode) throws {
        var input = buffer(Self.valid(mode))
        let header = try GUEHeader.parse(from: &input, mode: mode)
        #expect(header.destinationSID == 0x0102_0304_0506_0708)
    }

    @Test(arguments: [TOUMode.secure, TOUMode.plain])
    func truncated(mode: TOUMode) {
        expectDrop(.truncated, [], mode)
        expectDrop(.truncated, [0x00, 59, 0x02], mode)
        let full = Self.valid(mode)
        for cut in 4..<full.count {
            expectDrop(.truncated, Array(full.prefix(cut)), mode)
        }
    }

    @Test(arguments: [TOUMode.secure, TOUMode.plain])
    func badVariant(mode: TOUMode) {
        for variant: UInt8 in 1...3 {
            var raw = Self.valid(mode)
            raw[0] |= variant << 6
            expectDrop(.badVariant, raw, mode)
        }
    }

    @Test(arguments: [TOUMode.secure, TOUMode.plain])
    func controlMessage(mode: TOUMode) {
        var raw = Self.valid(mode)
        raw[0] |= 0x20
        expectDrop(.controlMessage, raw, mode)
    }

    @Test(arguments: [TOUMode.secure, TOUMode.plain])
    func unknownFlags(mode: TOUMode) {
        for bit in 0..<16 where (UInt16(1) << bit) & 0x0380 == 0 {
            var raw = Self.valid(mode)
            let flags = (UInt16(raw[2]) << 8 | UInt16(raw[3])) | UInt16(1) << bit
            raw[2] = UInt8(flags >> 8)
            raw[3] = UInt8(flags & 0xFF)
            expectDrop(.unknownFlags, raw, mode)
        }
    }

    @Test(arguments: [TOUMode.secure, TOUMode.plain])
    func badHeaderLength(mode: TOUMode) {
        for hlen: UInt8 in 0...31 {
            var raw = Self.valid(mode)
            let correct = raw[0]
            guard hlen != correct else { continue }
            raw[0] = hlen
            raw += [UInt8](repeating: 0, count: 128)  // long enough that only the mismatch can trip
            expectDrop(.badHeaderLength, raw, mode)
        }
    }

    @Test func modeMismatchSecure() {
        // A well-formed plain header offered to a secure receiver: T clear.
        expectDrop(.modeMismatch, Self.valid(.plain), .secure)
    }

    @Test func modeMismatchPlain() {
        // A well-formed secure header offered to a plain receiver: T set.
        expectDrop(.modeMismatch, Self.valid(.secure), .plain)
    }

    @Test func badProtoSecure() {
        for proto: UInt8 in [0, 6, 17, 58, 60, 255] {
            var raw = Self.valid(.secure)
            raw[1] = proto
            expectDrop(.badProto, raw, .secure)
        }
    }

    @Test func badProtoPlain() {
        for proto: UInt8 in [0, 17, 59, 255] {
            var raw = Self.valid(.plain)
            raw[1] = proto
            expectDrop(.badProto, raw, .plain)
        }
    }

    @Test func badTransformSecure() {
        for (type, payloadType): (UInt8, UInt8) in [(0, 6), (2, 6), (1, 17), (1, 59), (0, 0)] {
            var raw = Self.valid(.secure)
            raw[4] = type
            raw[5] = payloadType
            expectDrop(.badTransform, raw, .secure)
        }
    }

    @Test func badTransformPlain() {
        // In plain mode T must be clear, so a transform can only ever appear as a mode mismatch;
        // the mirror rule is that a plain receiver never looks inside a transform field.
        var raw = Self.valid(.secure)
        raw[4] = 7
        expectDrop(.modeMismatch, raw, .plain)
    }

    @Test func noSessionIDSecure() {
        expectDrop(.noSessionID, firstWord(hlen: 1, proto: 59, flags: 0x0200) + transform, .secure)
    }

    @Test func noSessionIDPlain() {
        expectDrop(.noSessionID, firstWord(hlen: 0, proto: 6, flags: 0) + [1, 2, 3], .plain)
    }

    @Test func everyDropReasonIsReachable() {
        var seen = Set<GUEDropReason>()
        let inputs: [([UInt8], TOUMode)] = [
            ([], .secure),
            ([0x40, 59, 0x02, 0x80], .secure),
            ([0x20, 59, 0x02, 0x80], .secure),
            ([0x03, 59, 0x02, 0x81], .secure),
            ([0x04, 59, 0x02, 0x80], .secure),
            (Self.valid(.plain), .secure),
            (firstWord(hlen: 3, proto: 6, flags: 0x0280) + transform + sid8, .secure),
            (firstWord(hlen: 3, proto: 59, flags: 0x0280) + [2, 6, 0, 0] + sid8, .secure),
            (firstWord(hlen: 0, proto: 6, flags: 0), .plain),
        ]
        for (raw, mode) in inputs {
            var input = buffer(raw)
            do throws(GUEDropReason) {
                _ = try GUEHeader.parse(from: &input, mode: mode)
            } catch {
                seen.insert(error)
            }
        }
        #expect(seen == Set(GUEDropReason.allCases))
    }

    // MARK: fuzz

    @Test(arguments: [TOUMode.secure, TOUMode.plain])
    func seededRandomBytesOnlyEverThrowTypedErrors(mode: TOUMode) {
        var rng = SplitMix64(seed: mode == .secure ? 0x5EED_0001 : 0x5EED_0002)
        var accepted = 0
        for _ in 0..<50_000 {
            let length = Int(rng.next() % 40)
            var raw = (0..<length).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            // Bias half the inputs towards plausible headers so the deeper checks get exercised.
            if rng.next() & 1 == 0, raw.count >= 8 {
                raw[1] = mode == .secure ? 59 : 6
                raw[2] = (mode == .secure ? 0x02 : 0) | (raw[2] & 0x01)
                raw[3] &= 0x80
                let hasT = raw[2] & 0x02 != 0
                raw[0] = (hasT ? 1 : 0) + (raw[2] & 0x01 != 0 ? 2 : 0) + (raw[3] != 0 ? 2 : 0)
                if hasT, rng.next() % 4 != 0 { raw[4] = 1; raw[5] = 6 }
            }
            var input = buffer(raw)
            do throws(GUEDropReason) {
                let header = try GUEHeader.parse(from: &input, mode: mode)
                accepted += 1
                // Whatever was accepted re-encodes to the same prefix (Info aside) and is sane.
                #expect(header.sourceSID != nil || header.destinationSID != nil)
                #expect(input.readableBytes == raw.count - header.encodedLength)
                var again = ByteBuffer()
                header.write(into: &again)
                var reparsed = again
                #expect((try? GUEHeader.parse(from: &reparsed, mode: mode)) == header)
            } catch {
                #expect(GUEDropReason.allCases.contains(error))
            }
        }
        #expect(accepted > 0, "the biased half should produce some valid headers")
    }
}

/// Small deterministic generator so fuzz failures reproduce.
struct SplitMix64: RandomNumberGenerator {
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

@Suite struct GUEHeaderPrependTests {
    @Test func prependIntoHeadroomMatchesWrite() throws {
        let header = GUEHeader.secure(source: 0x0102_0304_0506_0708, destination: 0x1112_1314_1516_1718)
        var expected = ByteBufferAllocator().buffer(capacity: 64)
        header.write(into: &expected)
        expected.writeString("record")

        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        buffer.moveWriterIndex(forwardBy: GUEHeader.maximumEncodedLength)
        buffer.moveReaderIndex(forwardBy: GUEHeader.maximumEncodedLength)
        buffer.writeString("record")
        #expect(header.prepend(to: &buffer))
        #expect(buffer == expected)
    }

    @Test func prependWithoutHeadroomLeavesTheBufferAlone() {
        var buffer = ByteBufferAllocator().buffer(capacity: 16)
        buffer.writeString("record")
        let before = buffer
        #expect(!GUEHeader.plain(source: 1, destination: nil).prepend(to: &buffer))
        #expect(buffer == before)
    }
}
