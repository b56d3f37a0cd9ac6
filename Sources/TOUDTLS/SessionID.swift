/// Random identifiers for sessions and TCP connections (SystemRandomNumberGenerator is the OS CSPRNG).
enum SessionID {
    /// A random, non-zero 64-bit session ID.
    static func random() -> UInt64 {
        var generator = SystemRandomNumberGenerator()
        while true {
            let value = generator.next() as UInt64
            if value != 0 { return value }
        }
    }

    /// A listener with several workers puts the worker's index in the SID's first byte on the
    /// wire (its most significant), where the steering program reads it from D; the other 56 bits
    /// stay as derived or drawn. Never 0.
    static func onWorker(_ sid: UInt64, worker: Int, of workers: Int) -> UInt64 {
        guard workers > 1 else { return sid }
        let placed = UInt64(truncatingIfNeeded: worker) << workerShift | (sid & ~(0xFF << workerShift))
        return placed == 0 ? 1 : placed
    }

    /// The worker a listener's SID names (meaningful only at a listener with several workers).
    static func worker(of sid: UInt64) -> Int { Int(truncatingIfNeeded: sid >> workerShift) }

    static let workerShift: UInt64 = 56

    static func randomISN() -> UInt32 {
        var generator = SystemRandomNumberGenerator()
        return generator.next()
    }

    /// An inner TCP source port from the IANA dynamic range.
    static func randomEphemeralPort() -> UInt16 {
        UInt16.random(in: 49152...65535)
    }
}
