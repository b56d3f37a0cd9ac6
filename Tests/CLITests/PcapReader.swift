import Foundation

/// What went wrong reading a capture file; the test reports it rather than trusting a partial parse.
enum PcapError: Error, CustomStringConvertible, Equatable {
    case truncated(String)
    case badMagic(UInt32)
    case unsupportedLinkType(UInt32)
    case packetCutBySnaplen(index: Int, captured: Int, original: Int)
    case malformedPacket(index: Int, reason: String)

    var description: String {
        switch self {
        case .truncated(let what): "pcap file ends inside \(what)"
        case .badMagic(let magic): "not a classic pcap file (magic 0x\(String(magic, radix: 16)))"
        case .unsupportedLinkType(let type): "unsupported pcap link type \(type)"
        case .packetCutBySnaplen(let index, let captured, let original):
            "packet \(index) was cut by the snapshot length (\(captured) of \(original) bytes): capture with -s 0"
        case .malformedPacket(let index, let reason): "packet \(index): \(reason)"
        }
    }
}

/// Bounds-checked big/little-endian reads over a byte array: a capture file is input like any other.
struct ByteCursor {
    let bytes: [UInt8]
    var offset: Int
    let end: Int

    init(_ bytes: [UInt8], from offset: Int = 0, to end: Int? = nil) {
        self.bytes = bytes
        self.offset = offset
        self.end = min(end ?? bytes.count, bytes.count)
    }

    var remaining: Int { max(0, end - offset) }

    func has(_ count: Int, at position: Int) -> Bool {
        position >= 0 && count >= 0 && position <= end - count
    }

    func u8(at position: Int) -> UInt8? {
        has(1, at: position) ? bytes[position] : nil
    }

    func u16(at position: Int, bigEndian: Bool = true) -> UInt16? {
        guard has(2, at: position) else { return nil }
        let a = UInt16(bytes[position]), b = UInt16(bytes[position + 1])
        return bigEndian ? a << 8 | b : b << 8 | a
    }

    func u32(at position: Int, bigEndian: Bool = true) -> UInt32? {
        guard let high = u16(at: bigEndian ? position : position + 2, bigEndian: bigEndian),
              let low = u16(at: bigEndian ? position + 2 : position, bigEndian: bigEndian) else { return nil }
        return UInt32(high) << 16 | UInt32(low)
    }

    func u64(at position: Int) -> UInt64? {
        guard let high = u32(at: position), let low = u32(at: position + 4) else { return nil }
        return UInt64(high) << 32 | UInt64(low)
    }
}

/// One UDP datagram as it crossed the interface.
struct CapturedDatagram: Equatable {
    var index: Int
    var timestamp: Double
    var isIPv6: Bool
    var source: String
    var sourcePort: UInt16
    var destination: String
    var destinationPort: UInt16
    /// The whole IP packet (IP header, any extension headers, UDP header, payload): what the path MTU limits.
    var ipPacketLength: Int
    var isFragment: Bool
    var payload: [UInt8]
}

/// A classic (libpcap) capture file: either byte order, micro- or nanosecond timestamps.
struct PcapFile {
    struct Packet {
        var timestamp: Double
        var data: [UInt8]
    }

    static let linkTypeNull: UInt32 = 0
    static let linkTypeEthernet: UInt32 = 1
    static let linkTypeRaw: UInt32 = 101
    static let linkTypeLoop: UInt32 = 108
    static let linkTypeLinuxSLL: UInt32 = 113
    static let linkTypeIPv4: UInt32 = 228
    static let linkTypeIPv6: UInt32 = 229
    static let linkTypeLinuxSLL2: UInt32 = 276

    let linkType: UInt32
    let packets: [Packet]

    init(contentsOf url: URL) throws {
        try self.init(bytes: [UInt8](try Data(contentsOf: url)))
    }

    init(bytes: [UInt8]) throws {
        let cursor = ByteCursor(bytes)
        guard let magic = cursor.u32(at: 0, bigEndian: true) else { throw PcapError.truncated("the file header") }
        let bigEndian: Bool
        let nanoseconds: Bool
        switch magic {
        case 0xA1B2_C3D4: (bigEndian, nanoseconds) = (true, false)
        case 0xD4C3_B2A1: (bigEndian, nanoseconds) = (false, false)
        case 0xA1B2_3C4D: (bigEndian, nanoseconds) = (true, true)
        case 0x4D3C_B2A1: (bigEndian, nanoseconds) = (false, true)
        default: throw PcapError.badMagic(magic)
        }
        guard let rawLinkType = cursor.u32(at: 20, bigEndian: bigEndian) else {
            throw PcapError.truncated("the file header")
        }
        // The upper bits may carry an FCS length; the link type is the low 16.
        linkType = rawLinkType & 0xFFFF
        var packets: [Packet] = []
        var position = 24
        while position < bytes.count {
            guard let seconds = cursor.u32(at: position, bigEndian: bigEndian),
                  let fraction = cursor.u32(at: position + 4, bigEndian: bigEndian),
                  let captured = cursor.u32(at: position + 8, bigEndian: bigEndian),
                  let original = cursor.u32(at: position + 12, bigEndian: bigEndian) else {
                throw PcapError.truncated("the header of packet \(packets.count)")
            }
            let start = position + 16
            guard cursor.has(Int(captured), at: start) else {
                throw PcapError.truncated("packet \(packets.count)")
            }
            if captured != original {
                throw PcapError.packetCutBySnaplen(index: packets.count, captured: Int(captured), original: Int(original))
            }
            let timestamp = Double(seconds) + Double(fraction) / (nanoseconds ? 1e9 : 1e6)
            packets.append(Packet(timestamp: timestamp, data: Array(bytes[start..<start + Int(captured)])))
            position = start + Int(captured)
        }
        self.packets = packets
    }

    /// Every UDP datagram in the file, in capture order; other packets (ARP, TCP, ICMP) are skipped.
    func udpDatagrams() throws -> [CapturedDatagram] {
        var result: [CapturedDatagram] = []
        for (index, packet) in packets.enumerated() {
            guard let network = try networkLayer(of: packet.data, index: index) else { continue }
            if let datagram = try Self.parseIP(packet.data, from: network.offset, version: network.version,
                                               index: index, timestamp: packet.timestamp) {
                result.append(datagram)
            }
        }
        return result
    }

    /// Where the IP header starts, and which IP version the link layer says it is (nil: not IP).
    private func networkLayer(of data: [UInt8], index: Int) throws -> (offset: Int, version: Int)? {
        let cursor = ByteCursor(data)
        func byEtherType(_ type: UInt16?, offset: Int) throws -> (offset: Int, version: Int)? {
            guard let type else { throw PcapError.malformedPacket(index: index, reason: "link header cut short") }
            switch type {
            case 0x0800: return (offset, 4)
            case 0x86DD: return (offset, 6)
            default: return nil
            }
        }
        switch linkType {
        case Self.linkTypeEthernet:
            var typeOffset = 12
            // 802.1Q / QinQ tags sit between the MAC addresses and the EtherType.
            while let type = cursor.u16(at: typeOffset), type == 0x8100 || type == 0x88A8 {
                typeOffset += 4
            }
            return try byEtherType(cursor.u16(at: typeOffset), offset: typeOffset + 2)
        case Self.linkTypeLinuxSLL:
            return try byEtherType(cursor.u16(at: 14), offset: 16)
        case Self.linkTypeLinuxSLL2:
            return try byEtherType(cursor.u16(at: 0), offset: 20)
        case Self.linkTypeNull, Self.linkTypeLoop:
            // The address family is in host order for NULL and network order for LOOP; either way
            // the IP header's own version nibble is the reliable answer.
            guard let first = cursor.u8(at: 4) else {
                throw PcapError.malformedPacket(index: index, reason: "loopback header cut short")
            }
            return (4, Int(first >> 4))
        case Self.linkTypeRaw, 12, 14:
            guard let first = cursor.u8(at: 0) else { throw PcapError.malformedPacket(index: index, reason: "empty") }
            return (0, Int(first >> 4))
        case Self.linkTypeIPv4: return (0, 4)
        case Self.linkTypeIPv6: return (0, 6)
        default: throw PcapError.unsupportedLinkType(linkType)
        }
    }

    static func parseIP(_ data: [UInt8], from start: Int, version: Int, index: Int,
                        timestamp: Double) throws -> CapturedDatagram? {
        func bad(_ reason: String) -> PcapError { .malformedPacket(index: index, reason: reason) }
        let cursor = ByteCursor(data)
        var isFragment = false
        let udpStart: Int
        let ipEnd: Int
        let source: String
        let destination: String
        switch version {
        case 4:
            guard let versionIHL = cursor.u8(at: start), versionIHL >> 4 == 4 else { throw bad("not IPv4") }
            let headerLength = Int(versionIHL & 0x0F) * 4
            guard headerLength >= 20, cursor.has(headerLength, at: start),
                  let totalLength = cursor.u16(at: start + 2), let fragment = cursor.u16(at: start + 6),
                  let proto = cursor.u8(at: start + 9) else { throw bad("IPv4 header cut short") }
            guard Int(totalLength) >= headerLength, cursor.has(Int(totalLength), at: start) else {
                throw bad("IPv4 total length \(totalLength) does not fit the frame")
            }
            guard proto == 17 else { return nil }
            // MF set or a non-zero offset: part of a fragmented datagram.
            isFragment = fragment & 0x3FFF != 0
            udpStart = start + headerLength
            ipEnd = start + Int(totalLength)
            source = data[start + 12..<start + 16].map(String.init).joined(separator: ".")
            destination = data[start + 16..<start + 20].map(String.init).joined(separator: ".")
        case 6:
            guard let first = cursor.u8(at: start), first >> 4 == 6,
                  let payloadLength = cursor.u16(at: start + 4), var next = cursor.u8(at: start + 6),
                  cursor.has(40, at: start) else { throw bad("IPv6 header cut short") }
            ipEnd = start + 40 + Int(payloadLength)
            guard cursor.has(40 + Int(payloadLength), at: start) else {
                throw bad("IPv6 payload length \(payloadLength) does not fit the frame")
            }
            var position = start + 40
            // Walk the extension headers to the transport.
            while next != 17 {
                switch next {
                case 0, 43, 60:
                    guard let following = cursor.u8(at: position), let length = cursor.u8(at: position + 1) else {
                        throw bad("IPv6 extension header cut short")
                    }
                    next = following
                    position += (Int(length) + 1) * 8
                case 44:
                    guard let following = cursor.u8(at: position) else { throw bad("fragment header cut short") }
                    isFragment = true
                    next = following
                    position += 8
                default:
                    return nil
                }
                guard position <= ipEnd else { throw bad("IPv6 extension headers overrun the packet") }
            }
            udpStart = position
            source = Self.ipv6Text(Array(data[start + 8..<start + 24]))
            destination = Self.ipv6Text(Array(data[start + 24..<start + 40]))
        default:
            return nil
        }
        let ip = ByteCursor(data, to: ipEnd)
        guard let sourcePort = ip.u16(at: udpStart), let destinationPort = ip.u16(at: udpStart + 2),
              let udpLength = ip.u16(at: udpStart + 4) else { throw bad("UDP header cut short") }
        if isFragment {
            // Only the first fragment has the whole UDP header; either way the datagram is not whole here.
            return CapturedDatagram(index: index, timestamp: timestamp, isIPv6: version == 6, source: source,
                                    sourcePort: sourcePort, destination: destination,
                                    destinationPort: destinationPort, ipPacketLength: ipEnd - start,
                                    isFragment: true, payload: [])
        }
        guard Int(udpLength) >= 8, udpStart + Int(udpLength) == ipEnd else {
            throw bad("UDP length \(udpLength) disagrees with the IP length")
        }
        return CapturedDatagram(index: index, timestamp: timestamp, isIPv6: version == 6, source: source,
                                sourcePort: sourcePort, destination: destination, destinationPort: destinationPort,
                                ipPacketLength: ipEnd - start, isFragment: false,
                                payload: Array(data[udpStart + 8..<ipEnd]))
    }

    static func ipv6Text(_ bytes: [UInt8]) -> String {
        stride(from: 0, to: 16, by: 2).map { String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16) }
            .joined(separator: ":")
    }
}

extension CapturedDatagram {
    /// UDP GSO on lo: the capture tap sees a run of equal-sized datagrams (the last may be
    /// shorter) as one packet, before the kernel cuts it at the segment size into the datagrams the
    /// receiver gets. The capture does not record that size, so it is read off the run's first
    /// datagram: its GUE header and records (secure), or up to where the same GUE header
    /// starts again (plain). A run built any other way falls apart into pieces the audit rejects.
    func segmentationRun(secure: Bool) -> [CapturedDatagram] {
        guard !isFragment, let segment = firstDatagramLength(secure: secure),
              segment > 0, segment < payload.count else { return [self] }
        let headers = ipPacketLength - payload.count
        return stride(from: 0, to: payload.count, by: segment).map { start in
            var piece = self
            piece.payload = Array(payload[start..<min(start + segment, payload.count)])
            piece.ipPacketLength = headers + piece.payload.count
            return piece
        }
    }

    private func firstDatagramLength(secure: Bool) -> Int? {
        guard payload.count >= 4 else { return nil }
        let headerLength = 4 + 4 * Int(payload[0] & 0x1F)
        if secure {
            // Its records (a handshake datagram may pack several), up to where a GUE header
            // starts the next datagram: a record begins with type 20...23 and version byte 0xFE.
            var end = headerLength
            while end + 13 <= payload.count, (20...23).contains(payload[end]), payload[end + 1] == 0xFE {
                end += 13 + (Int(payload[end + 11]) << 8 | Int(payload[end + 12]))
            }
            // Zeros after the records are a padded ClientHello's padding, not a second datagram.
            if end < payload.count, payload[end...].allSatisfy({ $0 == 0 }) { return nil }
            return end > headerLength ? end : nil
        }
        // Plain: the next datagram of the run repeats this one's GUE header (same flags and SIDs).
        let header = payload[0..<headerLength]
        var candidate = headerLength + 20
        while candidate + headerLength <= payload.count {
            if payload[candidate..<(candidate + headerLength)] == header { return candidate }
            candidate += 1
        }
        return nil
    }
}
