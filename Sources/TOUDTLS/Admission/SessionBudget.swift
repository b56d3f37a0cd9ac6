import NIOConcurrencyHelpers

/// A listener's sessions and handshakes in progress, counted across its workers so that its limits
/// hold for the listener as a whole. Changed when a session starts, completes its handshake or
/// ends, never per datagram, so one lock serves every worker. Two workers admitting at the same
/// moment may each see room for one more: the limits hold within one session per worker.
final class SessionBudget: Sendable {
    private let counts = NIOLockedValueBox((sessions: 0, halfOpen: 0))

    var sessions: Int { counts.withLockedValue { $0.sessions } }
    var halfOpen: Int { counts.withLockedValue { $0.halfOpen } }

    func add(sessions: Int = 0, halfOpen: Int = 0) {
        counts.withLockedValue {
            $0.sessions += sessions
            $0.halfOpen += halfOpen
        }
    }
}
