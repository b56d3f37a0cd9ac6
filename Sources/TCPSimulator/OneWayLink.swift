import DequeModule
import NIOCore
import TOUWire

/// Counters of one direction of a simulated path.
public struct LinkStatistics: Sendable, Hashable {
    /// Segments handed to the link by the sending engine.
    public var offered = 0
    /// Dropped by the full drop-tail queue at the bottleneck.
    public var queueDrops = 0
    /// Dropped by Bernoulli loss.
    public var randomDrops = 0
    /// Dropped by Gilbert-Elliott loss.
    public var burstDrops = 0
    /// Drops (of any kind) of segments that carried payload.
    public var dataSegmentsDropped = 0
    public var reordered = 0
    public var duplicated = 0
    /// Copies handed to the receiving side (duplicates included).
    public var delivered = 0
    /// Deliveries the codec could not parse back; always 0 unless the codec is broken.
    public var codecErrors = 0
    /// The longest the bottleneck queue grew, in bytes.
    public var peakQueueBytes = 0

    public var totalDrops: Int { queueDrops + randomDrops + burstDrops }

    public init() {}
}

/// One direction of a simulated path. Segments are encoded with the real codec when sent and
/// parsed back when delivered.
struct OneWayLink {
    let configuration: LinkConfiguration
    private(set) var statistics = LinkStatistics()

    private struct InFlight {
        var at: NIODeadline
        var order: Int
        var bytes: ByteBuffer
    }
    private var heap: [InFlight] = []
    private var order = 0
    /// Packets in the bottleneck (being serialized or waiting): when each finishes, and its size.
    private var queue: Deque<(finish: NIODeadline, size: Int)> = []
    private var queuedBytes = 0
    private var bottleneckFreeAt: NIODeadline
    /// Delivery instant of the last in-order packet; jitter never schedules one before it.
    private var lastDelivery: NIODeadline
    private var burstBad = false

    init(configuration: LinkConfiguration, start: NIODeadline) {
        self.configuration = configuration
        self.bottleneckFreeAt = start
        self.lastDelivery = start
    }

    var nextDelivery: NIODeadline? { heap.first?.at }

    mutating func send(_ segment: TCPSegment, now: NIODeadline, random: inout SimulationRandom) {
        statistics.offered += 1
        var bytes = ByteBufferAllocator().buffer(capacity: segment.headerLength + segment.payload.readableBytes)
        segment.write(into: &bytes, checksum: .zero)
        let carriesData = segment.payload.readableBytes > 0

        var departure = now
        if configuration.bandwidth > 0 {
            while let head = queue.first, head.finish <= now {
                queuedBytes -= head.size
                queue.removeFirst()
            }
            let size = bytes.readableBytes + configuration.perPacketOverhead
            let full: Bool
            switch configuration.queueLimit {
            case .bytes(let limit): full = queuedBytes + size > limit
            case .packets(let limit): full = queue.count >= limit
            case .unlimited: full = false
            }
            if full {
                statistics.queueDrops += 1
                if carriesData { statistics.dataSegmentsDropped += 1 }
                return
            }
            let serialization = Int64(size) * 8 * 1_000_000_000 / Int64(configuration.bandwidth)
            departure = max(now, bottleneckFreeAt) + .nanoseconds(serialization)
            bottleneckFreeAt = departure
            queue.append((departure, size))
            queuedBytes += size
            statistics.peakQueueBytes = max(statistics.peakQueueBytes, queuedBytes)
        }

        if random.chance(configuration.loss) {
            statistics.randomDrops += 1
            if carriesData { statistics.dataSegmentsDropped += 1 }
            return
        }
        if let burst = configuration.burstLoss {
            let lost = random.chance(burstBad ? burst.lossInBad : burst.lossInGood)
            burstBad = random.chance(burstBad ? 1 - burst.badToGood : burst.goodToBad)
            if lost {
                statistics.burstDrops += 1
                if carriesData { statistics.dataSegmentsDropped += 1 }
                return
            }
        }

        var at = departure + configuration.delay + .nanoseconds(random.nanoseconds(upTo: configuration.jitter.nanoseconds))
        if random.chance(configuration.reordering) {
            // Held back without moving the in-order floor, so later packets overtake it.
            at = max(at, lastDelivery) + configuration.reorderDelay
            statistics.reordered += 1
        } else {
            at = max(at, lastDelivery)
            lastDelivery = at
        }
        push(InFlight(at: at, order: order, bytes: bytes))
        order += 1
        if random.chance(configuration.duplication) {
            statistics.duplicated += 1
            let gap = max(configuration.jitter.nanoseconds, 1_000_000)
            push(InFlight(at: at + .nanoseconds(random.nanoseconds(upTo: gap)), order: order, bytes: bytes))
            order += 1
        }
    }

    /// The next segment due at `now`, parsed back from its bytes.
    mutating func popDue(now: NIODeadline) -> TCPSegment? {
        while let first = heap.first, first.at <= now {
            let last = heap.removeLast()
            if !heap.isEmpty {
                heap[0] = last
                siftDown(0)
            }
            do {
                let segment = try TCPSegment.parse(first.bytes, checksum: .zero)
                statistics.delivered += 1
                return segment
            } catch {
                statistics.codecErrors += 1
            }
        }
        return nil
    }

    private func less(_ a: Int, _ b: Int) -> Bool {
        heap[a].at < heap[b].at || (heap[a].at == heap[b].at && heap[a].order < heap[b].order)
    }

    private mutating func push(_ item: InFlight) {
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
