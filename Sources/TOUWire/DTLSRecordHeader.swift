import NIOCore

/// The 13-byte header of a DTLS 1.2 record (RFC 6347 §4.1), read without any crypto.
public struct DTLSRecordHeader: Sendable, Hashable {
    public var contentType: UInt8
    public var version: UInt16
    public var epoch: UInt16
    /// 48-bit record sequence number.
    public var sequenceNumber: UInt64
    /// Length of the fragment that follows the header.
    public var length: Int

    public static let encodedLength = 13

    public static let changeCipherSpec: UInt8 = 20
    public static let alert: UInt8 = 21
    public static let handshake: UInt8 = 22
    public static let applicationData: UInt8 = 23

    public init(contentType: UInt8, version: UInt16, epoch: UInt16, sequenceNumber: UInt64, length: Int) {
        self.contentType = contentType
        self.version = version
        self.epoch = epoch
        self.sequenceNumber = sequenceNumber
        self.length = length
    }

    /// Reads the header at `index` without moving any index; nil if fewer than 13 bytes are there.
    public static func peek(in buffer: ByteBuffer, at index: Int) -> DTLSRecordHeader? {
        guard let type = buffer.getInteger(at: index, as: UInt8.self),
              let version = buffer.getInteger(at: index + 1, as: UInt16.self),
              let epoch = buffer.getInteger(at: index + 3, as: UInt16.self),
              let seqHigh = buffer.getInteger(at: index + 5, as: UInt16.self),
              let seqLow = buffer.getInteger(at: index + 7, as: UInt32.self),
              let length = buffer.getInteger(at: index + 11, as: UInt16.self)
        else { return nil }
        return DTLSRecordHeader(contentType: type, version: version, epoch: epoch,
                                sequenceNumber: UInt64(seqHigh) << 32 | UInt64(seqLow),
                                length: Int(length))
    }

    /// Appends the 13 header bytes (tests and tools; the DTLS layer writes real records).
    /// The sequence number is truncated to 48 bits and the length to 16.
    public func write(into buffer: inout ByteBuffer) {
        buffer.writeInteger(contentType)
        buffer.writeInteger(version)
        buffer.writeInteger(epoch)
        buffer.writeInteger(UInt16(truncatingIfNeeded: sequenceNumber >> 32))
        buffer.writeInteger(UInt32(truncatingIfNeeded: sequenceNumber))
        buffer.writeInteger(UInt16(truncatingIfNeeded: length))
    }
}

/// A record's place in the DTLS sequence space, ordered by epoch then sequence number.
public struct DTLSRecordPosition: Sendable, Hashable, Comparable {
    public var epoch: UInt16
    public var sequenceNumber: UInt64

    public init(epoch: UInt16, sequenceNumber: UInt64) {
        self.epoch = epoch
        self.sequenceNumber = sequenceNumber
    }

    public static func < (lhs: DTLSRecordPosition, rhs: DTLSRecordPosition) -> Bool {
        (lhs.epoch, lhs.sequenceNumber) < (rhs.epoch, rhs.sequenceNumber)
    }
}

/// What the endpoint needs to know about a datagram of DTLS records before (or without) decrypting:
/// whether to set S on send, whether it may open a new session, and where it sits for address learning.
public struct DTLSDatagramSummary: Sendable, Hashable {
    public var recordCount: Int
    /// Any handshake (22) or change_cipher_spec (20) record, or any epoch-0 record: S goes on send.
    public var carriesHandshakeOrEpoch0: Bool
    /// The first record is an epoch-0 handshake record whose first message is a ClientHello (1).
    public var isClientHello: Bool
    /// The highest (epoch, sequence) among application-data (23) records, if any.
    public var lastApplicationData: DTLSRecordPosition?
    /// For a ClientHello whose first fragment reaches its cookie field: whether the cookie is
    /// non-empty (the second ClientHello of a cookie exchange). nil otherwise.
    public var clientHelloHasCookie: Bool?
    /// Zero bytes after the last record: only a ClientHello datagram may be padded (to show the
    /// target that answering it cannot amplify).
    public var paddingLength: Int

    public init(recordCount: Int, carriesHandshakeOrEpoch0: Bool, isClientHello: Bool,
                lastApplicationData: DTLSRecordPosition?, clientHelloHasCookie: Bool? = nil, paddingLength: Int = 0) {
        self.recordCount = recordCount
        self.carriesHandshakeOrEpoch0 = carriesHandshakeOrEpoch0
        self.isClientHello = isClientHello
        self.lastApplicationData = lastApplicationData
        self.clientHelloHasCookie = clientHelloHasCookie
        self.paddingLength = paddingLength
    }

    /// The smallest UDP payload of a padded cookieless ClientHello datagram.
    public static let paddedClientHelloSize = 1200

    static let clientHelloMessageType: UInt8 = 1

    /// Walks the record headers of `datagram`'s readable bytes. Returns nil when the datagram is
    /// empty or its records do not tile it exactly (a truncated header or fragment, or trailing
    /// bytes), except that a ClientHello datagram may end in padding: bytes after the last record
    /// that begin with a zero where a record type would be.
    public static func scan(_ datagram: ByteBuffer) -> DTLSDatagramSummary? {
        var index = datagram.readerIndex
        let end = datagram.writerIndex
        guard index < end else { return nil }

        var count = 0
        var handshakeOrEpoch0 = false
        var clientHello = false
        var lastData: DTLSRecordPosition?
        var hasCookie: Bool?
        while index < end {
            if clientHello, datagram.getInteger(at: index, as: UInt8.self) == 0 {
                return DTLSDatagramSummary(recordCount: count, carriesHandshakeOrEpoch0: handshakeOrEpoch0,
                                           isClientHello: true, lastApplicationData: lastData,
                                           clientHelloHasCookie: hasCookie, paddingLength: end - index)
            }
            guard let header = DTLSRecordHeader.peek(in: datagram, at: index) else { return nil }
            let fragmentStart = index + DTLSRecordHeader.encodedLength
            guard header.length <= end - fragmentStart else { return nil }

            if header.contentType == DTLSRecordHeader.handshake
                || header.contentType == DTLSRecordHeader.changeCipherSpec
                || header.epoch == 0 {
                handshakeOrEpoch0 = true
            }
            if count == 0, header.contentType == DTLSRecordHeader.handshake, header.epoch == 0,
               header.length > 0,
               datagram.getInteger(at: fragmentStart, as: UInt8.self) == clientHelloMessageType {
                clientHello = true
                hasCookie = cookiePresent(in: datagram, handshakeAt: fragmentStart, recordEnd: fragmentStart + header.length)
            }
            if header.contentType == DTLSRecordHeader.applicationData {
                let position = DTLSRecordPosition(epoch: header.epoch, sequenceNumber: header.sequenceNumber)
                if lastData.map({ position > $0 }) ?? true { lastData = position }
            }
            count += 1
            index = fragmentStart + header.length
        }
        return DTLSDatagramSummary(recordCount: count, carriesHandshakeOrEpoch0: handshakeOrEpoch0,
                                   isClientHello: clientHello, lastApplicationData: lastData,
                                   clientHelloHasCookie: hasCookie)
    }

    /// A ClientHello's first fragment: 12-byte handshake header, then version (2), random (32),
    /// session_id (1 + n) and cookie (1 + n) (RFC 6347 4.2.1).
    private static func cookiePresent(in datagram: ByteBuffer, handshakeAt start: Int, recordEnd: Int) -> Bool? {
        guard let offsetHigh = datagram.getInteger(at: start + 6, as: UInt8.self),
              let offsetLow = datagram.getInteger(at: start + 7, as: UInt16.self),
              offsetHigh == 0, offsetLow == 0 else { return nil }
        let sessionIDAt = start + 12 + 2 + 32
        guard sessionIDAt < recordEnd, let sessionIDLength = datagram.getInteger(at: sessionIDAt, as: UInt8.self) else {
            return nil
        }
        let cookieAt = sessionIDAt + 1 + Int(sessionIDLength)
        guard cookieAt < recordEnd, let cookieLength = datagram.getInteger(at: cookieAt, as: UInt8.self) else {
            return nil
        }
        return cookieLength > 0
    }
}
