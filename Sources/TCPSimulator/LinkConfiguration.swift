import NIOCore

/// Gilbert-Elliott bursty loss: a two-state Markov chain stepped once per packet.
public struct BurstLoss: Sendable, Hashable {
    /// Probability of moving from the good to the bad state after a packet.
    public var goodToBad: Double
    /// Probability of moving from the bad back to the good state after a packet.
    public var badToGood: Double
    /// Loss probability while good (1 - k in Gilbert-Elliott terms).
    public var lossInGood: Double
    /// Loss probability while bad (1 - h).
    public var lossInBad: Double

    public init(goodToBad: Double, badToGood: Double, lossInGood: Double = 0, lossInBad: Double = 1) {
        self.goodToBad = goodToBad
        self.badToGood = badToGood
        self.lossInGood = lossInGood
        self.lossInBad = lossInBad
    }

    /// Long-run share of packets lost.
    public var averageLoss: Double {
        let total = goodToBad + badToGood
        guard total > 0 else { return lossInGood }
        let bad = goodToBad / total
        return bad * lossInBad + (1 - bad) * lossInGood
    }
}

/// How a bottleneck's drop-tail queue is bounded.
public enum QueueLimit: Sendable, Hashable {
    case bytes(Int)
    case packets(Int)
    case unlimited
}

/// The impairments of one direction of a simulated path. The order a packet meets them:
/// drop-tail queue and serialization at the bottleneck, then random and bursty loss on the wire,
/// then propagation delay with jitter, reordering and duplication.
public struct LinkConfiguration: Sendable, Hashable {
    /// One-way propagation delay.
    public var delay: TimeAmount
    /// Extra delay drawn uniformly from 0...jitter per packet; order is kept (a packet never
    /// overtakes the one before it through jitter alone: `reordering` does that).
    public var jitter: TimeAmount
    /// Bernoulli loss probability per packet.
    public var loss: Double
    /// Optional bursty loss on top of `loss`.
    public var burstLoss: BurstLoss?
    /// Probability that a packet is held back by `reorderDelay` and so overtaken by later ones.
    public var reordering: Double
    public var reorderDelay: TimeAmount
    /// Probability that a packet is delivered twice.
    public var duplication: Double
    /// Bottleneck rate in bits per second; 0 for none (no serialization delay, no queue).
    public var bandwidth: Int
    public var queueLimit: QueueLimit
    /// Bytes a packet occupies on the bottleneck beyond its TCP segment (an IPv4 header by default).
    public var perPacketOverhead: Int

    public init(
        delay: TimeAmount = .milliseconds(10), jitter: TimeAmount = .zero, loss: Double = 0,
        burstLoss: BurstLoss? = nil, reordering: Double = 0, reorderDelay: TimeAmount = .milliseconds(5),
        duplication: Double = 0, bandwidth: Int = 0, queueLimit: QueueLimit = .unlimited,
        perPacketOverhead: Int = 20
    ) {
        self.delay = delay
        self.jitter = jitter
        self.loss = loss
        self.burstLoss = burstLoss
        self.reordering = reordering
        self.reorderDelay = reorderDelay
        self.duplication = duplication
        self.bandwidth = bandwidth
        self.queueLimit = queueLimit
        self.perPacketOverhead = perPacketOverhead
    }
}

extension LinkConfiguration: CustomStringConvertible {
    public var description: String {
        var parts = ["delay \(delay.nanoseconds / 1_000_000) ms"]
        if jitter > .zero { parts.append("jitter \(jitter.nanoseconds / 1_000_000) ms") }
        if loss > 0 { parts.append("loss \(loss)") }
        if let burstLoss {
            parts.append(
                "burst p(g>b) \(burstLoss.goodToBad) p(b>g) \(burstLoss.badToGood) "
                    + "loss good \(burstLoss.lossInGood) bad \(burstLoss.lossInBad)")
        }
        if reordering > 0 {
            parts.append("reorder \(reordering) by \(reorderDelay.nanoseconds / 1_000_000) ms")
        }
        if duplication > 0 { parts.append("dup \(duplication)") }
        if bandwidth > 0 { parts.append("bw \(bandwidth) bit/s queue \(queueLimit)") }
        return parts.joined(separator: ", ")
    }
}
