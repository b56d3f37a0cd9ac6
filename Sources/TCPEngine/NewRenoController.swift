import NIOCore

/// RFC 5681 slow start and congestion avoidance, with the RFC 6582 window choices at the start
/// and end of recovery. Slow start runs HyStart++ (RFC 9406).
public struct NewRenoController: CongestionController {
    public private(set) var congestionWindow: Int
    public private(set) var slowStartThreshold = Int(Int32.max)
    private let mss: Int
    private let initialWindow: Int
    private var bytesAckedInAvoidance = 0
    private var hyStart = HyStartPlusPlus()
    static let congestionWindowCap = 1 << 30

    public init(mss: Int, initialWindow: Int) {
        self.mss = max(1, mss)
        self.initialWindow = initialWindow
        self.congestionWindow = initialWindow
    }

    public var isInSlowStart: Bool { congestionWindow < slowStartThreshold }

    public mutating func onAcknowledged(_ sample: CongestionAckSample) {
        // RFC 7661: a window the application did not fill was not tested, so it does not grow.
        guard !sample.applicationLimited else { return }
        if isInSlowStart {
            let (growth, exit) = slowStartGrowth(&hyStart, sample: sample, mss: mss)
            if exit {
                slowStartThreshold = congestionWindow
            } else {
                congestionWindow = min(congestionWindow + growth, Self.congestionWindowCap)
            }
            return
        }
        bytesAckedInAvoidance += sample.ackedBytes
        if bytesAckedInAvoidance >= congestionWindow {
            bytesAckedInAvoidance -= congestionWindow
            congestionWindow = min(congestionWindow + mss, Self.congestionWindowCap)
        }
    }

    public mutating func onCongestionEvent(now: NIODeadline, bytesInFlight: Int) {
        slowStartThreshold = max(bytesInFlight / 2, 2 * mss)
        congestionWindow = slowStartThreshold
        bytesAckedInAvoidance = 0
        hyStart.reset()
    }

    public mutating func onRecoveryExit(now: NIODeadline, bytesInFlight: Int) {
        // RFC 6582 3.2 (5), option 2 (as Linux): pacing keeps a drained pipe from bursting.
        congestionWindow = slowStartThreshold
    }

    public mutating func onSendResumed(now: NIODeadline, idle: TimeAmount, retransmissionTimeout: TimeAmount) {
        guard
            let restart = restartAfterIdle(
                window: congestionWindow, slowStartThreshold: slowStartThreshold, initialWindow: initialWindow,
                idle: idle, retransmissionTimeout: retransmissionTimeout)
        else { return }
        (congestionWindow, slowStartThreshold) = restart
        bytesAckedInAvoidance = 0
    }

    public mutating func onRetransmissionTimeout(now: NIODeadline, bytesInFlight: Int, newCongestionEvent: Bool) {
        if newCongestionEvent { slowStartThreshold = max(bytesInFlight / 2, 2 * mss) }
        congestionWindow = mss
        bytesAckedInAvoidance = 0
        hyStart.reset()
    }
}
