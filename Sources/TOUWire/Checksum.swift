import NIOCore

/// The Internet one's-complement checksum (RFC 1071), as TCP uses it.
public enum InternetChecksum {
    /// Adds `bytes` as big-endian 16-bit words to a running 32-bit-folded sum.
    /// An odd trailing byte is padded with zero, as RFC 1071 specifies.
    @inlinable
    public static func accumulate(_ bytes: UnsafeRawBufferPointer, into sum: UInt64) -> UInt64 {
        var acc = sum
        var index = 0
        let count = bytes.count
        // Eight bytes per step: the one's-complement sum is byte-order independent up to a final
        // swap, so summing native 32-bit halves into 64 bits and folding at the end is exact.
        while index + 8 <= count {
            let word = bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self)
            let bigEndian = UInt64(bigEndian: word)
            acc &+= bigEndian >> 32
            acc &+= bigEndian & 0xFFFF_FFFF
            index += 8
        }
        while index + 2 <= count {
            acc &+= UInt64(bytes[index]) << 8 | UInt64(bytes[index + 1])
            index += 2
        }
        if index < count {
            acc &+= UInt64(bytes[index]) << 8
        }
        return acc
    }

    /// Folds a running sum to 16 bits (without the final complement).
    @inlinable
    public static func fold(_ sum: UInt64) -> UInt16 {
        var value = sum
        while value > 0xFFFF {
            value = (value & 0xFFFF) &+ (value >> 16)
        }
        return UInt16(value)
    }

    /// TOU's address-free TCP checksum: the pseudo-header is 0.0.0.0, 0.0.0.0, 0, 6, TCP length,
    /// so a NAT rewriting the outer addresses cannot break it. Returns the value to put in the
    /// checksum field when `segment` holds the segment with a zero checksum field; over a segment
    /// with a correct checksum field it returns 0.
    public static func addressFreeTCP(segment: ByteBuffer) -> UInt16 {
        segment.withUnsafeReadableBytes { addressFreeTCP(segmentBytes: $0) }
    }

    /// `addressFreeTCP(segment:)` over raw bytes.
    public static func addressFreeTCP(segmentBytes: UnsafeRawBufferPointer) -> UInt16 {
        let pseudoHeader = UInt64(6) &+ UInt64(segmentBytes.count & 0xFFFF)
        return ~fold(accumulate(segmentBytes, into: pseudoHeader))
    }
}
