#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import NIOCore

/// RFC 9438 CUBIC: window growth as a cubic function of the time since the last congestion
/// event, never slower than Reno's (the Reno-friendly region), with fast convergence.
/// Slow start runs HyStart++ (RFC 9406).
public struct CubicController: CongestionController {
    private static let c = 0.4
    private static let beta = 0.7
    /// RFC 9438 4.3: Reno-friendly additive increase that matches Reno's average rate.
    private static let alpha = 3 * (1 - beta) / (1 + beta)

    private let mss: Int
    private let initialWindow: Int
    private var window: Double
    public private(set) var slowStartThreshold = Int(Int32.max)
    private var hyStart = HyStartPlusPlus()
    /// W_max (bytes) before the last reduction, and the one before it (fast convergence).
    private var windowMax: Double = 0
    private var epochStart: NIODeadline?
    /// Seconds the cubic curve takes to return to W_max from the epoch start.
    private var k: Double = 0
    /// The Reno-friendly estimate, bytes.
    private var renoEstimate: Double = 0
    private var windowAtEpoch: Double = 0

    public init(mss: Int, initialWindow: Int) {
        self.mss = max(1, mss)
        self.initialWindow = initialWindow
        self.window = Double(initialWindow)
    }

    public var congestionWindow: Int { Int(window) }
    public var isInSlowStart: Bool { congestionWindow < slowStartThreshold }

    public mutating func onAcknowledged(_ sample: CongestionAckSample) {
        guard !sample.applicationLimited else { return }
        if isInSlowStart {
            let (growth, exit) = slowStartGrowth(&hyStart, sample: sample, mss: mss)
            if exit {
                slowStartThreshold = congestionWindow
            } else {
                window = min(window + Double(growth), Double(NewRenoController.congestionWindowCap))
            }
            return
        }
        let segment = Double(mss)
        if epochStart == nil {
            epochStart = sample.now
            windowAtEpoch = window
            renoEstimate = window
            if windowMax < window {
                // Past the old maximum (e.g. after slow start): the curve starts at its plateau.
                windowMax = window
                k = 0
            } else {
                k = cbrt((windowMax - window) / segment / Self.c)
            }
        }
        let rtt = Double((sample.smoothedRTT ?? .milliseconds(100)).nanoseconds) / 1e9
        let elapsed = Double((sample.now - (epochStart ?? sample.now)).nanoseconds) / 1e9
        // W_cubic(t + RTT): where the window should be one round from now.
        let offset = elapsed + rtt - k
        let cubicTarget = (Self.c * offset * offset * offset) * segment + windowMax
        let target = min(max(cubicTarget, window), 1.5 * window)
        renoEstimate += Self.alpha * segment * Double(sample.ackedBytes) / window
        let cubicNow = Self.c * (elapsed - k) * (elapsed - k) * (elapsed - k) * segment + windowMax
        if cubicNow < renoEstimate {
            window = max(window, renoEstimate)
        } else {
            window += (target - window) * Double(sample.ackedBytes) / window
        }
        window = min(window, Double(NewRenoController.congestionWindowCap))
    }

    private mutating func reduce() {
        // Fast convergence (RFC 9438 4.7): a flow whose maximum shrinks releases bandwidth.
        if window < windowMax {
            windowMax = window * (1 + Self.beta) / 2
        } else {
            windowMax = window
        }
        slowStartThreshold = max(Int(window * Self.beta), 2 * mss)
        epochStart = nil
        hyStart.reset()
    }

    public mutating func onCongestionEvent(now: NIODeadline, bytesInFlight: Int) {
        reduce()
        window = Double(slowStartThreshold)
    }

    public mutating func onRecoveryExit(now: NIODeadline, bytesInFlight: Int) {
        window = Double(slowStartThreshold)
    }

    public mutating func onSendResumed(now: NIODeadline, idle: TimeAmount, retransmissionTimeout: TimeAmount) {
        // RFC 9438 5.8 (Linux's CA_EVENT_TX_START): time without sending is not time on the
        // curve, or the first ACK after a pause would jump the window toward a target far ahead.
        if let start = epochStart { epochStart = min(start + idle, now) }
        guard
            let restart = restartAfterIdle(
                window: congestionWindow, slowStartThreshold: slowStartThreshold, initialWindow: initialWindow,
                idle: idle, retransmissionTimeout: retransmissionTimeout)
        else { return }
        window = Double(restart.window)
        slowStartThreshold = restart.slowStartThreshold
    }

    public mutating func onRetransmissionTimeout(now: NIODeadline, bytesInFlight: Int, newCongestionEvent: Bool) {
        if newCongestionEvent { slowStartThreshold = max(Int(window * Self.beta), 2 * mss) }
        // RFC 9438 4.8: the first congestion avoidance after a timeout starts its curve at the
        // window it then has (K = 0, W_max = that window), not at the maximum before the timeout.
        windowMax = 0
        epochStart = nil
        hyStart.reset()
        window = Double(mss)
    }
}
