import NIOCore

/// An IP address as 16 bytes (IPv4 as v4-mapped `::ffff:a.b.c.d`) in two big-endian halves,
/// so it hashes and compares without touching `SocketAddress`'s boxed storage or strings.
struct IPAddressBytes: Hashable, Sendable {
    /// Bytes 0..<8 of the address, big-endian.
    var high: UInt64
    /// Bytes 8..<16 of the address, big-endian.
    var low: UInt64

    init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    init(ipv4 octets: (UInt8, UInt8, UInt8, UInt8)) {
        high = 0
        low = 0x0000_FFFF_0000_0000
            | UInt64(octets.0) << 24 | UInt64(octets.1) << 16 | UInt64(octets.2) << 8 | UInt64(octets.3)
    }

    /// nil for Unix-domain addresses, which never carry TOU.
    init?(from address: SocketAddress) {
        switch address {
        case .v4(let v4):
            // sin_addr holds the address in network byte order.
            let octets = withUnsafeBytes(of: v4.address.sin_addr) { raw -> (UInt8, UInt8, UInt8, UInt8)? in
                guard raw.count == 4 else { return nil }
                return (raw[0], raw[1], raw[2], raw[3])
            }
            guard let octets else { return nil }
            self.init(ipv4: octets)
        case .v6(let v6):
            var high: UInt64 = 0
            var low: UInt64 = 0
            let complete = withUnsafeBytes(of: v6.address.sin6_addr) { raw -> Bool in
                guard raw.count == 16 else { return false }
                for index in 0..<8 {
                    high = high << 8 | UInt64(raw[index])
                    low = low << 8 | UInt64(raw[index + 8])
                }
                return true
            }
            guard complete else { return nil }
            self.init(high: high, low: low)
        case .unixDomainSocket:
            return nil
        }
    }

    var isIPv4Mapped: Bool { high == 0 && low >> 32 == 0x0000_FFFF }
}

/// What identifies a new-session attempt before any state exists: `(source address, port, S)`.
struct PeerKey: Hashable, Sendable {
    var address: IPAddressBytes
    var port: UInt16
    var sid: UInt64

    /// Bytes fed to the SID and cookie HMACs: address(16) | port(2) | sid(8), all big-endian.
    static let macInputLength = 26

    /// Calls `body` with the MAC input in a stack buffer, so the flood path never allocates.
    func withMACInput<Result>(_ body: (UnsafeRawBufferPointer) -> Result) -> Result {
        withUnsafeTemporaryAllocation(byteCount: Self.macInputLength, alignment: 1) { raw in
            raw.storeBytes(of: address.high.bigEndian, toByteOffset: 0, as: UInt64.self)
            raw.storeBytes(of: address.low.bigEndian, toByteOffset: 8, as: UInt64.self)
            raw.storeBytes(of: port.bigEndian, toByteOffset: 16, as: UInt16.self)
            raw.storeBytes(of: sid.bigEndian, toByteOffset: 18, as: UInt64.self)
            return body(UnsafeRawBufferPointer(raw))
        }
    }
}
