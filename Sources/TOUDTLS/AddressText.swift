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
