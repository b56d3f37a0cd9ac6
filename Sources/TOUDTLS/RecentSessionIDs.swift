import DequeModule
import NIOCore

/// Session IDs that ended recently, each remembered for `lifetime`, at most `capacity` (the
/// oldest goes first). Times are expected to be non-decreasing (the endpoint's loop clock).
struct RecentSessionIDs {
    let capacity: Int
    let lifetime: TimeAmount
    private var members: Set<UInt64> = []
    private var order: Deque<(sid: UInt64, at: NIODeadline)> = []

    init(capacity: Int = 4_096, lifetime: TimeAmount = .seconds(10)) {
        self.capacity = max(1, capacity)
        self.lifetime = lifetime
    }

    mutating func insert(_ sid: UInt64, now: NIODeadline) {
        expire(now: now)
        while order.count >= capacity, let oldest = order.popFirst() { members.remove(oldest.sid) }
        if members.insert(sid).inserted { order.append((sid, now)) }
    }

    mutating func contains(_ sid: UInt64, now: NIODeadline) -> Bool {
        expire(now: now)
        return members.contains(sid)
    }

    var count: Int { members.count }

    private mutating func expire(now: NIODeadline) {
        while let oldest = order.first, now - oldest.at >= lifetime {
            order.removeFirst()
            members.remove(oldest.sid)
        }
    }
}
