import NIOCore

/// The pacer (quinn's `pacing.rs` idea): a token bucket that lets a small burst (about a
/// millisecond of data, at least two segments) go per wakeup, so a window is spread over the
/// round trip without a timer per segment. The connection keeps the wakeup in its timer table.
struct Pacer {
    private var tokens: Double = 0
    private var updatedAt: NIODeadline?

    /// Nil if a segment may leave at `now`, else when to try again. `rate` is in bytes per
    /// second; nil or zero means no pacing.
    mutating func delay(now: NIODeadline, rate: Double?, segmentSpace: Int) -> NIODeadline? {
        guard let rate, rate > 0 else { return nil }
        let burst = max(2 * Double(segmentSpace), rate / 1000)
        if let last = updatedAt {
            let elapsed = Double(max(0, (now - last).nanoseconds)) / 1e9
            tokens = min(burst, tokens + elapsed * rate)
        } else {
            tokens = burst
        }
        updatedAt = now
        if tokens > 0 { return nil }
        // Clamped in floating point: converting an out-of-range Double to Int64 would trap.
        let wait = min((-tokens + 1) / rate * 1e9 + 1, 1e9)
        return now + .nanoseconds(Int64(max(wait, 1)))
    }

    /// `bytes` left; a paced sender spends tokens for them.
    mutating func onTransmit(_ bytes: Int, paced: Bool) {
        if paced { tokens -= Double(bytes) }
    }
}
