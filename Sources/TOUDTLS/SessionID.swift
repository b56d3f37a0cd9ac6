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

    static func randomISN() -> UInt32 {
        var generator = SystemRandomNumberGenerator()
        return generator.next()
    }

    /// An inner TCP source port from the IANA dynamic range.
    static func randomEphemeralPort() -> UInt16 {
        UInt16.random(in: 49152...65535)
    }
}
