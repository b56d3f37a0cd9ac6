import NIOCore

/// Whether a TOU endpoint carries DTLS records (secure) or clear-text TCP segments (plain).
public enum TOUMode: Sendable, Hashable {
    case secure
    case plain
}

/// The GUE payload-transform field (present when the T flag is set).
public struct GUETransform: Sendable, Hashable {
    public var type: UInt8
    public var payloadType: UInt8

    public init(type: UInt8, payloadType: UInt8) {
        self.type = type
        self.payloadType = payloadType
    }

    /// DTLS transform (type 1) protecting a TCP payload (IP protocol 6).
    public static let dtlsTCP = GUETransform(type: 1, payloadType: 6)
}

/// Why a received datagram's GUE header was dropped. Receivers count these and stay silent.
public enum GUEDropReason: Error, Sendable, Hashable, CaseIterable {
    /// Shorter than 4 bytes, or than `4 + 4*Hlen`.
    case truncated
    /// The 2-bit variant is not 0.
    case badVariant
    /// C = 1: we send no control messages and accept none.
    case controlMessage
    /// A flag other than T, S or D is set.
    case unknownFlags
    /// Hlen disagrees with `T + 2*S + 2*D`.
    case badHeaderLength
    /// T clear in secure mode, or T set in plain mode.
    case modeMismatch
    /// Proto is not 59 (secure) or 6 (plain).
    case badProto
    /// Transform type is not DTLS (1) or its payload type is not TCP (6).
    case badTransform
    /// Neither S nor D is present, so the datagram names no session.
    case noSessionID
}

/// A GUE variant-0 header with the TOU fields (transform, source and destination session IDs).
public struct GUEHeader: Sendable, Hashable {
    /// IP protocol of what follows: 59 (no next header) in secure mode, 6 (TCP) in plain mode.
    public var proto: UInt8
    /// Present exactly when the T flag is set.
    public var transform: GUETransform?
    /// Present exactly when the S flag is set.
    public var sourceSID: UInt64?
    /// Present exactly when the D flag is set.
    public var destinationSID: UInt64?

    public static let protoSecure: UInt8 = 59
    public static let protoPlain: UInt8 = 6

    /// Flag masks on the 16-bit second half of the first word.
    public static let flagT: UInt16 = 0x0200
    public static let flagS: UInt16 = 0x0100
    public static let flagD: UInt16 = 0x0080

    /// The largest header this project emits (T+S+D): the budget for MTU arithmetic.
    public static let maximumEncodedLength = 24

    public init(proto: UInt8, transform: GUETransform?, sourceSID: UInt64?, destinationSID: UInt64?) {
        self.proto = proto
        self.transform = transform
        self.sourceSID = sourceSID
        self.destinationSID = destinationSID
    }

    public static func secure(source: UInt64?, destination: UInt64?) -> GUEHeader {
        GUEHeader(proto: protoSecure, transform: .dtlsTCP, sourceSID: source, destinationSID: destination)
    }

    public static func plain(source: UInt64?, destination: UInt64?) -> GUEHeader {
        GUEHeader(proto: protoPlain, transform: nil, sourceSID: source, destinationSID: destination)
    }

    /// The header for a secure-mode datagram: S exactly when it carries handshake, change_cipher_spec
    /// or epoch-0 records; D whenever the peer's SID is known. Without a known peer SID, S is
    /// always set, since a header naming no session would be dropped.
    public static func secure(carrying summary: DTLSDatagramSummary, localSID: UInt64, remoteSID: UInt64?) -> GUEHeader {
        secure(carryingHandshake: summary.carriesHandshakeOrEpoch0, localSID: localSID, remoteSID: remoteSID)
    }

    /// The same rule for a caller that knows what it sends (application data: `false`).
    public static func secure(carryingHandshake: Bool, localSID: UInt64, remoteSID: UInt64?) -> GUEHeader {
        secure(source: carryingHandshake || remoteSID == nil ? localSID : nil, destination: remoteSID)
    }

    /// The header for a plain-mode segment: S exactly on SYN segments (or while the peer's SID is
    /// unknown), D whenever the peer's SID is known.
    public static func plain(synSet: Bool, localSID: UInt64, remoteSID: UInt64?) -> GUEHeader {
        let needsS = synSet || remoteSID == nil
        return plain(source: needsS ? localSID : nil, destination: remoteSID)
    }

    /// The 16-bit flags value this header encodes.
    public var flags: UInt16 {
        (transform != nil ? Self.flagT : 0)
            | (sourceSID != nil ? Self.flagS : 0)
            | (destinationSID != nil ? Self.flagD : 0)
    }

    /// Hlen: 32-bit words after the first word.
    public var headerLengthWords: Int {
        (transform != nil ? 1 : 0) + (sourceSID != nil ? 2 : 0) + (destinationSID != nil ? 2 : 0)
    }

    /// Bytes on the wire: `4 + 4*Hlen`.
    public var encodedLength: Int { 4 + 4 * headerLengthWords }

    /// Appends the header; the variant and C bits are always 0 and Info is always 0.
    public func write(into buffer: inout ByteBuffer) {
        let length = encodedLength
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { raw in
            guard let base = raw.baseAddress else { return 0 }
            encode(to: base)
            return length
        }
    }

    /// Puts the header in front of the readable bytes when the buffer has room before them
    /// (headroom reserved by whoever filled it), so framing costs no copy; false otherwise.
    public func prepend(to buffer: inout ByteBuffer) -> Bool {
        let start = buffer.readerIndex - encodedLength
        guard start >= 0 else { return false }
        buffer.withVeryUnsafeMutableBytes { raw in
            if let base = raw.baseAddress { encode(to: base + start) }
        }
        buffer.moveReaderIndex(to: start)
        return true
    }

    /// Stores the header's `encodedLength` bytes at `base`.
    private func encode(to base: UnsafeMutableRawPointer) {
        var writer = RawWriter(base)
        writer.put(UInt8(truncatingIfNeeded: headerLengthWords))
        writer.put(proto)
        writer.put(flags)
        if let transform {
            writer.put(transform.type)
            writer.put(transform.payloadType)
            writer.put(UInt16(0))
        }
        if let sourceSID { writer.put(sourceSID) }
        if let destinationSID { writer.put(destinationSID) }
    }

    /// Validates every receiver drop rule the header alone can decide, then consumes the header
    /// from `buffer` (leaving the payload) and returns it. On error `buffer` is left untouched.
    /// The transform's Info field is not checked: the wire format lists no drop rule for it.
    public static func parse(from buffer: inout ByteBuffer, mode: TOUMode) throws(GUEDropReason) -> GUEHeader {
        // One look at the bytes: each ByteBuffer.getInteger would bring its own bounds and run-time
        // exclusivity checks, five times per datagram.
        let (header, length) = try buffer.withUnsafeReadableBytes { raw throws(GUEDropReason) in
            try parse(raw, mode: mode)
        }
        buffer.moveReaderIndex(forwardBy: length)
        return header
    }

    /// The header at the start of `raw`, and its length.
    static func parse(_ raw: UnsafeRawBufferPointer, mode: TOUMode) throws(GUEDropReason)
        -> (header: GUEHeader, length: Int)
    {
        guard raw.count >= 4 else { throw .truncated }
        let first = UInt32(bigEndian: raw.loadUnaligned(as: UInt32.self))

        let firstByte = UInt8(truncatingIfNeeded: first >> 24)
        guard firstByte >> 6 == 0 else { throw .badVariant }
        guard firstByte & 0x20 == 0 else { throw .controlMessage }
        let hlen = Int(firstByte & 0x1F)
        let proto = UInt8(truncatingIfNeeded: first >> 16)
        let flags = UInt16(truncatingIfNeeded: first)

        guard flags & ~(flagT | flagS | flagD) == 0 else { throw .unknownFlags }
        let hasT = flags & flagT != 0
        let hasS = flags & flagS != 0
        let hasD = flags & flagD != 0
        guard hlen == (hasT ? 1 : 0) + (hasS ? 2 : 0) + (hasD ? 2 : 0) else { throw .badHeaderLength }
        guard raw.count >= 4 + 4 * hlen else { throw .truncated }

        switch mode {
        case .secure:
            guard hasT else { throw .modeMismatch }
            guard proto == protoSecure else { throw .badProto }
        case .plain:
            guard !hasT else { throw .modeMismatch }
            guard proto == protoPlain else { throw .badProto }
        }
        guard hasS || hasD else { throw .noSessionID }

        // The length was checked against hlen above, so every read below is in bounds.
        var offset = 4
        var transform: GUETransform?
        if hasT {
            let type = raw[offset]
            let payloadType = raw[offset + 1]
            guard type == GUETransform.dtlsTCP.type, payloadType == GUETransform.dtlsTCP.payloadType else {
                throw .badTransform
            }
            transform = GUETransform(type: type, payloadType: payloadType)
            offset += 4
        }
        var source: UInt64?
        if hasS {
            source = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
            offset += 8
        }
        var destination: UInt64?
        if hasD {
            destination = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
            offset += 8
        }
        return (GUEHeader(proto: proto, transform: transform, sourceSID: source, destinationSID: destination), offset)
    }
}
