import NIOCore

/// A listener's admission state, in one reference so the endpoint changes its tables in place.
final class ListenerAdmission {
    /// The keys that derive SIDs and cookies.
    var keys: StatelessAdmission
    var admitted = AdmittedAttemptCache()
    var rateLimiter: SourceRateLimiter
    var cookieless: CookielessAdmission

    init(_ configuration: TOUConfiguration, now: NIODeadline) {
        keys = StatelessAdmission(now: now)
        rateLimiter = SourceRateLimiter(ratePerSecond: configuration.newSessionsPerSecondPerSource,
                                        burst: configuration.newSessionBurstPerSource)
        cookieless = CookielessAdmission(
            alwaysRequireCookie: configuration.alwaysRequireCookie,
            halfOpenThreshold: configuration.cookielessHandshakeThreshold ?? configuration.maximumHalfOpenSessions / 4,
            budgetPerSecond: configuration.cookielessAdmissionsPerSecond, now: now)
    }
}
