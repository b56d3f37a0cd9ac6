import NIOCore
import Testing
@testable import TOUDTLS

@Suite struct AddressTextTests {
    @Test("addresses print as people write them", arguments: [
        ("127.0.0.1", 40219, "127.0.0.1:40219"),
        ("::ffff:127.0.0.1", 40219, "127.0.0.1:40219"),
        ("::1", 6080, "[::1]:6080"),
        ("::", 6080, "[::]:6080"),
        ("2001:db8::a:b", 1, "[2001:db8::a:b]:1"),
    ])
    func ipAndPort(ip: String, port: Int, expected: String) throws {
        #expect(try SocketAddress(ipAddress: ip, port: port).ipAndPort == expected)
    }

    @Test("HOST may be an IPv6 address in brackets, the form addresses print in")
    func bracketedHost() throws {
        #expect(try AddressText.resolve("[::1]", port: 6080) == SocketAddress(ipAddress: "::1", port: 6080))
        #expect(try AddressText.resolve("::1", port: 6080) == SocketAddress(ipAddress: "::1", port: 6080))
        #expect(AddressText.unbracketed("[]") == "[]")
        #expect(AddressText.unbracketed("localhost") == "localhost")
    }

    @Test("a client verifies and saves sessions under its serverName, else the host without brackets")
    func serverNameForHost() {
        var configuration = TOUConfiguration.client(trustRoots: .pemFile("ca.pem"))
        #expect(configuration.serverName(connectingTo: "[::1]") == "::1")
        #expect(configuration.serverName(connectingTo: "localhost") == "localhost")
        configuration.serverName = "example.org"
        #expect(configuration.serverName(connectingTo: "[::1]") == "example.org")
    }

    @Test("a failed lookup says which name, in one line, without SwiftNIO's type names")
    func failedLookup() {
        #expect(throws: AddressText.Failure.self) { try AddressText.resolve("nosuch.invalid", port: 1) }
        do {
            _ = try AddressText.resolve("nosuch.invalid", port: 1)
        } catch {
            #expect(error.message.hasPrefix("cannot resolve nosuch.invalid: "))
            #expect(!error.message.contains("SocketAddressError") && !error.message.contains("\n"))
        }
    }
}
