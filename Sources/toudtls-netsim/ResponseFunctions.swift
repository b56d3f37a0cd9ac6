import Foundation

/// Loss-based throughput predictions, in bits per second.
enum ResponseFunctions {
    /// Mathis et al. (1997): rate = MSS/RTT x C/sqrt(p), with MSS the payload a segment carries.
    /// C = sqrt(3/2) = 1.22: the engine counts acknowledged bytes in congestion avoidance, so the
    /// window grows one segment per RTT however many ACKs there are, and the delayed-ACK constant
    /// (0.87, for a window that grows per ACK) does not apply.
    static func mathis(payload: Int, rtt: Double, loss: Double, constant: Double = 1.5.squareRoot()) -> Double? {
        guard loss > 0 else { return nil }
        return Double(payload) * 8 / rtt * constant / loss.squareRoot()
    }

    /// RFC 9438 section 5.1: CUBIC's average window is the larger of its cubic region's,
    /// (C(3+beta)/(4(1-beta)))^(1/4) x RTT^(3/4) / p^(3/4), and the Reno-friendly region's,
    /// which alpha_cubic = 3(1-beta)/(1+beta) makes equal to Reno's sqrt(3/2)/sqrt(p); in segments.
    static func cubic(payload: Int, rtt: Double, loss: Double, c: Double = 0.4, beta: Double = 0.7) -> Double? {
        guard loss > 0 else { return nil }
        let cubicWindow = pow(c * (3 + beta) / (4 * (1 - beta)), 0.25) * pow(rtt, 0.75) / pow(loss, 0.75)
        let renoFriendlyWindow = (1.5 / loss).squareRoot()
        return max(cubicWindow, renoFriendlyWindow) * Double(payload) * 8 / rtt
    }
}
