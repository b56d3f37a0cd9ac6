import NIOCore

#if canImport(Glibc)
import Glibc
#endif

extension SocketAddress {
    /// The address as people read it: `127.0.0.1:40219`, `[::1]:6080`. An IPv4 peer seen through
    /// a dual-stack socket (`::ffff:127.0.0.1`) shows as plain IPv4. Log lines, errors and the
    /// tools all print addresses this way.
    public var ipAndPort: String {
        guard var ip = ipAddress else { return description }
        let mappedPrefix = "::ffff:"
        if IPAddressBytes(from: self)?.isIPv4Mapped == true, ip.lowercased().hasPrefix(mappedPrefix) {
            ip.removeFirst(mappedPrefix.count)
        }
        let port = port.map(String.init) ?? "?"
        return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }
}

/// Turning what a user typed into a socket address, and socket failures into one readable phrase
/// (SwiftNIO's own error text names its internals).
enum AddressText {
    struct Failure: Error {
        var message: String
    }

    /// A host as users write it: a name, an IPv4 address, or an IPv6 address bare or in brackets
    /// (`[::1]`, the form addresses print in).
    static func unbracketed(_ host: String) -> String {
        guard host.count > 2, host.hasPrefix("["), host.hasSuffix("]") else { return host }
        return String(host.dropFirst().dropLast())
    }

    static func resolve(_ host: String, port: Int) throws(Failure) -> SocketAddress {
        do {
            return try SocketAddress.makeAddressResolvingHost(unbracketed(host), port: port)
        } catch let error as SocketAddressError.UnknownHost {
            throw Failure(message: "cannot resolve \(host): \(error.errorDescription)")
        } catch {
            throw Failure(message: "cannot resolve \(host): \(describe(error))")
        }
    }

    /// Every address of `host` for UDP, in the order to try them (RFC 8305 4): IPv6 first, then
    /// the families alternating, each family in the resolver's order; duplicates dropped. No
    /// AI_ADDRCONFIG: it would hide ::1 on a host whose only IPv6 address is loopback.
    static func resolveAll(_ host: String, port: Int) throws(Failure) -> [SocketAddress] {
        let name = unbracketed(host)
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
        hints.ai_protocol = Int32(IPPROTO_UDP)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(name, String(port), &hints, &list)
        guard status == 0, let list else {
            let reason = status == EAI_SYSTEM ? String(cString: strerror(errno)) : String(cString: gai_strerror(status))
            throw Failure(message: "cannot resolve \(host): \(reason)")
        }
        defer { freeaddrinfo(list) }
        var v6: [SocketAddress] = []
        var v4: [SocketAddress] = []
        var entry: UnsafeMutablePointer<addrinfo>? = list
        while let current = entry {
            defer { entry = current.pointee.ai_next }
            guard let raw = current.pointee.ai_addr else { continue }
            switch current.pointee.ai_family {
            case AF_INET6:
                let address = raw.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { SocketAddress($0.pointee, host: name) }
                if !v6.contains(address) { v6.append(address) }
            case AF_INET:
                let address = raw.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { SocketAddress($0.pointee, host: name) }
                if !v4.contains(address) { v4.append(address) }
            default:
                continue
            }
        }
        var ordered: [SocketAddress] = []
        for index in 0..<max(v6.count, v4.count) {
            if index < v6.count { ordered.append(v6[index]) }
            if index < v4.count { ordered.append(v4[index]) }
        }
        guard !ordered.isEmpty else { throw Failure(message: "cannot resolve \(host): no IPv4 or IPv6 address") }
        return ordered
    }

    /// What went wrong opening, binding or resolving a socket, as a phrase.
    static func describe(_ error: Error) -> String {
        switch error {
        case let error as IOError:
            if error.errnoCode == EADDRINUSE { return "address in use (another socket is bound to this port)" }
            return String(cString: strerror(error.errnoCode))
        case let error as SocketAddressError.UnknownHost:
            return error.errorDescription
        default:
            return "\(error)"
        }
    }
}
