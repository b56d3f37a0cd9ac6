import NIOCore
import Testing
import TOUWire

@testable import TCPEngine

/// RFC 5482's user timeout, per state: sent data (or a FIN, a window probe, a keepalive probe)
/// unanswered for `userTimeout` closes the connection with `.userTimeout`.
@Suite struct TCPUserTimeoutTests {
    func configuration(userTimeout: TimeAmount = .seconds(2)) -> TCPConfiguration {
        var configuration = classicConfiguration()
        configuration.userTimeout = userTimeout
        return configuration
    }

    /// Fires every deadline up to `limit` (answering nothing); returns the instant the connection
    /// closed, or nil if it is still open at `limit`.
    func runTimers(_ c: inout TCPConnection, until limit: NIODeadline) -> NIODeadline? {
        while c.state != .closed, let deadline = c.nextDeadline, deadline <= limit {
            c.handleTimeout(now: deadline)
            _ = c.drain(at: deadline)
            if c.state == .closed { return deadline }
        }
        return c.state == .closed ? limit : nil
    }

    // MARK: ESTABLISHED

    @Test func establishedUnacknowledgedDataClosesAfterTheUserTimeout() {
        var c = establishedConnection(configuration: configuration())
        #expect(c.write(bytes("hello")) == 5)
        #expect(c.drain(at: at(20)).count == 1)
        // RTOs resend at 220, 620, 1420 ms (backing off); the user timeout ends it at 20 + 2000.
        #expect(runTimers(&c, until: at(60_000)) == at(2020))
        #expect(c.drainEvents().last == .closed(.userTimeout))
        #expect(c.stats.retransmissions == 3)
    }

    @Test func withoutAUserTimeoutTheRetryLimitTakesMinutes() {
        var c = establishedConnection()
        _ = c.write(bytes("hello"))
        _ = c.drain(at: at(20))
        #expect(runTimers(&c, until: at(60_000)) == nil)
        #expect(c.state == .established)
    }

    @Test func acknowledgedProgressRestartsTheWait() {
        var c = establishedConnection(configuration: configuration())
        #expect(c.write(bytes(count: 2000)) == 2000)
        #expect(c.drain(at: at(20)).map(\.payload.readableBytes) == [1399, 601])
        #expect(runTimers(&c, until: at(1500)) == nil)
        c.receive(fromPeer(ack: localISS &+ 1400), now: at(1500))  // the first segment
        _ = c.drain(at: at(1500))
        #expect(runTimers(&c, until: at(60_000)) == at(3500))
        #expect(c.drainEvents().last == .closed(.userTimeout))
    }

    @Test func everythingAcknowledgedDisarmsIt() {
        var c = establishedConnection(configuration: configuration())
        _ = c.write(bytes("hello"))
        _ = c.drain(at: at(20))
        c.receive(fromPeer(ack: localISS &+ 6), now: at(30))
        _ = c.drain(at: at(30))
        #expect(c.nextDeadline == nil)
        #expect(runTimers(&c, until: at(600_000)) == nil)
        #expect(c.state == .established)
    }

    // MARK: Closed window (persist)

    @Test func closedWindowLivesWhileThePeerAnswersAndEndsWhenItFallsSilent() {
        var c = establishedConnection(configuration: configuration())
        c.receive(fromPeer(window: 0), now: at(20))
        #expect(c.write(bytes("hello")) == 5)
        _ = c.drain(at: at(20))
        // Every probe answered, still closed, for ten user timeouts.
        var now = at(20)
        while now < at(20_000) {
            guard let deadline = c.nextDeadline else { break }
            c.handleTimeout(now: deadline)
            _ = c.drain(at: deadline)
            now = deadline + .milliseconds(5)
            c.receive(fromPeer(window: 0), now: now)
            _ = c.drain(at: now)
        }
        #expect(c.state == .established)
        // Silence: over once the user timeout has passed, within half a timeout more (the probe spacing).
        let closedAt = runTimers(&c, until: now + .seconds(60))
        #expect(closedAt.map { $0 >= now + .seconds(2) && $0 <= now + .seconds(3) } == true, "\(String(describing: closedAt))")
        #expect(c.drainEvents().last == .closed(.userTimeout))
    }

    @Test func dataIntoAWindowThatClosedCountsOnlyThePeersSilence() {
        var c = establishedConnection(configuration: configuration())
        _ = c.write(bytes("hello"))
        _ = c.drain(at: at(20))
        // The peer closes its window without taking the data and keeps answering the resends.
        var now = at(30)
        c.receive(fromPeer(window: 0), now: now)
        while now < at(10_000) {
            guard let deadline = c.nextDeadline else { break }
            c.handleTimeout(now: deadline)
            _ = c.drain(at: deadline)
            now = deadline + .milliseconds(5)
            c.receive(fromPeer(window: 0), now: now)
            _ = c.drain(at: now)
        }
        #expect(c.state == .established)
        let closedAt = runTimers(&c, until: now + .seconds(600))
        #expect(closedAt.map { $0 >= now + .seconds(2) } == true)
        #expect(c.drainEvents().last == .closed(.userTimeout))
    }

    // MARK: CLOSE-WAIT, LAST-ACK, FIN-WAIT-1

    @Test func closeWaitDataUnacknowledgedCloses() {
        var c = establishedConnection(configuration: configuration())
        c.receive(fromPeer(flags: .fin), now: at(20))
        #expect(c.state == .closeWait)
        _ = c.drain(at: at(20))
        _ = c.write(bytes("answer"))
        _ = c.drain(at: at(30))
        #expect(runTimers(&c, until: at(60_000)) == at(2030))
        #expect(c.drainEvents().last == .closed(.userTimeout))
    }

    @Test func lastAckFINUnacknowledgedCloses() {
        var c = establishedConnection(configuration: configuration())
        c.receive(fromPeer(flags: .fin), now: at(20))
        _ = c.drain(at: at(20))
        c.finishWriting()
        _ = c.drain(at: at(30))
        #expect(c.state == .lastAck)
        #expect(runTimers(&c, until: at(60_000)) == at(2030))
        #expect(c.drainEvents().last == .closed(.userTimeout))
    }

    @Test func finWait1FINUnacknowledgedCloses() {
        var c = establishedConnection(configuration: configuration())
        c.finishWriting()
        _ = c.drain(at: at(20))
        #expect(c.state == .finWait1)
        #expect(runTimers(&c, until: at(60_000)) == at(2020))
        #expect(c.drainEvents().last == .closed(.userTimeout))
    }

    @Test func finWait2WaitsForThePeerWithNothingOutstanding() {
        var c = establishedConnection(configuration: configuration())
        c.finishWriting()
        _ = c.drain(at: at(20))
        c.receive(fromPeer(ack: localISS &+ 2), now: at(30))
        #expect(c.state == .finWait2)
        #expect(runTimers(&c, until: at(600_000)) == nil)
    }

    // MARK: Keepalive

    @Test func unansweredKeepAliveProbesCloseAfterTheUserTimeout() {
        var configuration = configuration()
        configuration.keepAlive = TCPKeepAlive(idle: .seconds(10), interval: .milliseconds(500), count: .max)
        var c = establishedConnection(configuration: configuration)
        // Idle since the SYN-ACK at 10 ms: first probe at 10,010, then every 500 ms; two seconds
        // of probes unanswered end it.
        #expect(runTimers(&c, until: at(600_000)) == at(12_010))
        #expect(c.drainEvents().last == .closed(.userTimeout))
    }

    @Test func answeredKeepAliveProbesKeepTheConnection() {
        var configuration = configuration()
        configuration.keepAlive = TCPKeepAlive(idle: .seconds(10), interval: .milliseconds(500), count: .max)
        var c = establishedConnection(configuration: configuration)
        var now = at(10)
        while now < at(100_000) {
            guard let deadline = c.nextDeadline else { break }
            c.handleTimeout(now: deadline)
            #expect(c.drain(at: deadline) == [toPeer(seq: localISS)])
            now = deadline + .milliseconds(5)
            c.receive(fromPeer(), now: now)
        }
        #expect(c.state == .established)
    }
}
