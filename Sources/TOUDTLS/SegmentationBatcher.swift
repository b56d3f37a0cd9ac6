import NIOCore

/// Coalesces consecutive datagrams to one address into UDP GSO writes: a run of equal-sized
/// datagrams (the last may be shorter) leaves as one buffer that the kernel cuts back into the
/// same datagrams, so a window of segments costs one trip through the socket layer, not one each.
struct SegmentationBatcher {
    /// Linux's UDP_MAX_SEGMENTS was 64 before 6.x; stay within it everywhere.
    static let maximumSegments = 64
    /// Under the 64 KiB limit of one IP datagram, for IPv4 and IPv6 headers alike.
    static let maximumBytes = 65_000

    private let allocator = ByteBufferAllocator()
    private var address: SocketAddress?
    /// A run of one leaves as it is, without a copy.
    private var first: ByteBuffer?
    private var run: ByteBuffer?
    private var segmentSize = 0
    private var count = 0
    /// A datagram shorter than the run's segment size must be its last.
    private var closed = false

    /// Adds `datagram` for `destination`; returns the write this ended, if any (send it first).
    mutating func append(_ datagram: ByteBuffer, to destination: SocketAddress) -> AddressedEnvelope<ByteBuffer>? {
        let size = datagram.readableBytes
        if count > 0, !closed, size <= segmentSize, count < Self.maximumSegments,
           (count + 1) * segmentSize <= Self.maximumBytes, address == destination {
            if run == nil, let first {
                var buffer = allocator.buffer(capacity: segmentSize * min(Self.maximumSegments,
                                                                          Self.maximumBytes / segmentSize))
                buffer.writeImmutableBuffer(first)
                run = buffer
                self.first = nil
            }
            run?.writeImmutableBuffer(datagram)
            count += 1
            closed = size < segmentSize
            return nil
        }
        let finished = finish()
        address = destination
        first = datagram
        segmentSize = size
        count = 1
        closed = size == 0
        return finished
    }

    /// The pending write, if any; the batcher is empty afterwards.
    mutating func finish() -> AddressedEnvelope<ByteBuffer>? {
        guard count > 0, let address else { return nil }
        defer {
            self.first = nil
            self.run = nil
            self.address = nil
            count = 0
        }
        if let run {
            let metadata = AddressedEnvelope<ByteBuffer>.Metadata(ecnState: .transportNotCapable, packetInfo: nil,
                                                                  segmentSize: segmentSize)
            return AddressedEnvelope(remoteAddress: address, data: run, metadata: metadata)
        }
        guard let first else { return nil }
        return AddressedEnvelope(remoteAddress: address, data: first)
    }
}
