import NIOCore
import Testing
import TOUWire

@testable import TCPEngine

private let mss = 1000

private func sample(
    acked: Int, inFlight: Int = 1_000_000, rtt: TimeAmount? = .milliseconds(40), ack: UInt32 = 0,
    highest: UInt32 = 0, now: NIODeadline
) -> CongestionAckSample {
    CongestionAckSample(
        ackedBytes: acked, bytesInFlight: inFlight, rttSample: rtt, smoothedRTT: .milliseconds(40),
        minimumRTT: .milliseconds(40), acknowledgment: ack, highestSent: highest,
        applicationLimited: false, now: now)
}

@Suite struct NewRenoControllerTests {
    @Test func slowStartThenHalvingThenLinearGrowth() {
        var c = NewRenoController(mss: mss, initialWindow: 10 * mss)
        c.onAcknowledged(sample(acked: 5 * mss, now: t0))
        #expect(c.congestionWindow == 12 * mss)  // byte counting, L = 2
        c.onCongestionEvent(now: t0, bytesInFlight: 12 * mss)
        #expect(c.slowStartThreshold == 6 * mss && c.congestionWindow == 6 * mss)
        #expect(!c.isInSlowStart)
        c.onAcknowledged(sample(acked: 3 * mss, now: at(10)))
        #expect(c.congestionWindow == 6 * mss)
        c.onAcknowledged(sample(acked: 3 * mss, now: at(20)))
        #expect(c.congestionWindow == 7 * mss)  // one MSS per window acknowledged
        c.onRetransmissionTimeout(now: at(30), bytesInFlight: 7 * mss, newCongestionEvent: true)
        #expect(c.congestionWindow == mss && c.slowStartThreshold == 3500)
        // A second timeout with no progress between is the same event: ssthresh is held.
        c.onRetransmissionTimeout(now: at(230), bytesInFlight: 7 * mss, newCongestionEvent: false)
        #expect(c.congestionWindow == mss && c.slowStartThreshold == 3500)
    }

    @Test func applicationLimitedACKsDoNotGrowTheWindow() {
        var c = NewRenoController(mss: mss, initialWindow: 10 * mss)
        var limited = sample(acked: 2 * mss, now: t0)
        limited.applicationLimited = true
        c.onAcknowledged(limited)
        #expect(c.congestionWindow == 10 * mss)
    }
}

@Suite struct CubicControllerTests {
    @Test func reductionIsBetaAndRegrowthIsConcaveToWmax() {
        var c = CubicController(mss: mss, initialWindow: 1000 * mss)
        c.onCongestionEvent(now: t0, bytesInFlight: 1000 * mss)
        #expect(c.slowStartThreshold == 700 * mss && c.congestionWindow == 700 * mss)
        c.onRecoveryExit(now: t0, bytesInFlight: 700 * mss)
        // K = cbrt(300 / 0.4) = 9.09 s. A large window keeps Reno's estimate (700 + 0.53 per
        // RTT) below the curve, which rises fastest right after the reduction (concave) and
        // flattens as it nears W_max.
        var now = t0
        var windows: [Int] = []
        for _ in 0..<227 {
            now = now + .milliseconds(40)
            c.onAcknowledged(sample(acked: c.congestionWindow, now: now))
            windows.append(c.congestionWindow)
        }
        let early = windows[10] - windows[0]
        let nearK = windows[226] - windows[216]
        #expect(early > 5 * nearK)
        #expect(windows[226] > 990 * mss && windows[226] <= 1001 * mss)
        // Past K the curve turns convex: probing beyond the old maximum speeds up again.
        var later: [Int] = []
        for _ in 0..<100 {
            now = now + .milliseconds(40)
            c.onAcknowledged(sample(acked: c.congestionWindow, now: now))
            later.append(c.congestionWindow)
        }
        #expect(later[99] - later[89] > later[10] - later[0])
    }

    @Test func fastConvergenceLowersWmaxWhenTheWindowShrinks() {
        var c = CubicController(mss: mss, initialWindow: 100 * mss)
        c.onCongestionEvent(now: t0, bytesInFlight: 100 * mss)  // W_max 100
        c.onCongestionEvent(now: at(10), bytesInFlight: 70 * mss)  // 70 < 100: W_max = 70 * 0.85
        #expect(c.congestionWindow == 49 * mss)
        // An RTO during that recovery is the same congestion event: ssthresh is held (RFC 5681
        // 4.2); taking 0.7 of the reduced window again would reduce twice for one event.
        c.onRetransmissionTimeout(now: at(20), bytesInFlight: 49 * mss, newCongestionEvent: false)
        #expect(c.congestionWindow == mss && c.slowStartThreshold == 49 * mss)
    }

    /// RFC 9438 4.8: after a timeout the first congestion avoidance starts its curve at the window
    /// it has then (K = 0, W_max = that window). Aiming at the maximum from before the timeout
    /// (K = 9 s to return to 1000 segments) would grow the window by tens of segments per round.
    @Test func timeoutRestartsTheCurveAtTheWindowOfCongestionAvoidance() {
        var c = CubicController(mss: mss, initialWindow: 1000 * mss)
        c.onRetransmissionTimeout(now: t0, bytesInFlight: 1000 * mss, newCongestionEvent: true)
        #expect(c.congestionWindow == mss && c.slowStartThreshold == 700 * mss)
        var now = t0
        while c.isInSlowStart {
            now = now + .milliseconds(1)
            c.onAcknowledged(sample(acked: 2 * mss, now: now))
        }
        let start = c.congestionWindow
        #expect(start >= 700 * mss && start <= 702 * mss)
        // One second of congestion avoidance at a 40 ms RTT: W_cubic(1 s) = W + 0.4 segments;
        // the Reno-friendly estimate (0.53 segments per RTT) leads with about 13 segments.
        for _ in 0..<25 {
            now = now + .milliseconds(40)
            c.onAcknowledged(sample(acked: c.congestionWindow, now: now))
        }
        #expect(c.congestionWindow - start <= 16 * mss)
    }

    /// RFC 9438 5.8 (Linux's CA_EVENT_TX_START): a pause in sending shifts the epoch, so the
    /// curve continues where it stopped instead of jumping by the time spent idle.
    @Test func idleTimeIsNotCountedOnTheCurve() {
        func window(pausing pause: TimeAmount) -> Int {
            var c = CubicController(mss: mss, initialWindow: 1000 * mss)
            c.onCongestionEvent(now: t0, bytesInFlight: 1000 * mss)
            c.onRecoveryExit(now: t0, bytesInFlight: 700 * mss)
            var now = t0
            for round in 0..<20 {
                if round == 10, pause > .zero {
                    now = now + pause
                    c.onSendResumed(now: now, idle: pause, retransmissionTimeout: .seconds(1))
                }
                now = now + .milliseconds(40)
                c.onAcknowledged(sample(acked: c.congestionWindow, now: now))
            }
            return c.congestionWindow
        }
        #expect(window(pausing: .milliseconds(900)) == window(pausing: .zero))
    }

    @Test func renoFriendlyRegionKeepsUpWithReno() {
        // Small window, short RTT: the cubic curve is flat and the Reno estimate leads.
        var c = CubicController(mss: mss, initialWindow: 10 * mss)
        c.onCongestionEvent(now: t0, bytesInFlight: 10 * mss)
        var now = t0
        for _ in 0..<20 {
            now = now + .milliseconds(1)
            c.onAcknowledged(sample(acked: c.congestionWindow, rtt: .milliseconds(1), now: now))
        }
        // Reno would be at 7 + 20 * 0.53 segments or so; CUBIC is not slower.
        #expect(c.congestionWindow >= 15 * mss)
    }
}

@Suite struct HyStartTests {
    /// Feeds rounds of eight one-segment ACKs while the sender stays one round ahead, so each
    /// call is one HyStart++ round (the first round spans the first two calls).
    struct Driver {
        var controller = NewRenoController(mss: mss, initialWindow: 10 * mss)
        var ack: UInt32 = 0
        var now = t0
        var rounds: UInt32 = 0

        mutating func round(rtt: Int64) {
            rounds += 1
            for _ in 0..<8 {
                ack &+= 1000
                now = now + .milliseconds(1)
                controller.onAcknowledged(
                    sample(acked: 1000, rtt: .milliseconds(rtt), ack: ack, highest: (rounds + 1) * 8000, now: now))
            }
        }
    }

    @Test func risingRTTLeavesSlowStartThroughConservativeSlowStart() {
        var d = Driver()
        d.round(rtt: 40)
        d.round(rtt: 40)
        let beforeRise = d.controller.congestionWindow
        #expect(beforeRise == 10 * mss + 16 * 1000)  // slow start: every acknowledged byte
        d.round(rtt: 60)  // 60 >= 40 + max(4 ms, 40/8): conservative slow start from the 8th sample
        #expect(d.controller.isInSlowStart)
        let inCSS = d.controller.congestionWindow
        d.round(rtt: 60)
        #expect(d.controller.congestionWindow - inCSS == 8 * 1000 / 4)  // a quarter of the growth
        for _ in 0..<4 { d.round(rtt: 60) }
        // Five CSS rounds: slow start ends with ssthresh at the current window.
        #expect(!d.controller.isInSlowStart)
        #expect(d.controller.slowStartThreshold == d.controller.congestionWindow)
    }

    @Test func falseAlarmReturnsToSlowStart() {
        var d = Driver()
        d.round(rtt: 40)
        d.round(rtt: 40)
        d.round(rtt: 60)
        d.round(rtt: 30)  // below the CSS baseline: the rise was noise
        let resumed = d.controller.congestionWindow
        d.round(rtt: 30)
        #expect(d.controller.congestionWindow - resumed == 8 * 1000)
        #expect(d.controller.isInSlowStart)
    }

    @Test func steadyRTTStaysInSlowStart() {
        var d = Driver()
        for rtt: Int64 in [40, 41, 40, 42, 40, 41, 40, 40] { d.round(rtt: rtt) }
        #expect(d.controller.isInSlowStart)
        #expect(d.controller.congestionWindow == 10 * mss + 8 * 8 * 1000)
    }
}

@Suite struct PacingTests {
    @Test func aFullWindowLeavesInPacedBursts() {
        var configuration = classicConfiguration()
        configuration.pacing = true
        var c = establishedConnection(configuration: configuration)
        #expect(c.write(bytes(count: 10 * 1399)) == 10 * 1399)
        // srtt 10 ms, cwnd 13990, slow start: 2 * 13990 / 10 ms = 2.8 MB/s; the burst is the
        // larger of two segments and a millisecond's worth (2798 bytes).
        let first = c.drain(at: at(20))
        #expect(first.count == 2)
        #expect(c.stats.pacingRate == 2_798_000)
        var now = at(20)
        var total = first.count
        var wakeups = 0
        while total < 10, let deadline = c.nextDeadline, deadline < at(200) {
            now = deadline
            c.handleTimeout(now: now)
            total += c.drain(at: now).count
            wakeups += 1
        }
        #expect(total == 10)
        // Ten segments over about 14 KB / 2.8 MB/s = 5 ms, well inside one RTT.
        #expect(now - at(20) <= .milliseconds(6))
        #expect(wakeups >= 3)
    }

    @Test func noPacingSendsTheWholeWindowAtOnce() {
        var c = establishedConnection()
        #expect(c.write(bytes(count: 10 * 1399)) == 10 * 1399)
        #expect(c.drain(at: at(20)).count == 10)
        #expect(c.stats.pacingRate == nil)
    }
}
