import NIOCore

/// How the TCP checksum field is treated (wire-format.md, "TCP inside").
public enum TCPChecksumMode: Sendable, Hashable {
    /// Secure mode: the AEAD authenticates every byte, so the field is sent as 0 and not checked.
    case zero
    /// Plain mode: the ordinary TCP checksum over TOU's address-free pseudo-header, verified.
    case addressFree
}

/// Why a TCP segment was rejected. Peer input only ever produces one of these, never a crash.
public enum TCPParseError: Error, Sendable, Hashable {
    /// Fewer bytes than the fixed 20-byte header.
    case truncated(length: Int)
    /// The data offset is below 5 words or points past the end of the segment.
    case badDataOffset(words: Int, length: Int)
    /// An option's length is too short, runs past the header, or does not fit its kind.
    case malformedOption(kind: UInt8)
    /// The address-free checksum does not verify.
    case badChecksum(received: UInt16)
}

/// One TCP segment: header fields, the options this project knows, and the payload.
public struct TCPSegment: Sendable, Hashable {
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    public var sequenceNumber: UInt32
    public var acknowledgmentNumber: UInt32
    public var flags: TCPFlags
    public var window: UInt16
    public var urgentPointer: UInt16
    public var options: TCPOptions
    public var payload: ByteBuffer

    public init(
        sourcePort: UInt16,
        destinationPort: UInt16,
        sequenceNumber: UInt32,
        acknowledgmentNumber: UInt32 = 0,
        flags: TCPFlags,
        window: UInt16,
        urgentPointer: UInt16 = 0,
        options: TCPOptions = TCPOptions(),
        payload: ByteBuffer = ByteBuffer()
    ) {
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.sequenceNumber = sequenceNumber
        self.acknowledgmentNumber = acknowledgmentNumber
        self.flags = flags
        self.window = window
        self.urgentPointer = urgentPointer
        self.options = options
        self.payload = payload
    }

    public static let minimumHeaderLength = 20
    public static let maximumHeaderLength = 60

    /// Header bytes including options (20 to 60).
    public var headerLength: Int { Self.minimumHeaderLength + options.encodedLength }

    /// Sequence space the segment occupies: payload plus one each for SYN and FIN.
    public var sequenceLength: Int {
        payload.readableBytes + (flags.contains(.syn) ? 1 : 0) + (flags.contains(.fin) ? 1 : 0)
    }

    /// Parses one whole segment. The payload is a zero-copy slice of `bytes`.
    public static func parse(_ bytes: ByteBuffer, checksum: TCPChecksumMode) throws(TCPParseError)
        -> TCPSegment
    {
        let length = bytes.readableBytes
        guard length >= minimumHeaderLength else { throw .truncated(length: length) }
        // The header in one look at the bytes: a ByteBuffer read per part would bring its own
        // bounds and run-time exclusivity checks.
        return try bytes.withUnsafeReadableBytes { raw throws(TCPParseError) -> TCPSegment in
            func field<T: FixedWidthInteger>(_ offset: Int, _: T.Type) -> T {
                T(bigEndian: raw.loadUnaligned(fromByteOffset: offset, as: T.self))
            }
            let dataOffsetWords = Int(raw[12] >> 4)
            let headerLength = dataOffsetWords * 4
            guard dataOffsetWords >= 5, headerLength <= length else {
                throw .badDataOffset(words: dataOffsetWords, length: length)
            }
            if checksum == .addressFree, InternetChecksum.addressFreeTCP(segmentBytes: raw) != 0 {
                throw .badChecksum(received: field(16, UInt16.self))
            }
            let options = headerLength > minimumHeaderLength
                ? try TCPOptions.parse(UnsafeRawBufferPointer(rebasing: raw[minimumHeaderLength..<headerLength]))
                : TCPOptions()
            return TCPSegment(sourcePort: field(0, UInt16.self), destinationPort: field(2, UInt16.self),
                              sequenceNumber: field(4, UInt32.self), acknowledgmentNumber: field(8, UInt32.self),
                              flags: TCPFlags(rawValue: raw[13]), window: field(14, UInt16.self),
                              urgentPointer: field(18, UInt16.self), options: options,
                              payload: bytes.getSlice(at: bytes.readerIndex + headerLength, length: length - headerLength)
                                  ?? ByteBuffer())
        }
    }

    /// Appends the header and options only, checksum zero: for a caller that protects the header
    /// and `payload` together without joining them (DTLS records carry no TCP checksum).
    public func writeHeader(into buffer: inout ByteBuffer) {
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: headerLength) { raw in
            guard let base = raw.baseAddress else { return 0 }
            return writeHeader(to: base)
        }
    }

    /// Writes the header (checksum zero) to `base`, which has room for `headerLength` bytes (at
    /// most `maximumHeaderLength`); returns that length.
    public func writeHeader(to base: UnsafeMutableRawPointer) -> Int {
        let length = headerLength
        var writer = RawWriter(base)
        writer.put(sourcePort)
        writer.put(destinationPort)
        writer.put(sequenceNumber)
        writer.put(acknowledgmentNumber)
        writer.put(UInt8(length / 4) << 4)
        writer.put(flags.rawValue)
        writer.put(window)
        writer.put(UInt16(0))
        writer.put(urgentPointer)
        options.write(to: &writer)
        return length
    }

    /// Appends the segment (header, options, payload) to `buffer`.
    public func write(into buffer: inout ByteBuffer, checksum: TCPChecksumMode) {
        let start = buffer.writerIndex
        let headerLength = self.headerLength
        buffer.reserveCapacity(minimumWritableBytes: headerLength + payload.readableBytes)
        writeHeader(into: &buffer)
        buffer.writeImmutableBuffer(payload)
        if checksum == .addressFree {
            // Summed in place: a slice would share storage and make setInteger copy the buffer.
            let offset = start - buffer.readerIndex
            let length = buffer.writerIndex - start
            let sum = buffer.withUnsafeReadableBytes { raw in
                InternetChecksum.addressFreeTCP(
                    segmentBytes: UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + length)]))
            }
            buffer.setInteger(sum, at: start + 16)
        }
    }
}
