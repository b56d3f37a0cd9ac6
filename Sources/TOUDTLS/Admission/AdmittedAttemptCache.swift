import DequeModule
import NIOCore

/// Remembers which `(address, port, S)` were admitted during the cookie lifetime, so a captured
/// ClientHello with a still-valid cookie cannot open a second session.
///
/// Memory is hard-capped: when full of unexpired entries, the oldest is evicted. That favours
/// admitting new peers over remembering the oldest admission; a replay of an evicted attempt
/// only costs a half-open slot, since the replayer holds none of the handshake's keys.
/// Times are expected to be non-decreasing (the endpoint's loop clock).
struct AdmittedAttemptCache: Sendable {
    let capacity: Int
    let lifetime: TimeAmount

    /// When each key was admitted; the authority for "is it here".
    private var admittedAt: [PeerKey: NIODeadline] = [:]
    /// Admission order, for O(1) expiry and eviction from the front.
    private var order: Deque<(key: PeerKey, at: NIODeadline)> = []

    init(capacity: Int = 65_536, lifetime: TimeAmount = .seconds(120)) {
        self.capacity = max(capacity, 1)
        self.lifetime = lifetime
    }

    /// Number of remembered admissions (at most `capacity`).
    var count: Int { admittedAt.count }

    /// Records `peer` as admitted at `now` and returns true, or returns false if it was already
    /// admitted within the lifetime (the caller answers with a fresh HelloVerifyRequest).
    mutating func insertIfNew(_ peer: PeerKey, now: NIODeadline) -> Bool {
        expire(now: now)
        if let at = admittedAt[peer], now - at < lifetime {
            return false
        }
        while order.count >= capacity, let oldest = order.popFirst() {
            forget(oldest)
        }
        admittedAt[peer] = now
        order.append((peer, now))
        return true
    }

    /// Drops expired entries from the front. Amortised O(1): each entry is removed once.
    private mutating func expire(now: NIODeadline) {
        while let oldest = order.first, now - oldest.at >= lifetime {
            order.removeFirst()
            forget(oldest)
        }
    }

    /// Removes the map entry only if it still belongs to this queue entry (it may have been
    /// re-admitted later after expiring, which appended a newer queue entry).
    private mutating func forget(_ entry: (key: PeerKey, at: NIODeadline)) {
        if admittedAt[entry.key] == entry.at {
            admittedAt[entry.key] = nil
        }
    }
}
