import DequeModule
import NIOCore
import TOUWire

/// In-order bytes waiting for the application, plus out-of-order segments waiting for a hole to
/// fill. Out-of-order data is only ever accepted inside the advertised window, so the whole
/// structure stays bounded by the receive buffer size.
struct TCPReceiveBuffer {
    private var ready: Deque<ByteBuffer> = []
    private(set) var readableBytes = 0

    /// Sorted, non-overlapping out-of-order pieces keyed by sequence number.
    private var pending: [(sequence: UInt32, bytes: ByteBuffer)] = []
    private(set) var pendingBytes = 0

    var hasOutOfOrderData: Bool { !pending.isEmpty }

    /// The highest sequence number held out of order (for tests and SACK later).
    var outOfOrderEnd: UInt32? {
        pending.last.map { $0.sequence.seqAdvanced(by: $0.bytes.readableBytes) }
    }

    mutating func appendInOrder(_ bytes: ByteBuffer) {
        guard bytes.readableBytes > 0 else { return }
        readableBytes += bytes.readableBytes
        ready.append(bytes)
    }

    /// Up to `maximumBytes` in-order bytes as one buffer; copies only when several segments are joined.
    mutating func read(maximumBytes: Int) -> ByteBuffer? {
        guard maximumBytes > 0, var first = ready.popFirst() else { return nil }
        if first.readableBytes >= maximumBytes || ready.isEmpty {
            let taken = first.readSlice(length: min(maximumBytes, first.readableBytes)) ?? ByteBuffer()
            if first.readableBytes > 0 { ready.prepend(first) }
            readableBytes -= taken.readableBytes
            return taken
        }
        var joined = ByteBufferAllocator().buffer(capacity: min(maximumBytes, readableBytes))
        joined.writeImmutableBuffer(first)
        while joined.readableBytes < maximumBytes, var next = ready.popFirst() {
            let room = maximumBytes - joined.readableBytes
            if next.readableBytes > room {
                if let part = next.readSlice(length: room) { joined.writeImmutableBuffer(part) }
                ready.prepend(next)
            } else {
                joined.writeImmutableBuffer(next)
            }
        }
        readableBytes -= joined.readableBytes
        return joined
    }

    /// Stores the parts of `bytes` (starting at `sequence`) not already held. `next` is RCV.NXT;
    /// the caller has trimmed the segment to the window, so it lies strictly after `next`.
    mutating func insertOutOfOrder(sequence: UInt32, bytes: ByteBuffer, next: UInt32) {
        var start = sequence.seqDistance(from: next)
        let end = start + bytes.readableBytes
        guard start > 0, end > start else { return }
        // First piece that ends after `start`.
        var index = firstIndex(endingAfter: start, next: next)
        while start < end {
            if index < pending.count {
                let pieceStart = pending[index].sequence.seqDistance(from: next)
                let pieceEnd = pieceStart + pending[index].bytes.readableBytes
                if pieceStart <= start {
                    start = max(start, pieceEnd)
                    index += 1
                    continue
                }
                let gapEnd = min(end, pieceStart)
                insert(bytes, from: sequence, start: start, end: gapEnd, next: next, at: index)
                index += 1
                start = gapEnd
            } else {
                insert(bytes, from: sequence, start: start, end: end, next: next, at: index)
                start = end
            }
        }
    }

    private mutating func insert(
        _ bytes: ByteBuffer, from sequence: UInt32, start: Int, end: Int, next: UInt32, at index: Int
    ) {
        let skip = start - sequence.seqDistance(from: next)
        guard let piece = bytes.getSlice(at: bytes.readerIndex + skip, length: end - start) else { return }
        pending.insert((next.seqAdvanced(by: start), piece), at: index)
        pendingBytes += piece.readableBytes
    }

    private func firstIndex(endingAfter start: Int, next: UInt32) -> Int {
        var low = 0
        var high = pending.count
        while low < high {
            let middle = (low + high) / 2
            let pieceEnd = pending[middle].sequence.seqDistance(from: next) + pending[middle].bytes.readableBytes
            if pieceEnd <= start { low = middle + 1 } else { high = middle }
        }
        return low
    }

    /// Moves out-of-order pieces that now continue the in-order stream; returns the new RCV.NXT.
    mutating func drainOutOfOrder(next: UInt32) -> UInt32 {
        var next = next
        var consumed = 0
        while consumed < pending.count {
            let piece = pending[consumed]
            let offset = piece.sequence.seqDistance(from: next)
            if offset > 0 { break }
            consumed += 1
            pendingBytes -= piece.bytes.readableBytes
            let overlap = -offset
            guard overlap < piece.bytes.readableBytes,
                let fresh = piece.bytes.getSlice(
                    at: piece.bytes.readerIndex + overlap, length: piece.bytes.readableBytes - overlap)
            else { continue }
            appendInOrder(fresh)
            next = next.seqAdvanced(by: fresh.readableBytes)
        }
        if consumed > 0 { pending.removeFirst(consumed) }
        return next
    }

    /// The contiguous run of out-of-order data that holds `sequence`, as a SACK block.
    func sackBlock(containing sequence: UInt32, next: UInt32) -> TCPSACKBlock? {
        let offset = sequence.seqDistance(from: next)
        var index = firstIndex(endingAfter: offset, next: next)
        guard index < pending.count, pending[index].sequence.seqLE(sequence) else { return nil }
        var left = pending[index].sequence
        var right = left.seqAdvanced(by: pending[index].bytes.readableBytes)
        var before = index - 1
        while before >= 0 {
            let pieceEnd = pending[before].sequence.seqAdvanced(by: pending[before].bytes.readableBytes)
            guard pieceEnd == left else { break }
            left = pending[before].sequence
            before -= 1
        }
        index += 1
        while index < pending.count, pending[index].sequence == right {
            right = right.seqAdvanced(by: pending[index].bytes.readableBytes)
            index += 1
        }
        return TCPSACKBlock(left: left, right: right)
    }

    mutating func discardOutOfOrder() {
        pending.removeAll()
        pendingBytes = 0
    }
}
