import NIOCore

/// Which refused or failed connection attempts a listener logs. A client repeats its ClientHello
/// or SYN until it gives up, so a (peer, reason) pair is logged once while it is remembered; and
/// at most `burst` lines go out at once, then one per `interval`, so a flood cannot fill the log.
/// The next line logged says how many were left out.
struct RefusedAttemptLog {
    private struct Entry {
        var address: IPAddressBytes
        var port: UInt16
        var reason: String
        var at: NIODeadline
    }

    let burst: Int
    let interval: TimeAmount
    /// How long a (peer, reason) pair stays remembered: longer than a client keeps retrying.
    let memory: TimeAmount
    private var recent: [Entry] = []
    private var nextSlot = 0
    private let capacity: Int
    private var tokens: Int
    private var lastRefill: NIODeadline?
    private var omitted = 0

    init(burst: Int = 5, interval: TimeAmount = .seconds(1), memory: TimeAmount = .seconds(30), capacity: Int = 32) {
        self.burst = max(1, burst)
        self.interval = max(interval, .nanoseconds(1))
        self.memory = memory
        self.capacity = max(1, capacity)
        self.tokens = self.burst
    }

    /// nil: do not log this attempt. Otherwise log it, with the number of attempts left out since
    /// the last line logged.
    mutating func admit(address: IPAddressBytes, port: UInt16, reason: String, now: NIODeadline) -> Int? {
        if recent.contains(where: { $0.address == address && $0.port == port && $0.reason == reason
                                    && now < $0.at + memory }) {
            return nil
        }
        refill(now: now)
        guard tokens > 0 else {
            omitted += 1
            return nil
        }
        tokens -= 1
        remember(Entry(address: address, port: port, reason: reason, at: now))
        defer { omitted = 0 }
        return omitted
    }

    private mutating func refill(now: NIODeadline) {
        guard let last = lastRefill else {
            lastRefill = now
            return
        }
        guard now > last else { return }
        let earned = (now - last).nanoseconds / interval.nanoseconds
        guard earned > 0 else { return }
        tokens = Int(min(Int64(burst), Int64(tokens) + earned))
        lastRefill = last + .nanoseconds(earned * interval.nanoseconds)
    }

    private mutating func remember(_ entry: Entry) {
        if recent.count < capacity {
            recent.append(entry)
        } else {
            recent[nextSlot] = entry
            nextSlot = (nextSlot + 1) % capacity
        }
    }
}
