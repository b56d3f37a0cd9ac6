import NIOCore

/// RFC 6298 round-trip estimator with exponential backoff.
struct RTTEstimator {
    private(set) var smoothed: TimeAmount?
    private(set) var variance: TimeAmount?
    /// The RTO without backoff.
    private var baseRTO: TimeAmount
    private(set) var backoffShift = 0
    let minimum: TimeAmount
    let maximum: TimeAmount
    /// Clock granularity G of RFC 6298; a millisecond is what the engine's callers can honour.
    private static let granularity = TimeAmount.milliseconds(1)

    init(initial: TimeAmount, minimum: TimeAmount, maximum: TimeAmount) {
        self.minimum = minimum
        self.maximum = max(maximum, minimum)
        self.baseRTO = Self.clamp(initial, minimum, self.maximum)
    }

    private static func clamp(_ value: TimeAmount, _ low: TimeAmount, _ high: TimeAmount) -> TimeAmount {
        min(max(value, low), high)
    }

    /// The current RTO including backoff.
    var rto: TimeAmount {
        var value = baseRTO
        for _ in 0..<backoffShift {
            value = value + value
            if value >= maximum { return maximum }
        }
        return value
    }

    mutating func sample(_ rtt: TimeAmount) {
        let r = max(rtt, .nanoseconds(0))
        if let srtt = smoothed, let rttvar = variance {
            let delta = srtt > r ? srtt - r : r - srtt
            variance = .nanoseconds((3 * rttvar.nanoseconds + delta.nanoseconds) / 4)
            smoothed = .nanoseconds((7 * srtt.nanoseconds + r.nanoseconds) / 8)
        } else {
            smoothed = r
            variance = .nanoseconds(r.nanoseconds / 2)
        }
        recompute()
    }

    /// Doubles the RTO (RFC 6298 5.5), capped at the maximum.
    mutating func backOff() {
        if rto < maximum { backoffShift += 1 }
    }

    /// New data was acknowledged: drop the backoff (as Linux does; RFC 6298 allows either).
    mutating func resetBackoff() { backoffShift = 0 }

    private mutating func recompute() {
        guard let srtt = smoothed, let rttvar = variance else { return }
        let spread = max(Self.granularity, .nanoseconds(4 * rttvar.nanoseconds))
        baseRTO = Self.clamp(srtt + spread, minimum, maximum)
    }
}
