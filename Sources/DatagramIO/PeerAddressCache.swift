import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// Turns the raw socket addresses recvmmsg fills in into `SocketAddress` values without building
/// one (and formatting its text) per datagram: a peer seen lately is found by comparing bytes.
/// Direct-mapped, so a listener's few hundred active peers mostly hit.
struct PeerAddressCache {
    /// The address bytes that matter, packed: family, port, address (and scope for IPv6).
    struct Key: Equatable {
        var a: UInt64
        var b: UInt64
        var c: UInt64
    }

    private static let slots = 256
    /// Empty until the first datagram: a connected socket never needs them.
    private var keys: [Key] = []
    private var values: [SocketAddress?] = []
    private(set) var misses = 0

    /// The address in `raw` (a sockaddr of `length` bytes), or nil if it is not IPv4 or IPv6.
    mutating func address(_ raw: UnsafeRawPointer, length: Int) -> SocketAddress? {
        guard let key = Self.key(raw, length: length) else { return nil }
        var hash = (key.a ^ (key.b &* 0x9E37_79B9_7F4A_7C15) ^ (key.c &* 0xC2B2_AE3D_27D4_EB4F))
        hash ^= hash >> 29
        let slot = Int(truncatingIfNeeded: hash) & (Self.slots - 1)
        if keys.isEmpty {
            keys = [Key](repeating: Key(a: 0, b: 0, c: 0), count: Self.slots)
            values = [SocketAddress?](repeating: nil, count: Self.slots)
        }
        if keys[slot] == key, let cached = values[slot] { return cached }
        guard let address = socketAddress(raw, length: length) else { return nil }
        misses += 1
        keys[slot] = key
        values[slot] = address
        return address
    }

    static func key(_ raw: UnsafeRawPointer, length: Int) -> Key? {
        let family = raw.loadUnaligned(fromByteOffset: 0, as: sa_family_t.self)
        switch CInt(family) {
        case AF_INET where length >= MemoryLayout<sockaddr_in>.size:
            let port = UInt64(raw.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
            let address = UInt64(raw.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
            return Key(a: 4 | port << 16 | address << 32, b: 0, c: 0)
        case AF_INET6 where length >= MemoryLayout<sockaddr_in6>.size:
            let port = UInt64(raw.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
            let high = raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
            let low = raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self)
            let scope = UInt64(raw.loadUnaligned(fromByteOffset: 24, as: UInt32.self))
            return Key(a: 6 | port << 16 | scope << 32, b: high, c: low)
        default:
            return nil
        }
    }
}

/// A `SocketAddress` of the sockaddr in `raw`, or nil for another family or a short length.
func socketAddress(_ raw: UnsafeRawPointer, length: Int) -> SocketAddress? {
    let family = raw.loadUnaligned(fromByteOffset: 0, as: sa_family_t.self)
    switch CInt(family) {
    case AF_INET where length >= MemoryLayout<sockaddr_in>.size:
        return SocketAddress(raw.loadUnaligned(as: sockaddr_in.self))
    case AF_INET6 where length >= MemoryLayout<sockaddr_in6>.size:
        return SocketAddress(raw.loadUnaligned(as: sockaddr_in6.self))
    default:
        return nil
    }
}
