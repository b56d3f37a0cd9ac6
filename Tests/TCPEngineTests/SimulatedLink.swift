import NIOCore
import TCPEngine
import TOUWire

/// Deterministic random numbers for reproducible loss and reordering.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A one-way link with loss, duplication, jitter (which reorders) and an optional bottleneck.
struct SimulatedLink {
    struct Impairments {
        var loss = 0.0
        var duplication = 0.0
        var delay = TimeAmount.milliseconds(10)
        var jitter = TimeAmount.milliseconds(0)
        /// Bytes per second through the bottleneck; 0 = unlimited.
        var bandwidth = 0
        /// Drop-tail queue in front of the bottleneck, bytes; 0 = unbounded.
        var queueLimit = 0
        /// Encode and parse every segment with the wire codec (plain-mode checksum).
        var throughCodec = false
    }

    var impairments: Impairments
    private var heap: [(at: NIODeadline, order: Int, segment: TCPSegment)] = []
    private var order = 0
    private var bottleneckFreeAt = NIODeadline.uptimeNanoseconds(0)
    private(set) var dropped = 0
    private(set) var carried = 0

    init(_ impairments: Impairments) { self.impairments = impairments }

    var nextDelivery: NIODeadline? { heap.first?.at }

    mutating func send(_ segment: TCPSegment, now: NIODeadline, rng: inout SplitMix64) {
        var segment = segment
        if impairments.throughCodec {
            var wire = ByteBuffer()
            segment.write(into: &wire, checksum: .addressFree)
            guard let parsed = try? TCPSegment.parse(wire, checksum: .addressFree) else {
                fatalError("codec could not parse its own output")
            }
            segment = parsed
        }
        if Double.random(in: 0..<1, using: &rng) < impairments.loss {
            dropped += 1
            return
        }
        var departure = now
        if impairments.bandwidth > 0 {
            let size = Int64(segment.payload.readableBytes + 60)
            if impairments.queueLimit > 0, bottleneckFreeAt > now {
                let queued = (bottleneckFreeAt - now).nanoseconds * Int64(impairments.bandwidth) / 1_000_000_000
                if queued + size > Int64(impairments.queueLimit) {
                    dropped += 1
                    return
                }
            }
            let serialization = TimeAmount.nanoseconds(size * 1_000_000_000 / Int64(impairments.bandwidth))
            departure = max(now, bottleneckFreeAt) + serialization
            bottleneckFreeAt = departure
        }
        let copies = Double.random(in: 0..<1, using: &rng) < impairments.duplication ? 2 : 1
        for _ in 0..<copies {
            var at = departure + impairments.delay
            if impairments.jitter.nanoseconds > 0 {
                at = at + .nanoseconds(Int64.random(in: 0...impairments.jitter.nanoseconds, using: &rng))
            }
            push((at, order, segment))
            order += 1
            carried += 1
        }
    }

    mutating func popDue(now: NIODeadline) -> TCPSegment? {
        guard let first = heap.first, first.at <= now else { return nil }
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            siftDown(0)
        }
        return first.segment
    }

    private func less(_ a: Int, _ b: Int) -> Bool {
        heap[a].at < heap[b].at || (heap[a].at == heap[b].at && heap[a].order < heap[b].order)
    }

    private mutating func push(_ item: (at: NIODeadline, order: Int, segment: TCPSegment)) {
        heap.append(item)
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard less(child, parent) else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    private mutating func siftDown(_ start: Int) {
        var parent = start
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < heap.count, less(left, smallest) { smallest = left }
            if right < heap.count, less(right, smallest) { smallest = right }
            if smallest == parent { return }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
    }
}

/// One side of a pair test: an engine plus an application that writes `outgoing`, then
/// finishes, and collects everything it reads.
struct SimulatedEndpoint {
    var connection: TCPConnection
    let outgoing: ByteBuffer
    var written = 0
    var received = ByteBuffer()
    var events: [TCPEvent] = []
    var closeReason: TCPCloseReason?
    var sawPeerFinish = false
    /// When the peer's FIN arrived: every byte it sent had been delivered by then.
    var peerFinishedAt: NIODeadline?
    var writeChunk: Int

    init(connection: TCPConnection, outgoing: ByteBuffer, writeChunk: Int) {
        self.connection = connection
        self.outgoing = outgoing
        self.writeChunk = writeChunk
    }

    mutating func runApplication(now: NIODeadline? = nil) {
        while written < outgoing.readableBytes, connection.sendBufferFreeSpace > 0 {
            let length = min(writeChunk, outgoing.readableBytes - written)
            guard let chunk = outgoing.getSlice(at: outgoing.readerIndex + written, length: length) else { break }
            let accepted = connection.write(chunk)
            written += accepted
            if accepted < length { break }
        }
        if written == outgoing.readableBytes { connection.finishWriting() }
        while let event = connection.pollEvent() {
            events.append(event)
            switch event {
            case .peerFinished:
                sawPeerFinish = true
                peerFinishedAt = now
            case .closed(let reason): closeReason = reason
            default: break
            }
        }
        while var chunk = connection.read(maximumBytes: 100_000) {
            received.writeBuffer(&chunk)
        }
    }
}

func patternBuffer(length: Int, seed: UInt64) -> ByteBuffer {
    var rng = SplitMix64(seed: seed)
    var buffer = ByteBufferAllocator().buffer(capacity: length)
    // Raw bytes: ByteBuffer's integer writes are slow in debug builds.
    buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { raw in
        var index = 0
        while index < length {
            var word = rng.next()
            for _ in 0..<min(8, length - index) {
                raw[index] = UInt8(truncatingIfNeeded: word)
                word >>= 8
                index += 1
            }
        }
        return length
    }
    return buffer
}
