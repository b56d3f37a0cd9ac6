import NIOCore

/// The bytes a simulated application sends: a fixed pseudo-random block whose length is a prime,
/// read from a per-direction starting offset. Writers hand out zero-copy slices of it and readers
/// compare what arrives against it with a memcmp, so gigabytes can be sent and verified cheaply;
/// a segment delivered at the wrong offset is caught unless it moved by a multiple of the prime.
public enum PayloadPattern {
    /// 1,048,573 is prime, so no segment size divides it.
    public static let period = 1_048_573

    static let block: ByteBuffer = {
        var random = SimulationRandom(seed: 0x746F_7564_746C_73)  // "toudtls"
        var buffer = ByteBufferAllocator().buffer(capacity: period + 8)
        while buffer.readableBytes + 8 <= period { buffer.writeInteger(random.next()) }
        while buffer.readableBytes < period { buffer.writeInteger(UInt8(truncatingIfNeeded: random.next())) }
        return buffer
    }()

    /// Up to `length` pattern bytes starting at stream position `position` of a stream that
    /// begins at `origin`; shorter when the block wraps.
    public static func slice(origin: Int, position: Int, length: Int) -> ByteBuffer {
        let offset = (origin + position) % period
        let take = min(length, period - offset)
        return block.getSlice(at: block.readerIndex + offset, length: take) ?? ByteBuffer()
    }

    /// Whether `data` equals the pattern at `position` of the stream starting at `origin`.
    public static func matches(_ data: ByteBuffer, origin: Int, position: Int) -> Bool {
        var remaining = data
        var position = position
        while remaining.readableBytes > 0 {
            let expected = slice(origin: origin, position: position, length: remaining.readableBytes)
            guard let actual = remaining.readSlice(length: expected.readableBytes), actual == expected
            else { return false }
            position += expected.readableBytes
        }
        return true
    }
}
