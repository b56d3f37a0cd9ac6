import NIOCore
import Testing
@testable import TOUDTLS

private let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
private let here = IPAddressBytes(ipv4: (192, 0, 2, 1))

@Suite struct RefusedAttemptLogTests {
    @Test("a client repeating the same refused attempt is logged once while remembered")
    func repeatsLoggedOnce() {
        var log = RefusedAttemptLog(burst: 5, interval: .seconds(1), memory: .seconds(30))
        #expect(log.admit(address: here, port: 5000, reason: "no certificate", now: t0) == 0)
        #expect(log.admit(address: here, port: 5000, reason: "no certificate", now: t0 + .seconds(1)) == nil)
        #expect(log.admit(address: here, port: 5000, reason: "no certificate", now: t0 + .seconds(29)) == nil)
        // Another port or another reason is another attempt.
        #expect(log.admit(address: here, port: 5001, reason: "no certificate", now: t0 + .seconds(29)) == 0)
        #expect(log.admit(address: here, port: 5000, reason: "timed out", now: t0 + .seconds(29)) == 0)
        // Forgotten after `memory`.
        #expect(log.admit(address: here, port: 5000, reason: "no certificate", now: t0 + .seconds(31)) == 0)
    }

    @Test("a flood is logged at `burst` lines, then one per interval, and the next line counts what was left out")
    func floodIsRateLimited() {
        var log = RefusedAttemptLog(burst: 3, interval: .seconds(1), memory: .seconds(30))
        var logged = 0
        for port in 0..<1000 {
            if log.admit(address: here, port: UInt16(port), reason: "plain", now: t0 + .milliseconds(Int64(port))) != nil {
                logged += 1
            }
        }
        // Three at once, then one after a second (the 1000 attempts span 999 ms).
        #expect(logged == 3)
        #expect(log.admit(address: here, port: 2000, reason: "plain", now: t0 + .seconds(1)) == 997)
        #expect(log.admit(address: here, port: 2001, reason: "plain", now: t0 + .seconds(1)) == nil)
        #expect(log.admit(address: here, port: 2002, reason: "plain", now: t0 + .seconds(5)) == 1)
    }

    @Test("a clock that goes backwards neither traps nor refills")
    func backwardsClock() {
        var log = RefusedAttemptLog(burst: 1, interval: .seconds(1))
        #expect(log.admit(address: here, port: 1, reason: "x", now: t0 + .seconds(10)) == 0)
        #expect(log.admit(address: here, port: 2, reason: "x", now: t0) == nil)
        #expect(log.admit(address: here, port: 3, reason: "x", now: t0 + .seconds(11)) == 1)
    }
}
