import DequeModule
import NIOCore

/// Bytes written by the application and not yet acknowledged, as a queue of ByteBuffer chunks.
/// Segments are zero-copy slices of a chunk; only a segment that straddles two chunks is copied.
/// Small writes are coalesced into the last chunk until a segment has been cut from it, so a
/// stream of tiny writes does not become a long chain of tiny chunks.
struct TCPSendBuffer {
    private struct Chunk {
        /// Stream offset of the chunk's first readable byte.
        var start: Int
        var bytes: ByteBuffer
        /// Whether later small writes may be appended (a chunk we own that no segment shares).
        var appendable: Bool
        var end: Int { start + bytes.readableBytes }
    }

    private var chunks: Deque<Chunk> = []
    /// Stream offset of the first unacknowledged byte (bytes removed so far).
    private(set) var startOffset = 0
    private(set) var count = 0

    /// Writes this large are kept as the caller's buffer instead of being copied.
    private static let adoptThreshold = 16 * 1024
    private static let coalesceLimit = 64 * 1024

    var isEmpty: Bool { count == 0 }

    mutating func append(_ data: ByteBuffer) {
        let length = data.readableBytes
        guard length > 0 else { return }
        defer { count += length }
        let end = startOffset + count
        if length >= Self.adoptThreshold {
            chunks.append(Chunk(start: end, bytes: data, appendable: false))
            return
        }
        if let last = chunks.indices.last, chunks[last].appendable,
            chunks[last].bytes.readableBytes + length <= Self.coalesceLimit
        {
            chunks[last].bytes.writeImmutableBuffer(data)
            return
        }
        var copy = ByteBufferAllocator().buffer(capacity: max(length, 2048))
        copy.writeImmutableBuffer(data)
        chunks.append(Chunk(start: end, bytes: copy, appendable: true))
    }

    /// Drops `amount` bytes from the front (they were acknowledged).
    mutating func removeFirst(_ amount: Int) {
        var remaining = min(amount, count)
        count -= remaining
        startOffset += remaining
        while remaining > 0, let first = chunks.first {
            let size = first.bytes.readableBytes
            if size <= remaining {
                remaining -= size
                chunks.removeFirst()
            } else {
                chunks[chunks.startIndex].bytes.moveReaderIndex(forwardBy: remaining)
                chunks[chunks.startIndex].start += remaining
                remaining = 0
            }
        }
    }

    /// `length` bytes starting `offset` bytes after the first unacknowledged one.
    /// The caller guarantees `offset + length <= count`.
    mutating func slice(offset: Int, length: Int) -> ByteBuffer {
        guard length > 0, offset >= 0, offset + length <= count else { return ByteBuffer() }
        let position = startOffset + offset
        var index = chunkIndex(containing: position)
        let chunk = chunks[index]
        if position + length <= chunk.end {
            if index == chunks.count - 1 { chunks[index].appendable = false }
            return chunk.bytes.getSlice(
                at: chunk.bytes.readerIndex + (position - chunk.start), length: length)
                ?? ByteBuffer()
        }
        var joined = ByteBufferAllocator().buffer(capacity: length)
        var cursor = position
        while cursor < position + length, index < chunks.count {
            let piece = chunks[index]
            let take = min(piece.end, position + length) - cursor
            if let part = piece.bytes.getSlice(
                at: piece.bytes.readerIndex + (cursor - piece.start), length: take)
            {
                joined.writeImmutableBuffer(part)
            }
            cursor += take
            index += 1
        }
        return joined
    }

    /// Binary search for the chunk holding stream offset `position`.
    private func chunkIndex(containing position: Int) -> Int {
        var low = 0
        var high = chunks.count - 1
        while low < high {
            let middle = (low + high + 1) / 2
            if chunks[middle].start <= position { low = middle } else { high = middle - 1 }
        }
        return low
    }
}
