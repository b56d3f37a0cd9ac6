import DequeModule
import NIOCore
import TOUWire

/// In-order bytes waiting for the application, plus out-of-order data waiting for a hole to fill.
///
/// Out-of-order data is only accepted inside the advertised window, so its payload is bounded by
/// the buffer size. The peer chooses the segment sizes, so memory and work are bounded too:
/// - out-of-order pieces sit in a `ChunkedList` ordered by sequence number, beside the contiguous
///   runs they form (one SACK block each), so a segment costs a search and a shift within one
///   chunk wherever it lands, and the block holding it is one search away;
/// - a small piece is copied together with a small neighbour (Linux's collapse), so a stream of
///   tiny segments costs memory in proportion to its bytes rather than its segments;
/// - every piece is charged `pieceOverhead` beside its bytes (Linux's truesize); when the charge
///   of both queues exceeds the budget, the highest out-of-order pieces are dropped (a receiver
///   may renege on SACKed data, RFC 2018 8).
struct TCPReceiveBuffer {
    struct Piece {
        var sequence: UInt32
        var bytes: ByteBuffer
        var end: UInt32 { sequence.seqAdvanced(by: bytes.readableBytes) }
        var isSmall: Bool { bytes.readableBytes < TCPReceiveBuffer.smallPiece }
    }

    /// A contiguous range of out-of-order data, as reported in a SACK block.
    struct Run {
        var left: UInt32
        var right: UInt32
    }

    /// What storing one out-of-order segment did.
    struct Insertion {
        /// The first range of the segment that was already held (RFC 2883 D-SACK).
        var duplicate: TCPSACKBlock?
        /// Out-of-order data was dropped to stay within the budget.
        var pruned = false
    }

    /// Memory a piece costs beyond its payload: its slot, the record buffer's headers it keeps
    /// alive, allocator rounding and the run bookkeeping.
    static let pieceOverhead = 256
    /// Pieces below this size are copied together with small neighbours.
    static let smallPiece = 512
    /// The budget never drops below this, so small buffers still hold a few segments out of order.
    static let minimumBudget = 64 << 10

    private var ready: Deque<ByteBuffer> = []
    private(set) var readableBytes = 0

    /// Sorted, non-overlapping out-of-order pieces, and the maximal contiguous runs they form.
    private var pieces = ChunkedList<Piece>()
    private var runs = ChunkedList<Run>()
    private(set) var pendingBytes = 0
    private(set) var prunedBytes = 0
    /// Bytes copied to join small pieces.
    private(set) var collapsedBytes = 0

    var hasOutOfOrderData: Bool { !runs.isEmpty }

    /// The highest sequence number held out of order, plus one.
    var outOfOrderEnd: UInt32? { runs.last?.right }

    var outOfOrderPieces: Int { pieces.count }

    /// Payload plus per-piece overhead of both queues, in bytes.
    var charge: Int { readableBytes + pendingBytes + Self.pieceOverhead * (ready.count + pieces.count) }

    /// Elements shifted or copied inside the out-of-order structures (for tests bounding the work).
    var steps: Int { pieces.steps + runs.steps }

    /// What the queues may be charged: twice the buffer size (Linux's rcvbuf is about twice the
    /// window), so full-sized segments filling the window never reach it.
    static func budget(bufferSize: Int) -> Int { max(2 * bufferSize, minimumBudget) }

    mutating func appendInOrder(_ bytes: ByteBuffer) {
        guard bytes.readableBytes > 0 else { return }
        readableBytes += bytes.readableBytes
        if bytes.readableBytes < Self.smallPiece, (ready.last?.readableBytes ?? .max) < Self.smallPiece {
            var joined = ready.removeLast()
            joined.writeImmutableBuffer(bytes)
            collapsedBytes += bytes.readableBytes
            ready.append(joined)
        } else {
            ready.append(bytes)
        }
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

    /// Stores the parts of `bytes` (starting at `sequence`) not already held, then prunes to the
    /// budget of a buffer of `bufferSize` bytes. `next` is RCV.NXT; the caller has trimmed the
    /// segment to the window, so it lies strictly after `next`.
    mutating func insertOutOfOrder(sequence: UInt32, bytes: ByteBuffer, next: UInt32, bufferSize: Int) -> Insertion {
        let start = sequence.seqDistance(from: next)
        let end = start + bytes.readableBytes
        guard start > 0, end > start else { return Insertion() }
        var insertion = Insertion()
        // The first run that ends at or after `start`: it and those after it that begin at or
        // before `end` touch the segment and merge with it.
        let first = runs.firstPosition { $0.right.seqDistance(from: next) >= start }
        if first == runs.endPosition || runs[first].left.seqDistance(from: next) > end {
            storePiece(bytes, at: sequence, next: next)
            runs.insert(Run(left: sequence, right: next.seqAdvanced(by: end)), at: first)
        } else {
            var merged = runs[first]
            var cursor = start
            var touching = 0
            var position = first
            while position != runs.endPosition {
                let run = runs[position]
                let left = run.left.seqDistance(from: next)
                let right = run.right.seqDistance(from: next)
                guard left <= end else { break }
                if cursor < left {
                    storeSlice(of: bytes, startingAt: start, from: cursor, to: left, next: next)
                }
                if insertion.duplicate == nil, max(left, start) < min(right, end) {
                    insertion.duplicate = TCPSACKBlock(
                        left: next.seqAdvanced(by: max(left, start)), right: next.seqAdvanced(by: min(right, end)))
                }
                cursor = max(cursor, right)
                merged.right = right > end ? run.right : next.seqAdvanced(by: end)
                touching += 1
                position = runs.position(after: position)
            }
            if cursor < end { storeSlice(of: bytes, startingAt: start, from: cursor, to: end, next: next) }
            if start < merged.left.seqDistance(from: next) { merged.left = sequence }
            runs[first] = merged
            let mergedLeft = merged.left.seqDistance(from: next)
            for _ in 1..<max(touching, 1) {
                let absorbed = runs.firstPosition { $0.left.seqDistance(from: next) > mergedLeft }
                guard absorbed != runs.endPosition else { break }
                runs.remove(at: absorbed)
            }
        }
        insertion.pruned = prune(toBudget: Self.budget(bufferSize: bufferSize))
        return insertion
    }

    /// Stores the part `[from, to)` (offsets from `next`) of a segment whose first byte is at `start`.
    private mutating func storeSlice(of bytes: ByteBuffer, startingAt start: Int, from: Int, to: Int, next: UInt32) {
        guard let slice = bytes.getSlice(at: bytes.readerIndex + from - start, length: to - from) else { return }
        storePiece(slice, at: next.seqAdvanced(by: from), next: next)
    }

    /// Adds a piece that overlaps nothing held, joining it with small adjacent pieces.
    private mutating func storePiece(_ bytes: ByteBuffer, at sequence: UInt32, next: UInt32) {
        pendingBytes += bytes.readableBytes
        let offset = sequence.seqDistance(from: next)
        func positionAfter(_ pieces: ChunkedList<Piece>) -> ChunkedList<Piece>.Position {
            pieces.firstPosition { $0.sequence.seqDistance(from: next) > offset }
        }
        var piece = Piece(sequence: sequence, bytes: bytes)
        var position = positionAfter(pieces)
        if piece.isSmall, let before = pieces.position(before: position), pieces[before].isSmall,
            pieces[before].end == sequence
        {
            var joined = pieces.remove(at: before)
            joined.bytes.writeImmutableBuffer(piece.bytes)
            collapsedBytes += piece.bytes.readableBytes
            piece = joined
            position = positionAfter(pieces)
        }
        if piece.isSmall, position != pieces.endPosition, pieces[position].isSmall,
            pieces[position].sequence == piece.end
        {
            let after = pieces.remove(at: position)
            piece.bytes.writeImmutableBuffer(after.bytes)
            collapsedBytes += after.bytes.readableBytes
            position = positionAfter(pieces)
        }
        pieces.insert(piece, at: position)
    }

    /// Drops the highest out-of-order pieces until the charge fits `budget`; true if any went.
    private mutating func prune(toBudget budget: Int) -> Bool {
        var pruned = false
        while charge > budget, let piece = pieces.removeLast() {
            pruned = true
            pendingBytes -= piece.bytes.readableBytes
            prunedBytes += piece.bytes.readableBytes
            guard let last = runs.position(before: runs.endPosition) else { continue }
            if runs[last].left == piece.sequence {
                runs.remove(at: last)
            } else {
                runs[last].right = piece.sequence
            }
        }
        return pruned
    }

    /// Moves out-of-order data that now continues the in-order stream. Returns the new RCV.NXT
    /// and the first range that arrived again in order (a D-SACK, RFC 2883).
    mutating func drainOutOfOrder(next: UInt32) -> (next: UInt32, duplicate: TCPSACKBlock?) {
        // Runs are maximal, so the runs that continue the stream are those starting at or
        // before `next`: draining one never reaches the next run.
        let drained = runs.removePrefix(upTo: runs.firstPosition { $0.left.seqGT(next) })
        guard let firstRun = drained.first, let lastRun = drained.last else { return (next, nil) }
        var duplicate: TCPSACKBlock?
        if firstRun.left.seqLT(next) {
            duplicate = TCPSACKBlock(left: firstRun.left, right: firstRun.right.seqLT(next) ? firstRun.right : next)
        }
        var next = next
        for piece in pieces.removePrefix(upTo: pieces.firstPosition { $0.sequence.seqGE(lastRun.right) }) {
            pendingBytes -= piece.bytes.readableBytes
            let overlap = max(0, next.seqDistance(from: piece.sequence))
            guard overlap < piece.bytes.readableBytes,
                let fresh = piece.bytes.getSlice(
                    at: piece.bytes.readerIndex + overlap, length: piece.bytes.readableBytes - overlap)
            else { continue }
            appendInOrder(fresh)
            next = next.seqAdvanced(by: fresh.readableBytes)
        }
        return (next, duplicate)
    }

    /// The contiguous run of out-of-order data that holds `sequence`, as a SACK block.
    func sackBlock(containing sequence: UInt32, next: UInt32) -> TCPSACKBlock? {
        let offset = sequence.seqDistance(from: next)
        let position = runs.firstPosition { $0.right.seqDistance(from: next) > offset }
        guard position != runs.endPosition, runs[position].left.seqDistance(from: next) <= offset else { return nil }
        return TCPSACKBlock(left: runs[position].left, right: runs[position].right)
    }

    /// `blocks` cut back to the data still held after pruning (which only ever drops the top).
    func sackBlocksStillHeld(_ blocks: [TCPSACKBlock]) -> [TCPSACKBlock] {
        guard let end = outOfOrderEnd else { return [] }
        return blocks.compactMap { block in
            guard block.left.seqLT(end) else { return nil }
            return TCPSACKBlock(left: block.left, right: block.right.seqGT(end) ? end : block.right)
        }
    }

    mutating func discardOutOfOrder() {
        pieces.removeAll()
        runs.removeAll()
        pendingBytes = 0
    }
}
