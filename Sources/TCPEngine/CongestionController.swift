import NIOCore

/// What the engine tells a congestion controller about one ACK that advanced SND.UNA outside
/// loss recovery.
public struct CongestionAckSample: Sendable {
    /// Bytes newly acknowledged (cumulatively) by this ACK.
    public var ackedBytes: Int
    /// Bytes outstanding before this ACK.
    public var bytesInFlight: Int
    /// An RTT measured from this ACK, if it gave one.
    public var rttSample: TimeAmount?
    public var smoothedRTT: TimeAmount?
    public var minimumRTT: TimeAmount?
    /// The cumulative ACK and the highest sequence number sent: HyStart++ counts rounds with them.
    public var acknowledgment: UInt32
    public var highestSent: UInt32
    /// The sender had less to send than the window allowed, so the window was not tested.
    public var applicationLimited: Bool
    /// The sender paces: bursts are spread anyway, so slow start may count every acked byte.
    public var paced: Bool
    public var now: NIODeadline

    public init(
        ackedBytes: Int, bytesInFlight: Int, rttSample: TimeAmount?, smoothedRTT: TimeAmount?,
        minimumRTT: TimeAmount?, acknowledgment: UInt32, highestSent: UInt32,
        applicationLimited: Bool, paced: Bool = false, now: NIODeadline
    ) {
        self.ackedBytes = ackedBytes
        self.bytesInFlight = bytesInFlight
        self.rttSample = rttSample
        self.smoothedRTT = smoothedRTT
        self.minimumRTT = minimumRTT
        self.acknowledgment = acknowledgment
        self.highestSent = highestSent
        self.applicationLimited = applicationLimited
        self.paced = paced
        self.now = now
    }
}

/// A congestion controller: owns cwnd and ssthresh. The engine owns loss detection and recovery
/// (RACK, RFC 6675, NewReno) and tells the controller when windows grow and shrink.
public protocol CongestionController: Sendable {
    var congestionWindow: Int { get }
    var slowStartThreshold: Int { get }
    var isInSlowStart: Bool { get }
    /// New data acknowledged outside recovery: grow the window.
    mutating func onAcknowledged(_ sample: CongestionAckSample)
    /// Loss detected (fast retransmit, RACK): set ssthresh and the window recovery starts with.
    mutating func onCongestionEvent(now: NIODeadline, bytesInFlight: Int)
    /// Recovery ended (everything outstanding at its start is acknowledged).
    mutating func onRecoveryExit(now: NIODeadline, bytesInFlight: Int)
    /// The retransmission timer expired: collapse to the loss window. `newCongestionEvent` is
    /// false when the timeout extends an event already answered (fast recovery's, or an earlier
    /// timeout's with no progress since): ssthresh is then held (RFC 5681 4.2).
    mutating func onRetransmissionTimeout(now: NIODeadline, bytesInFlight: Int, newCongestionEvent: Bool)
    /// Sending resumes with nothing in flight, `idle` after the last data segment went.
    mutating func onSendResumed(now: NIODeadline, idle: TimeAmount, retransmissionTimeout: TimeAmount)
    /// Bytes per second to pace at, given the smoothed RTT.
    func pacingRate(smoothedRTT: TimeAmount) -> Double
}

/// RFC 5681 4.1 restart (Linux's tcp_cwnd_restart): after more than an RTO without sending, the
/// window is halved per RTO idle, down to the restart window min(IW, cwnd), and ssthresh keeps
/// three quarters of the old window so slow start climbs back quickly. Nil when not idle that long.
func restartAfterIdle(
    window: Int, slowStartThreshold: Int, initialWindow: Int, idle: TimeAmount, retransmissionTimeout: TimeAmount
) -> (window: Int, slowStartThreshold: Int)? {
    guard idle > retransmissionTimeout, retransmissionTimeout > .zero else { return nil }
    let floor = min(initialWindow, window)
    var restarted = window
    var remaining = idle - retransmissionTimeout
    while remaining > .zero, restarted > floor {
        restarted /= 2
        remaining = remaining - retransmissionTimeout
    }
    return (max(restarted, floor), max(slowStartThreshold, window / 2 + window / 4))
}

extension CongestionController {
    /// Linux's choice: twice the window per RTT in slow start (so pacing never holds growth
    /// back), 1.2 times in congestion avoidance.
    public func pacingRate(smoothedRTT: TimeAmount) -> Double {
        let seconds = max(Double(smoothedRTT.nanoseconds), 100_000) / 1e9
        return (isInSlowStart ? 2.0 : 1.2) * Double(congestionWindow) / seconds
    }
}

/// The engine's controller: one of the built-in algorithms, stored inline (no existential, no
/// allocation) and copied whole to undo a spurious reduction. What is read per segment is kept
/// beside the enum: reading it through the enum copied the whole controller out each time.
struct AnyCongestionController: CongestionController {
    private enum Algorithm {
        case newReno(NewRenoController)
        case cubic(CubicController)
    }

    private var algorithm: Algorithm
    private(set) var congestionWindow = 0
    private(set) var slowStartThreshold = 0
    private(set) var isInSlowStart = false

    init(_ algorithm: TCPCongestionControlAlgorithm, mss: Int, initialWindow: Int) {
        switch algorithm {
        case .newReno: self.algorithm = .newReno(NewRenoController(mss: mss, initialWindow: initialWindow))
        case .cubic: self.algorithm = .cubic(CubicController(mss: mss, initialWindow: initialWindow))
        }
        apply({ _ in }, { _ in })
    }

    /// Runs the change on the controller in use and refreshes the figures kept beside it.
    private mutating func apply(
        _ newReno: (inout NewRenoController) -> Void, _ cubic: (inout CubicController) -> Void
    ) {
        switch algorithm {
        case .newReno(var c):
            newReno(&c)
            mirror(c)
            algorithm = .newReno(c)
        case .cubic(var c):
            cubic(&c)
            mirror(c)
            algorithm = .cubic(c)
        }
    }

    private mutating func mirror(_ controller: some CongestionController) {
        congestionWindow = controller.congestionWindow
        slowStartThreshold = controller.slowStartThreshold
        isInSlowStart = controller.isInSlowStart
    }

    mutating func onAcknowledged(_ sample: CongestionAckSample) {
        apply({ $0.onAcknowledged(sample) }, { $0.onAcknowledged(sample) })
    }

    mutating func onCongestionEvent(now: NIODeadline, bytesInFlight: Int) {
        apply(
            { $0.onCongestionEvent(now: now, bytesInFlight: bytesInFlight) },
            { $0.onCongestionEvent(now: now, bytesInFlight: bytesInFlight) })
    }

    mutating func onRecoveryExit(now: NIODeadline, bytesInFlight: Int) {
        apply(
            { $0.onRecoveryExit(now: now, bytesInFlight: bytesInFlight) },
            { $0.onRecoveryExit(now: now, bytesInFlight: bytesInFlight) })
    }

    mutating func onSendResumed(now: NIODeadline, idle: TimeAmount, retransmissionTimeout: TimeAmount) {
        apply(
            { $0.onSendResumed(now: now, idle: idle, retransmissionTimeout: retransmissionTimeout) },
            { $0.onSendResumed(now: now, idle: idle, retransmissionTimeout: retransmissionTimeout) })
    }

    mutating func onRetransmissionTimeout(now: NIODeadline, bytesInFlight: Int, newCongestionEvent: Bool) {
        apply(
            { $0.onRetransmissionTimeout(now: now, bytesInFlight: bytesInFlight, newCongestionEvent: newCongestionEvent) },
            { $0.onRetransmissionTimeout(now: now, bytesInFlight: bytesInFlight, newCongestionEvent: newCongestionEvent) })
    }
}
