import NIOCore

/// The connection's stored timers (quinn's `timer.rs` idea: one table instead of a deadline per
/// field). Cases are declared in expiry order: when several are due at once, `handleTimeout`
/// fires them in this order. Keepalive is not stored: its deadline follows from idle time.
enum TCPTimer: CaseIterable {
    /// 2*MSL in TIME-WAIT; closes the connection.
    case timeWait
    case delayedACK
    /// The pacer's next release.
    case pacing
    /// RFC 5482 user timeout: sent data unacknowledged for too long. Before the loss timers, so
    /// a connection that is over its limit closes instead of resending once more.
    case userTimeout
    /// RFC 8985 7 tail loss probe. Before the RTO: a probe clamped to the RTO's time stands in
    /// for it (and re-arms it).
    case tailLossProbe
    /// RFC 6298 RTO (also the SYN's retransmission timer).
    case retransmission
    /// RACK's reordering window (RFC 8985 6.2).
    case reordering
    /// Zero-window probe.
    case persist

    /// `allCases` once, so walking the order allocates nothing.
    static let expiryOrder = allCases
}

/// One optional deadline per `TCPTimer`.
struct TCPTimerTable {
    private var timeWait: NIODeadline?
    private var delayedACK: NIODeadline?
    private var pacing: NIODeadline?
    private var userTimeout: NIODeadline?
    private var retransmission: NIODeadline?
    private var tailLossProbe: NIODeadline?
    private var reordering: NIODeadline?
    private var persist: NIODeadline?

    subscript(timer: TCPTimer) -> NIODeadline? {
        get {
            switch timer {
            case .timeWait: return timeWait
            case .delayedACK: return delayedACK
            case .pacing: return pacing
            case .userTimeout: return userTimeout
            case .retransmission: return retransmission
            case .tailLossProbe: return tailLossProbe
            case .reordering: return reordering
            case .persist: return persist
            }
        }
        set {
            switch timer {
            case .timeWait: timeWait = newValue
            case .delayedACK: delayedACK = newValue
            case .pacing: pacing = newValue
            case .userTimeout: userTimeout = newValue
            case .retransmission: retransmission = newValue
            case .tailLossProbe: tailLossProbe = newValue
            case .reordering: reordering = newValue
            case .persist: persist = newValue
            }
        }
    }

    /// The earliest armed deadline (runs after every event: a walk over a static array, no
    /// allocation).
    var earliest: NIODeadline? {
        var result: NIODeadline?
        for timer in TCPTimer.expiryOrder {
            guard let deadline = self[timer] else { continue }
            if let current = result, current <= deadline { continue }
            result = deadline
        }
        return result
    }

    /// Disarms `timer` and says whether it was due at `now`.
    mutating func expire(_ timer: TCPTimer, now: NIODeadline) -> Bool {
        guard let deadline = self[timer], deadline <= now else { return false }
        self[timer] = nil
        return true
    }
}
