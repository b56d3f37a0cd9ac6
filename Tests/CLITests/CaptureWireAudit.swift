import Foundation

/// The GUE variant 0 header as the wire format describes it, read independently of TOUWire so the
/// capture test checks the bytes against the document rather than against our own codec.
struct GUEView {
    static let flagT: UInt16 = 0x0200
    static let flagS: UInt16 = 0x0100
    static let flagD: UInt16 = 0x0080

    var variant: UInt8
    var control: Bool
    var hlen: Int
    var proto: UInt8
    var flags: UInt16
    var transformType: UInt8?
    var transformPayloadType: UInt8?
    var transformInfo: UInt16?
    var sourceSID: UInt64?
    var destinationSID: UInt64?
    /// Bytes after the 4 + 4*Hlen header bytes.
    var payload: ArraySlice<UInt8>

    var hasT: Bool { flags & Self.flagT != 0 }
    var hasS: Bool { flags & Self.flagS != 0 }
    var hasD: Bool { flags & Self.flagD != 0 }
    var expectedHlen: Int { (hasT ? 1 : 0) + (hasS ? 2 : 0) + (hasD ? 2 : 0) }

    /// Reads the fields the flags announce; nil with a reason when the datagram is too short for them.
    static func parse(_ bytes: [UInt8]) -> (view: GUEView?, problem: String?) {
        let cursor = ByteCursor(bytes)
        guard let first = cursor.u8(at: 0), let proto = cursor.u8(at: 1), let flags = cursor.u16(at: 2) else {
            return (nil, "shorter than the 4-byte GUE header (\(bytes.count) bytes)")
        }
        var view = GUEView(variant: first >> 6, control: first & 0x20 != 0, hlen: Int(first & 0x1F), proto: proto,
                           flags: flags, payload: [])
        var position = 4
        if view.hasT {
            guard let type = cursor.u8(at: position), let payloadType = cursor.u8(at: position + 1),
                  let info = cursor.u16(at: position + 2) else { return (nil, "transform field cut short") }
            (view.transformType, view.transformPayloadType, view.transformInfo) = (type, payloadType, info)
            position += 4
        }
        if view.hasS {
            guard let sid = cursor.u64(at: position) else { return (nil, "source session ID cut short") }
            view.sourceSID = sid
            position += 8
        }
        if view.hasD {
            guard let sid = cursor.u64(at: position) else { return (nil, "destination session ID cut short") }
            view.destinationSID = sid
            position += 8
        }
        // The payload starts where Hlen says, which the audit separately requires to match the flags.
        let headerEnd = 4 + 4 * view.hlen
        guard headerEnd <= bytes.count else { return (nil, "shorter than 4 + 4*Hlen (\(headerEnd)) bytes") }
        view.payload = bytes[headerEnd...]
        return (view, nil)
    }
}

/// One DTLS record header plus its body, found by tiling a datagram's payload.
struct DTLSRecordView {
    var type: UInt8
    var version: UInt16
    var epoch: UInt16
    var sequence: UInt64
    var body: ArraySlice<UInt8>

    /// Handshake record whose first message is a ClientHello (msg_type 1).
    var isClientHello: Bool { type == 22 && epoch == 0 && body.first == 1 }

    /// A ClientHello's cookie is empty (handshake header 12, version 2, random 32, session id 1 + n).
    var isCookielessClientHello: Bool {
        guard isClientHello, body.count > 12 + 2 + 32 else { return false }
        let sessionIDLength = Int(body[body.startIndex + 46])
        let cookieAt = body.startIndex + 47 + sessionIDLength
        return cookieAt < body.endIndex && body[cookieAt] == 0
    }

    /// Splits `payload` into whole records; a problem when the last one overruns or a header is cut.
    /// A zero where a record type would be starts padding, which runs to the end (`padding` bytes).
    static func tile(_ payload: ArraySlice<UInt8>) -> (records: [DTLSRecordView], padding: Int, problem: String?) {
        let bytes = Array(payload)
        let cursor = ByteCursor(bytes)
        var records: [DTLSRecordView] = []
        var position = 0
        if bytes.isEmpty { return ([], 0, "no DTLS record at all") }
        while position < bytes.count {
            if bytes[position] == 0 {
                let padding = bytes.count - position
                let zeros = bytes[position...].allSatisfy { $0 == 0 }
                return (records, padding, zeros ? nil : "padding of \(padding) bytes that are not all zero")
            }
            guard let type = cursor.u8(at: position), let version = cursor.u16(at: position + 1),
                  let epoch = cursor.u16(at: position + 3), let sequenceHigh = cursor.u16(at: position + 5),
                  let sequenceLow = cursor.u32(at: position + 7), let length = cursor.u16(at: position + 11) else {
                return (records, 0, "record \(records.count) header cut short (\(bytes.count - position) bytes left)")
            }
            let bodyStart = position + 13
            guard cursor.has(Int(length), at: bodyStart) else {
                return (records, 0, "record \(records.count) length \(length) overruns the datagram")
            }
            records.append(DTLSRecordView(type: type, version: version, epoch: epoch,
                                          sequence: UInt64(sequenceHigh) << 32 | UInt64(sequenceLow),
                                          body: bytes[bodyStart..<bodyStart + Int(length)]))
            position = bodyStart + Int(length)
        }
        return (records, 0, nil)
    }
}

/// Finds stretches of a known random file inside other bytes: every file window of 32 bytes that
/// starts at a multiple of 16 is indexed, so any 47 contiguous file bytes in a payload are caught.
struct CleartextDetector {
    static let window = 32
    static let stride = 16
    private let file: [UInt8]
    private var index: [UInt64: Int] = [:]

    init(file: [UInt8]) {
        self.file = file
        var start = 0
        while start + Self.window <= file.count {
            var key: UInt64 = 0
            for byte in file[start..<start + 8] { key = key << 8 | UInt64(byte) }
            if index[key] == nil { index[key] = start }
            start += Self.stride
        }
    }

    /// File offsets of the indexed windows found in `bytes`, each verified over all 32 bytes.
    func windows(in bytes: ArraySlice<UInt8>) -> [Int] {
        var found: [Int] = []
        var key: UInt64 = 0
        var position = bytes.startIndex
        // A rolling 8-byte key keeps this one dictionary probe per payload byte.
        while position < bytes.endIndex {
            key = key << 8 | UInt64(bytes[position])
            let start = position - 7
            if start >= bytes.startIndex, let fileOffset = index[key], start + Self.window <= bytes.endIndex,
               bytes[start..<start + Self.window].elementsEqual(file[fileOffset..<fileOffset + Self.window]) {
                found.append(fileOffset)
            }
            position += 1
        }
        return found
    }
}

/// A TCP header read from a plain-mode payload.
struct TCPSegmentView {
    var sourcePort: UInt16
    var destinationPort: UInt16
    var sequence: UInt32
    var acknowledgment: UInt32
    var headerLength: Int
    var flags: UInt8
    var payload: ArraySlice<UInt8>
    var checksumValid: Bool

    var syn: Bool { flags & 0x02 != 0 }
    var fin: Bool { flags & 0x01 != 0 }

    static func parse(_ bytes: ArraySlice<UInt8>) -> (segment: TCPSegmentView?, problem: String?) {
        let array = Array(bytes)
        let cursor = ByteCursor(array)
        guard let sourcePort = cursor.u16(at: 0), let destinationPort = cursor.u16(at: 2),
              let sequence = cursor.u32(at: 4), let acknowledgment = cursor.u32(at: 8),
              let offsetByte = cursor.u8(at: 12), let flags = cursor.u8(at: 13) else {
            return (nil, "TCP header cut short (\(array.count) bytes)")
        }
        let headerLength = Int(offsetByte >> 4) * 4
        guard headerLength >= 20, headerLength <= array.count else {
            return (nil, "TCP data offset \(headerLength) does not fit \(array.count) bytes")
        }
        return (TCPSegmentView(sourcePort: sourcePort, destinationPort: destinationPort, sequence: sequence,
                               acknowledgment: acknowledgment, headerLength: headerLength, flags: flags,
                               payload: array[headerLength...],
                               checksumValid: addressFreeChecksumSum(array) == 0xFFFF), nil)
    }

    /// The ones-complement sum over TOU's address-free pseudo-header (0.0.0.0, 0.0.0.0, 0, 6, length)
    /// and the segment including its checksum field: 0xFFFF when the checksum is right.
    static func addressFreeChecksumSum(_ segment: [UInt8]) -> UInt16 {
        var sum: UInt32 = 6 + UInt32(segment.count)
        var position = 0
        while position + 1 < segment.count {
            sum += UInt32(segment[position]) << 8 | UInt32(segment[position + 1])
            position += 2
        }
        if position < segment.count { sum += UInt32(segment[position]) << 8 }
        while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
        return UInt16(sum)
    }
}

/// Checks every captured datagram of one toudtls-cat session against wire-format.md and keeps
/// what the test asserts on afterwards.
struct WireAudit {
    enum Mode { case secure, plain }

    let mode: Mode
    let listenerPort: UInt16
    let pathMTU: Int
    private(set) var violations: [String] = []
    private(set) var violationCount = 0
    private(set) var datagrams = 0
    private(set) var largestIPPacket = 0
    private(set) var datagramsWithS = 0
    private(set) var recordTypeCounts: [UInt8: Int] = [:]
    private(set) var applicationDataBytes = 0
    /// Alert records (close_notify once the session is up) sent by each side, and each side's last record type.
    private(set) var alertsFromClient = 0
    private(set) var alertsFromListener = 0
    private(set) var lastRecordTypeFromClient: UInt8?
    private(set) var lastRecordTypeFromListener: UInt8?
    private(set) var clientEndpoints: Set<String> = []
    private(set) var clientSIDs: Set<UInt64> = []
    private(set) var listenerSIDs: Set<UInt64> = []
    private(set) var synSegments = 0
    /// Plain mode: client-to-listener TCP payloads by sequence number, for reassembly.
    private(set) var clientSegments: [(sequence: UInt32, payload: ArraySlice<UInt8>)] = []
    private(set) var clientInitialSequence: UInt32?

    init(mode: Mode, listenerPort: UInt16, pathMTU: Int = 1500) {
        self.mode = mode
        self.listenerPort = listenerPort
        self.pathMTU = pathMTU
    }

    private mutating func fail(_ datagram: CapturedDatagram, _ text: String) {
        violationCount += 1
        // Keep the report readable: the first few say enough.
        if violations.count < 20 { violations.append("packet \(datagram.index): \(text)") }
    }

    mutating func check(_ datagram: CapturedDatagram) {
        datagrams += 1
        largestIPPacket = max(largestIPPacket, datagram.ipPacketLength)
        if datagram.ipPacketLength > pathMTU {
            fail(datagram, "IP packet of \(datagram.ipPacketLength) bytes exceeds the path MTU \(pathMTU)")
        }
        if datagram.isFragment {
            fail(datagram, "IP fragment")
            return
        }
        let fromClient: Bool
        if datagram.destinationPort == listenerPort {
            fromClient = true
            clientEndpoints.insert("\(datagram.source) \(datagram.sourcePort)")
        } else if datagram.sourcePort == listenerPort {
            fromClient = false
        } else {
            fail(datagram, "neither port is the listener's \(listenerPort)")
            return
        }
        let (parsed, problem) = GUEView.parse(datagram.payload)
        guard let gue = parsed else {
            fail(datagram, problem ?? "unparseable GUE header")
            return
        }
        if gue.variant != 0 { fail(datagram, "GUE variant \(gue.variant)") }
        if gue.control { fail(datagram, "GUE C bit set") }
        if gue.flags & ~(GUEView.flagT | GUEView.flagS | GUEView.flagD) != 0 {
            fail(datagram, "flag bits other than T/S/D: 0x\(String(gue.flags, radix: 16))")
        }
        if gue.hlen != gue.expectedHlen { fail(datagram, "Hlen \(gue.hlen), but T+2S+2D = \(gue.expectedHlen)") }
        if !gue.hasS && !gue.hasD { fail(datagram, "neither S nor D") }
        if gue.sourceSID == 0 || gue.destinationSID == 0 { fail(datagram, "a session ID of zero") }
        if gue.hasS { datagramsWithS += 1 }
        checkSessionIDs(gue, fromClient: fromClient, datagram: datagram)
        switch mode {
        case .secure: checkSecure(gue, fromClient: fromClient, datagram: datagram)
        case .plain: checkPlain(gue, fromClient: fromClient, datagram: datagram)
        }
        if let sid = gue.sourceSID {
            if fromClient { clientSIDs.insert(sid) } else { listenerSIDs.insert(sid) }
        }
    }

    /// D always from the target and, once known, from the initiator; each D names a SID the peer sent as S.
    private mutating func checkSessionIDs(_ gue: GUEView, fromClient: Bool, datagram: CapturedDatagram) {
        if let destination = gue.destinationSID {
            let known = fromClient ? listenerSIDs : clientSIDs
            if !known.contains(destination) {
                fail(datagram, "D \(String(destination, radix: 16)) was never sent as S by the peer")
            }
        } else if !fromClient {
            fail(datagram, "listener datagram without D")
        }
    }

    private mutating func checkSecure(_ gue: GUEView, fromClient: Bool, datagram: CapturedDatagram) {
        guard gue.hasT else {
            fail(datagram, "secure mode datagram with T clear")
            return
        }
        if gue.proto != 59 { fail(datagram, "Proto \(gue.proto), expected 59") }
        if gue.transformType != 1 || gue.transformPayloadType != 6 || gue.transformInfo != 0 {
            fail(datagram, "transform \(gue.transformType ?? 0)/\(gue.transformPayloadType ?? 0)/"
                 + "\(gue.transformInfo ?? 0), expected 1/6/0")
        }
        let (records, padding, problem) = DTLSRecordView.tile(gue.payload)
        if let problem { fail(datagram, "payload does not tile into DTLS records: \(problem)") }
        // Only a ClientHello may be padded, and one without a cookie must be, to 1,200 bytes of UDP payload.
        let lonelyClientHello = records.count == 1 && records[0].isClientHello
        if padding > 0, !lonelyClientHello { fail(datagram, "\(padding) bytes of padding after records that are no ClientHello") }
        if fromClient, lonelyClientHello, records[0].isCookielessClientHello, datagram.payload.count < 1200 {
            fail(datagram, "a ClientHello without a cookie in \(datagram.payload.count) bytes, not padded to 1,200")
        }
        var needsS = false
        for record in records {
            recordTypeCounts[record.type, default: 0] += 1
            if ![20, 21, 22, 23].contains(record.type) { fail(datagram, "DTLS record type \(record.type)") }
            // OpenSSL writes DTLS 1.0 (0xfeff) as the record version of ClientHello and
            // HelloVerifyRequest before the version is agreed (RFC 6347 4.2.1); afterwards only 1.2.
            let versionOK = record.version == 0xFEFD || (record.epoch == 0 && record.version == 0xFEFF)
            if !versionOK { fail(datagram, "DTLS record version 0x\(String(record.version, radix: 16))") }
            if record.type == 20 || record.type == 22 || record.epoch == 0 { needsS = true }
            if fromClient { lastRecordTypeFromClient = record.type } else { lastRecordTypeFromListener = record.type }
            if record.type == 21 {
                if fromClient { alertsFromClient += 1 } else { alertsFromListener += 1 }
            }
            if record.type == 23 {
                applicationDataBytes += record.body.count
                if record.epoch == 0 { fail(datagram, "application data in epoch 0") }
            }
        }
        if needsS != gue.hasS {
            fail(datagram, "S is \(gue.hasS ? "set" : "clear") but the datagram \(needsS ? "carries" : "carries no")"
                 + " handshake/CCS/epoch-0 record (types \(records.map(\.type)))")
        }
        if records.contains(where: { $0.type == 23 }) && records.count != 1 {
            fail(datagram, "application data packed with \(records.count - 1) other record(s)")
        }
        // Before the initiator knows the target's SID it can only be offering a ClientHello.
        if fromClient && !gue.hasD && !(records.count == 1 && records[0].isClientHello) {
            fail(datagram, "client datagram without D that is not a ClientHello")
        }
    }

    private mutating func checkPlain(_ gue: GUEView, fromClient: Bool, datagram: CapturedDatagram) {
        if gue.hasT { fail(datagram, "plain mode datagram with T set") }
        if gue.proto != 6 { fail(datagram, "Proto \(gue.proto), expected 6") }
        let (parsed, problem) = TCPSegmentView.parse(gue.payload)
        guard let segment = parsed else {
            fail(datagram, problem ?? "no TCP segment")
            return
        }
        if !segment.checksumValid { fail(datagram, "TCP checksum wrong over the address-free pseudo-header") }
        if segment.syn { synSegments += 1 }
        if segment.syn != gue.hasS {
            fail(datagram, "S is \(gue.hasS ? "set" : "clear") on a segment with SYN \(segment.syn ? "set" : "clear")")
        }
        guard fromClient else { return }
        if segment.syn {
            clientInitialSequence = segment.sequence
        } else if !segment.payload.isEmpty {
            clientSegments.append((segment.sequence, segment.payload))
        }
    }

    /// Plain mode: the client's byte stream rebuilt from the captured segments (up to the first gap).
    func reassembledClientStream() -> [UInt8] {
        guard let initial = clientInitialSequence else { return [] }
        let base = initial &+ 1
        let ordered = clientSegments.map { (offset: Int($0.sequence &- base), payload: $0.payload) }
            .sorted { $0.offset < $1.offset }
        var stream: [UInt8] = []
        for (offset, payload) in ordered {
            guard offset <= stream.count else { break }
            let fresh = offset + payload.count - stream.count
            if fresh > 0 { stream.append(contentsOf: payload.suffix(fresh)) }
        }
        return stream
    }
}
