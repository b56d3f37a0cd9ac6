import Foundation
import Testing

/// Builds capture files and packets byte by byte, as the formats' documents lay them out.
enum PcapBuilder {
    static func be16(_ value: Int) -> [UInt8] { [UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF)] }
    static func be32(_ value: UInt32) -> [UInt8] { be16(Int(value >> 16)) + be16(Int(value & 0xFFFF)) }
    static func be64(_ value: UInt64) -> [UInt8] { be32(UInt32(value >> 32)) + be32(UInt32(value & 0xFFFF_FFFF)) }

    static func udp(_ payload: [UInt8], source: Int, destination: Int) -> [UInt8] {
        be16(source) + be16(destination) + be16(8 + payload.count) + [0, 0] + payload
    }

    static func ipv4(_ udp: [UInt8], fragmentField: Int = 0) -> [UInt8] {
        [0x45, 0] + be16(20 + udp.count) + [0, 1] + be16(fragmentField) + [64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1] + udp
    }

    static func ipv6(_ udp: [UInt8], hopByHop: Bool = false) -> [UInt8] {
        let extensionHeader: [UInt8] = hopByHop ? [17, 0, 1, 4, 0, 0, 0, 0] : []
        return [0x60, 0, 0, 0] + be16(udp.count + extensionHeader.count) + [hopByHop ? 0 : 17, 64]
            + [UInt8](repeating: 0, count: 15) + [1] + [UInt8](repeating: 0, count: 15) + [1] + extensionHeader + udp
    }

    static func ethernet(_ ip: [UInt8], etherType: Int) -> [UInt8] {
        [UInt8](repeating: 0, count: 12) + be16(etherType) + ip
    }

    static func file(linkType: UInt32, packets: [[UInt8]], littleEndian: Bool = true, nanoseconds: Bool = false)
        -> [UInt8] {
        func u32(_ value: UInt32) -> [UInt8] { littleEndian ? be32(value).reversed() : be32(value) }
        func u16(_ value: Int) -> [UInt8] { littleEndian ? be16(value).reversed() : be16(value) }
        var bytes = u32(nanoseconds ? 0xA1B2_3C4D : 0xA1B2_C3D4) + u16(2) + u16(4) + u32(0) + u32(0)
            + u32(262_144) + u32(linkType)
        for (index, packet) in packets.enumerated() {
            bytes += u32(1_700_000_000) + u32(UInt32(index)) + u32(UInt32(packet.count)) + u32(UInt32(packet.count))
            bytes += packet
        }
        return bytes
    }

    /// A GUE header as wire-format.md draws it.
    static func gue(proto: UInt8, t: Bool, source: UInt64?, destination: UInt64?, hlen: Int? = nil,
                    extraFlags: UInt16 = 0) -> [UInt8] {
        let flags = (t ? GUEView.flagT : 0) | (source != nil ? GUEView.flagS : 0)
            | (destination != nil ? GUEView.flagD : 0) | extraFlags
        let words = hlen ?? ((t ? 1 : 0) + (source != nil ? 2 : 0) + (destination != nil ? 2 : 0))
        var bytes: [UInt8] = [UInt8(words), proto] + be16(Int(flags))
        if t { bytes += [1, 6, 0, 0] }
        if let source { bytes += be64(source) }
        if let destination { bytes += be64(destination) }
        return bytes
    }

    static func record(type: UInt8, epoch: Int = 0, version: Int = 0xFEFD, body: [UInt8]) -> [UInt8] {
        [type] + be16(version) + be16(epoch) + [0, 0, 0, 0, 0, 1] + be16(body.count) + body
    }

    /// A TCP segment with its checksum over the address-free pseudo-header.
    static func tcp(source: Int, destination: Int, sequence: UInt32, flags: UInt8, payload: [UInt8]) -> [UInt8] {
        var segment = be16(source) + be16(destination) + be32(sequence) + be32(0) + [0x50, flags] + be16(65535)
            + [0, 0, 0, 0] + payload
        let sum = TCPSegmentView.addressFreeChecksumSum(segment)
        let checksum = ~sum
        segment[16] = UInt8(checksum >> 8)
        segment[17] = UInt8(checksum & 0xFF)
        return segment
    }
}

/// One broken datagram for the audit, named in the test log by what is wrong with it.
struct ViolationCase: Sendable, CustomTestStringConvertible {
    var what: String
    var payload: [UInt8]
    init(_ what: String, _ payload: [UInt8]) { (self.what, self.payload) = (what, payload) }
    var testDescription: String { what }
}

@Suite("pcap reader and wire audit")
struct PcapReaderTests {
    typealias B = PcapBuilder

    @Test("EN10MB, LINUX_SLL, LINUX_SLL2, raw and loopback link types, either byte order, IPv4 and IPv6")
    func linkTypes() throws {
        let payload: [UInt8] = Array(0..<100)
        let v4 = B.ipv4(B.udp(payload, source: 5000, destination: 6080))
        let v6 = B.ipv6(B.udp(payload, source: 6080, destination: 5000), hopByHop: true)
        let sllHeader = [UInt8](repeating: 0, count: 14)
        let variants: [(UInt32, [[UInt8]])] = [
            (PcapFile.linkTypeEthernet, [B.ethernet(v4, etherType: 0x0800), B.ethernet(v6, etherType: 0x86DD),
                                         B.ethernet([0, 1, 2], etherType: 0x0806)]),
            (PcapFile.linkTypeLinuxSLL, [sllHeader + B.be16(0x0800) + v4, sllHeader + B.be16(0x86DD) + v6]),
            (PcapFile.linkTypeLinuxSLL2, [B.be16(0x0800) + [UInt8](repeating: 0, count: 18) + v4,
                                          B.be16(0x86DD) + [UInt8](repeating: 0, count: 18) + v6]),
            (PcapFile.linkTypeRaw, [v4, v6]),
            (PcapFile.linkTypeNull, [[2, 0, 0, 0] + v4, [10, 0, 0, 0] + v6]),
        ]
        for (linkType, packets) in variants {
            for littleEndian in [true, false] {
                let file = try PcapFile(bytes: B.file(linkType: linkType, packets: packets, littleEndian: littleEndian,
                                                      nanoseconds: !littleEndian))
                #expect(file.linkType == linkType)
                let datagrams = try file.udpDatagrams()
                try #require(datagrams.count == 2, "link type \(linkType)")
                #expect(datagrams[0].payload == payload)
                #expect(!datagrams[0].isIPv6 && datagrams[1].isIPv6)
                #expect(datagrams[0].source == "127.0.0.1" && datagrams[1].destination == "0:0:0:0:0:0:0:1")
                #expect(datagrams[0].sourcePort == 5000 && datagrams[0].destinationPort == 6080)
                #expect(datagrams[0].ipPacketLength == 20 + 8 + 100)
                #expect(datagrams[1].ipPacketLength == 40 + 8 + 8 + 100)
                #expect(datagrams[1].payload == payload)
            }
        }
    }

    @Test("broken files are rejected with a reason, never half-read")
    func brokenFiles() throws {
        let good = B.file(linkType: 1, packets: [B.ethernet(B.ipv4(B.udp([1], source: 1, destination: 2)),
                                                            etherType: 0x0800)])
        #expect(throws: PcapError.self) { try PcapFile(bytes: Array(good.dropLast())) }
        #expect(throws: PcapError.self) { try PcapFile(bytes: [0, 1, 2, 3] + good.dropFirst(4)) }
        #expect(throws: PcapError.self) { try PcapFile(bytes: Array(good.prefix(10))) }
        var cut = good
        cut[24 + 12] = cut[24 + 8] &+ 1  // original length larger than captured
        #expect(throws: PcapError.packetCutBySnaplen(index: 0, captured: Int(good[24 + 8]), original: Int(cut[24 + 12]))) {
            try PcapFile(bytes: cut)
        }
        let lying = B.ipv4(B.udp([1, 2, 3], source: 1, destination: 2))
        var wrongUDPLength = lying
        wrongUDPLength[20 + 5] = 200
        for packet in [wrongUDPLength, Array(lying.prefix(24))] {
            let file = try PcapFile(bytes: B.file(linkType: PcapFile.linkTypeRaw, packets: [packet]))
            #expect(throws: PcapError.self) { try file.udpDatagrams() }
        }
        let fragment = try PcapFile(bytes: B.file(linkType: PcapFile.linkTypeRaw,
                                                  packets: [B.ipv4(B.udp([1], source: 1, destination: 2),
                                                                   fragmentField: 0x2000)]))
        #expect(try fragment.udpDatagrams().first?.isFragment == true)
    }

    func datagram(_ payload: [UInt8], fromClient: Bool, ipLength: Int? = nil, index: Int = 0) -> CapturedDatagram {
        CapturedDatagram(index: index, timestamp: 0, isIPv6: false, source: "127.0.0.1",
                         sourcePort: fromClient ? 40000 : 6080, destination: "127.0.0.1",
                         destinationPort: fromClient ? 6080 : 40000, ipPacketLength: ipLength ?? payload.count + 28,
                         isFragment: false, payload: payload)
    }

    @Test("a well-formed secure exchange passes the audit")
    func secureExchangePasses() {
        var audit = WireAudit(mode: .secure, listenerPort: 6080)
        let hello = B.record(type: 22, version: 0xFEFF, body: [1] + [UInt8](repeating: 7, count: 60))
        audit.check(datagram(B.gue(proto: 59, t: true, source: 0xC1, destination: nil) + hello, fromClient: true))
        let flight = B.record(type: 22, body: [2, 0, 0, 1]) + B.record(type: 22, body: [11, 0, 0, 1])
        audit.check(datagram(B.gue(proto: 59, t: true, source: 0x51, destination: 0xC1) + flight, fromClient: false))
        let finished = B.record(type: 22, body: [16]) + B.record(type: 20, body: [1])
            + B.record(type: 22, epoch: 1, body: [UInt8](repeating: 3, count: 40))
        audit.check(datagram(B.gue(proto: 59, t: true, source: 0xC1, destination: 0x51) + finished, fromClient: true))
        let data = B.record(type: 23, epoch: 1, body: [UInt8](repeating: 9, count: 1400))
        audit.check(datagram(B.gue(proto: 59, t: true, source: nil, destination: 0x51) + data, fromClient: true,
                             ipLength: 1500))
        audit.check(datagram(B.gue(proto: 59, t: true, source: nil, destination: 0xC1)
                             + B.record(type: 21, epoch: 1, body: [1, 2, 3]), fromClient: false))
        #expect(audit.violations.isEmpty, "\(audit.violations)")
        #expect(audit.datagrams == 5 && audit.datagramsWithS == 3 && audit.applicationDataBytes == 1400)
    }

    @Test("each rule of the wire format catches its violation", arguments: [
        ViolationCase("S missing on a handshake record", B.gue(proto: 59, t: true, source: nil, destination: 0x51)
            + B.record(type: 22, epoch: 1, body: [20])),
        ViolationCase("S on application data", B.gue(proto: 59, t: true, source: 0xC1, destination: 0x51)
            + B.record(type: 23, epoch: 1, body: [1])),
        ViolationCase("Hlen disagreeing with the flags", B.gue(proto: 59, t: true, source: nil, destination: 0x51, hlen: 5)
            + [UInt8](repeating: 0, count: 8) + B.record(type: 23, epoch: 1, body: [1])),
        ViolationCase("a trailing byte after the records", B.gue(proto: 59, t: true, source: nil, destination: 0x51)
            + B.record(type: 23, epoch: 1, body: [1]) + [0]),
        ViolationCase("a record overrunning the datagram", B.gue(proto: 59, t: true, source: nil, destination: 0x51)
            + Array(B.record(type: 23, epoch: 1, body: [1, 2]).dropLast())),
        ViolationCase("cleartext proto", B.gue(proto: 6, t: true, source: nil, destination: 0x51)
            + B.record(type: 23, epoch: 1, body: [1])),
        ViolationCase("T clear", B.gue(proto: 59, t: false, source: nil, destination: 0x51) + B.record(type: 23, epoch: 1, body: [1])),
        ViolationCase("an unknown flag", B.gue(proto: 59, t: true, source: nil, destination: 0x51, extraFlags: 0x0001)
            + B.record(type: 23, epoch: 1, body: [1])),
        ViolationCase("a D the peer never sent", B.gue(proto: 59, t: true, source: nil, destination: 0x99)
            + B.record(type: 23, epoch: 1, body: [1])),
        ViolationCase("a TLS 1.2 record version", B.gue(proto: 59, t: true, source: nil, destination: 0x51)
            + B.record(type: 23, epoch: 1, version: 0x0303, body: [1])),
        ViolationCase("two data records in one datagram", B.gue(proto: 59, t: true, source: nil, destination: 0x51)
            + B.record(type: 23, epoch: 1, body: [1]) + B.record(type: 23, epoch: 1, body: [2])),
        ViolationCase("a record type outside 20..23", B.gue(proto: 59, t: true, source: nil, destination: 0x51)
            + B.record(type: 24, epoch: 1, body: [1])),
        ViolationCase("neither S nor D", B.gue(proto: 59, t: true, source: nil, destination: nil)
            + B.record(type: 23, epoch: 1, body: [1])),
    ])
    func secureViolations(_ violation: ViolationCase) {
        let (what, payload) = (violation.what, violation.payload)
        var audit = WireAudit(mode: .secure, listenerPort: 6080)
        let hello = B.record(type: 22, body: [1, 0, 0, 0])
        audit.check(datagram(B.gue(proto: 59, t: true, source: 0xC1, destination: nil) + hello, fromClient: true))
        audit.check(datagram(B.gue(proto: 59, t: true, source: 0x51, destination: 0xC1) + hello, fromClient: false))
        #expect(audit.violations.isEmpty, "\(audit.violations)")
        audit.check(datagram(payload, fromClient: true, index: 9))
        #expect(audit.violationCount >= 1, "\(what) went unnoticed")
        #expect(audit.violations.allSatisfy { $0.hasPrefix("packet 9:") }, "\(audit.violations)")
    }

    @Test("oversized packets, listener datagrams without D and a first client datagram that is no ClientHello")
    func moreSecureViolations() {
        var audit = WireAudit(mode: .secure, listenerPort: 6080)
        audit.check(datagram(B.gue(proto: 59, t: true, source: 0xC1, destination: nil)
                             + B.record(type: 22, body: [2, 0]), fromClient: true))
        #expect(audit.violationCount == 1)
        audit.check(datagram(B.gue(proto: 59, t: true, source: 0x51, destination: nil)
                             + B.record(type: 22, body: [2, 0]), fromClient: false))
        #expect(audit.violationCount == 2)
        audit.check(datagram(B.gue(proto: 59, t: true, source: 0xC1, destination: 0x51)
                             + B.record(type: 22, body: [2, 0]), fromClient: true, ipLength: 1501))
        #expect(audit.violationCount == 3)
    }

    @Test("plain mode: checksum over the address-free pseudo-header, S exactly on SYN, stream reassembly")
    func plainMode() {
        var audit = WireAudit(mode: .plain, listenerPort: 6080)
        let syn = B.tcp(source: 1234, destination: 6080, sequence: 1000, flags: 0x02, payload: [])
        audit.check(datagram(B.gue(proto: 6, t: false, source: 0xC1, destination: nil) + syn, fromClient: true))
        let synAck = B.tcp(source: 6080, destination: 1234, sequence: 5000, flags: 0x12, payload: [])
        audit.check(datagram(B.gue(proto: 6, t: false, source: 0x51, destination: 0xC1) + synAck, fromClient: false))
        // Out of order, with a retransmitted overlap: the stream still comes out right.
        let second = B.tcp(source: 1234, destination: 6080, sequence: 1004, flags: 0x10, payload: [4, 5, 6])
        let first = B.tcp(source: 1234, destination: 6080, sequence: 1001, flags: 0x10, payload: [1, 2, 3, 4])
        for segment in [second, first, first] {
            audit.check(datagram(B.gue(proto: 6, t: false, source: nil, destination: 0x51) + segment, fromClient: true))
        }
        #expect(audit.violations.isEmpty, "\(audit.violations)")
        #expect(audit.synSegments == 2)
        #expect(audit.reassembledClientStream() == [1, 2, 3, 4, 5, 6])

        var corrupted = first
        corrupted[corrupted.count - 1] ^= 0x40
        audit.check(datagram(B.gue(proto: 6, t: false, source: nil, destination: 0x51) + corrupted, fromClient: true))
        #expect(audit.violationCount == 1)
        audit.check(datagram(B.gue(proto: 6, t: false, source: 0xC1, destination: 0x51) + first, fromClient: true))
        #expect(audit.violationCount == 2, "S on a segment without SYN")
        audit.check(datagram(B.gue(proto: 59, t: true, source: nil, destination: 0x51) + first, fromClient: true))
        #expect(audit.violationCount >= 3, "secure framing in plain mode")
    }

    @Test("the cleartext detector finds file bytes at any alignment and nothing in unrelated bytes")
    func cleartextDetector() {
        var generator = SeededGenerator(seed: 5)
        let file = (0..<100_000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let detector = CleartextDetector(file: file)
        for start in [0, 1, 17, 5000, 99_953] {
            let payload = [UInt8](repeating: 0xAA, count: 13) + file[start..<start + 47] + [1, 2]
            #expect(!detector.windows(in: payload[...]).isEmpty, "file bytes at \(start)")
        }
        let unrelated = (0..<200_000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        #expect(detector.windows(in: unrelated[...]).isEmpty)
        #expect(detector.windows(in: file[0..<31]).isEmpty, "shorter than a window")
    }

    @Test("a GSO run seen whole on lo is cut into its datagrams; a handshake datagram packing records stays whole")
    func segmentationRuns() {
        let data = { (fill: UInt8) in
            B.gue(proto: 59, t: true, source: nil, destination: 0x51)
                + B.record(type: 23, body: [UInt8](repeating: fill, count: 100))
        }
        let run = datagram(data(1) + data(2) + Array(data(3).prefix(60)), fromClient: true)
        let pieces = run.segmentationRun(secure: true)
        #expect(pieces.map(\.payload.count) == [data(1).count, data(1).count, 60])
        #expect(pieces.map(\.ipPacketLength) == pieces.map { $0.payload.count + 28 })
        #expect(pieces[1].payload == data(2))

        let flight = B.gue(proto: 59, t: true, source: 0x51, destination: 0xC1)
            + B.record(type: 22, body: [2, 0, 0, 1]) + B.record(type: 22, body: [11, 0, 0, 1])
        #expect(datagram(flight, fromClient: false).segmentationRun(secure: true).count == 1)

        // A padded ClientHello is one datagram: its zeros are padding, not the next datagram of a run.
        let hello = B.gue(proto: 59, t: true, source: 0xC1, destination: nil) + B.record(type: 22, body: [1, 0, 0, 1])
        let padded = hello + [UInt8](repeating: 0, count: 1200 - hello.count)
        #expect(datagram(padded, fromClient: true).segmentationRun(secure: true).count == 1)
    }
}
