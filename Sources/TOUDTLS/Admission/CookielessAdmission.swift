import NIOCore
import TOUWire

/// When a listener answers a ClientHello at once instead of asking for a cookie first (wire
/// format, "Fast setup"): the initiator padded its ClientHello so that the answer, capped at 3x
/// what it sent until it proves its address, amplifies little; the listener is not under pressure
/// (few handshakes in progress); and a global budget bounds the key exchanges and signatures that
/// spoofed ClientHellos could make it compute.
struct CookielessAdmission: Sendable {
    let alwaysRequireCookie: Bool
    /// Below this many handshakes in progress the listener is not under pressure.
    let halfOpenThreshold: Int
    /// Cookieless admissions per second, as a token bucket of one second's worth.
    let budgetPerSecond: Int
    private var tokens: Double
    private var lastRefill: NIODeadline

    init(alwaysRequireCookie: Bool, halfOpenThreshold: Int, budgetPerSecond: Int, now: NIODeadline) {
        self.alwaysRequireCookie = alwaysRequireCookie
        self.halfOpenThreshold = max(0, halfOpenThreshold)
        self.budgetPerSecond = max(0, budgetPerSecond)
        self.tokens = Double(self.budgetPerSecond)
        self.lastRefill = now
    }

    /// Whether this ClientHello datagram (its whole UDP payload counted) may be admitted without a
    /// cookie now; takes one token of the budget when it may. `sourceAllows` is asked last, so a
    /// refusal here costs the source's bucket nothing.
    mutating func admitsWithoutCookie(_ summary: DTLSDatagramSummary, udpPayloadBytes: Int, halfOpen: Int,
                                      now: NIODeadline, sourceAllows: () -> Bool) -> Bool {
        guard !alwaysRequireCookie, summary.isClientHello, summary.clientHelloHasCookie == false,
              udpPayloadBytes >= DTLSDatagramSummary.paddedClientHelloSize, halfOpen < halfOpenThreshold else {
            return false
        }
        let elapsed = Double((now - lastRefill).nanoseconds) / 1e9
        if elapsed > 0 {
            tokens = min(Double(budgetPerSecond), tokens + elapsed * Double(budgetPerSecond))
            lastRefill = now
        }
        guard tokens >= 1, sourceAllows() else { return false }
        tokens -= 1
        return true
    }
}
