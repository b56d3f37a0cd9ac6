import NIOCore

/// Per-source-address token bucket for new sessions, in a fixed-size set-associative table:
/// memory is allocated once, every call touches one set of `ways` slots (O(1)), and a new
/// address evicts the least recently used slot of its set.
///
/// It runs only after a valid cookie, so the addresses are return-routable, not spoofed.
/// Eviction forgets a drained bucket (a returning address starts full): the price of the cap.
struct SourceRateLimiter: Sendable {
    private struct Slot: Sendable {
        var address = IPAddressBytes(high: 0, low: 0)
        /// Tokens held, in nanoseconds of refill time (one token = `tokenCost`), so refill is exact.
        var credit: UInt64 = 0
        /// Uptime nanoseconds of the last refill; doubles as the LRU stamp.
        var lastSeen: UInt64 = 0
        var occupied = false
    }

    static let ways = 4

    let ratePerSecond: Double
    let burst: Double
    /// Nanoseconds of refill per token (1 when the rate is 0, which never refills).
    private let tokenCost: UInt64
    /// Credit of a full bucket.
    private let burstCredit: UInt64
    private var slots: [Slot]
    private let setCount: Int
    /// Per-instance hash seed so no one can aim addresses at one set from outside.
    private let seed: UInt64
    private(set) var count = 0

    /// Slots actually allocated: `capacity` rounded up to a whole number of sets.
    var capacity: Int { slots.count }

    /// How many times `allow` ran on a copy of the table that shared its slots with another: each
    /// such call copied all of them. Its owner must change it in place (tests check this stays 0).
    private(set) var sharedMutations = 0
    private var owner = Owner()
    private final class Owner: Sendable {}

    init(ratePerSecond: Double = 100, burst: Double = 200, capacity: Int = 4_096) {
        // Clamped so the integer conversions below can never trap on odd configuration.
        self.ratePerSecond = ratePerSecond.isNaN ? 0 : min(max(ratePerSecond, 0), 1e9)
        self.burst = burst.isNaN ? 1 : min(max(burst.rounded(.down), 1), 1e9)
        tokenCost = self.ratePerSecond > 0 ? UInt64(min(max(1, (1e9 / self.ratePerSecond).rounded()), 1e18)) : 1
        let (full, overflow) = UInt64(self.burst).multipliedReportingOverflow(by: tokenCost)
        burstCredit = overflow ? .max : full
        setCount = max(1, (min(capacity, 1 << 30) + Self.ways - 1) / Self.ways)
        slots = Array(repeating: Slot(), count: setCount * Self.ways)
        var generator = SystemRandomNumberGenerator()
        seed = generator.next()
    }

    /// Takes one token from `address`'s bucket if it has one.
    mutating func allow(_ address: IPAddressBytes, now: NIODeadline) -> Bool {
        if !isKnownUniquelyReferenced(&owner) {
            sharedMutations += 1
            owner = Owner()
        }
        let nowNanos = now.uptimeNanoseconds
        let base = setIndex(address) * Self.ways
        var empty: Int?
        var leastRecent = base
        for index in base..<(base + Self.ways) {
            let slot = slots[index]
            if slot.occupied {
                if slot.address == address { return take(at: index, now: nowNanos) }
                if slot.lastSeen < slots[leastRecent].lastSeen { leastRecent = index }
            } else if empty == nil {
                empty = index
            }
        }
        let victim = empty ?? leastRecent
        if !slots[victim].occupied { count += 1 }
        slots[victim] = Slot(address: address, credit: burstCredit, lastSeen: nowNanos, occupied: true)
        return take(at: victim, now: nowNanos)
    }

    private mutating func take(at index: Int, now: UInt64) -> Bool {
        var slot = slots[index]
        // A clock that went backwards refills nothing rather than underflowing.
        if ratePerSecond > 0, now > slot.lastSeen {
            let refilled = slot.credit.addingReportingOverflow(now - slot.lastSeen)
            slot.credit = refilled.overflow ? burstCredit : min(burstCredit, refilled.partialValue)
        }
        slot.lastSeen = max(slot.lastSeen, now)
        let allowed = slot.credit >= tokenCost
        if allowed { slot.credit -= tokenCost }
        slots[index] = slot
        return allowed
    }

    private func setIndex(_ address: IPAddressBytes) -> Int {
        var hasher = Hasher()
        hasher.combine(seed)
        hasher.combine(address)
        // Hasher output is uniformly distributed; magnitude modulo the set count stays in range.
        return Int(UInt(bitPattern: hasher.finalize()) % UInt(setCount))
    }
}
