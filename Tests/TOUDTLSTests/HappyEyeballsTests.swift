import Foundation
import NIOCore
import Testing
@testable import TOUDTLS

#if canImport(Glibc)
import Glibc
#endif

/// Happy Eyeballs (RFC 8305) over real loopback sockets: IPv6 first, IPv4 250 ms later, the
/// first handshake to complete wins and the other attempt is closed.
@Suite("Happy Eyeballs", .serialized)
struct HappyEyeballsTests {
    /// A UDP socket on ::1 that takes datagrams and never answers: an IPv6 path that blackholes.
    final class SilentIPv6Socket {
        let fd: Int32
        let port: UInt16

        init() throws {
            let fd = socket(AF_INET6, Int32(SOCK_DGRAM.rawValue), 0)
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_addr = in6addr_loopback
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
            var local = sockaddr_in6()
            var length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            _ = withUnsafeMutablePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            if fd < 0 || bound != 0 { Glibc.close(fd); throw TOUError.socketError("cannot bind ::1") }
            self.fd = fd
            self.port = UInt16(bigEndian: local.sin6_port)
        }

        /// Datagrams received so far (drains the socket).
        func drain() -> Int {
            var count = 0
            var buffer = [UInt8](repeating: 0, count: 65_536)
            while recv(fd, &buffer, buffer.count, 0) >= 0 { count += 1 }
            return count
        }

        deinit { Glibc.close(fd) }
    }

    /// UDP sockets connected to [::1]:`port` (from /proc/net/udp6).
    static func socketsConnected(toIPv6LoopbackPort port: UInt16) -> Int {
        CancellationTests.localPortsConnected(toPort: port, ipv6: true)?.count ?? -1
    }

    static func address(_ ip: String, _ port: Int) throws -> SocketAddress {
        try SocketAddress(ipAddress: ip, port: port)
    }

    @Test("addresses are ordered IPv6 first, families alternating; literals resolve to themselves")
    func ordering() throws {
        #expect(try AddressText.resolveAll("127.0.0.1", port: 9).map(\.ipAndPort) == ["127.0.0.1:9"])
        #expect(try AddressText.resolveAll("[::1]", port: 9).map(\.ipAndPort) == ["[::1]:9"])
        let localhost = try AddressText.resolveAll("localhost", port: 9)
        #expect(localhost.contains { $0.ipAndPort == "127.0.0.1:9" })
        if let firstV4 = localhost.firstIndex(where: { $0.protocol == .inet }),
           let firstV6 = localhost.firstIndex(where: { $0.protocol == .inet6 }) {
            #expect(firstV6 < firstV4)
        }
        #expect(throws: AddressText.Failure.self) { try AddressText.resolveAll("no-such-host.invalid", port: 9) }
    }

    @Test("IPv6 blackholes: IPv4 wins after the delay (and sends the request connect was given), the IPv6 attempt's socket is closed")
    func ipv6Blackholes() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0,
                                                  configuration: EndToEndTests.serverConfiguration())
        let port = try #require(listener.localAddress.port)
        let silent = try SilentIPv6Socket()
        let configuration = EndToEndTests.clientConfiguration()
        let accepted = Task {
            var iterator = listener.connections.makeAsyncIterator()
            return await iterator.next()
        }
        // The v6 address has its own port (the blackhole); TOU's inner port is the listener's.
        let v6 = try Self.address("::1", Int(silent.port))
        let v4 = try Self.address("127.0.0.1", port)
        let connection = try await TOUConnection.connect(
            to: [v6, v4], host: "localhost", port: port, configuration: configuration,
            context: try configuration.makeClientContext(), initialData: ByteBuffer(string: "request, "))
        #expect(connection.remoteAddress.ipAndPort == "127.0.0.1:\(port)")
        #expect(silent.drain() > 0, "IPv6 was not tried first")
        var open = Self.socketsConnected(toIPv6LoopbackPort: silent.port)
        for _ in 0..<250 where open != 0 {
            try await Task.sleep(for: .milliseconds(20))
            open = Self.socketsConnected(toIPv6LoopbackPort: silent.port)
        }
        #expect(open == 0, "the abandoned IPv6 attempt left its socket open")
        let serverSide = try #require(await accepted.value)
        try await connection.write(ByteBuffer(string: "over v4"))
        try await connection.finishWriting()
        var text = ""
        for try await chunk in serverSide.inbound { text += String(buffer: chunk) }
        #expect(text == "request, over v4")
        try await serverSide.close()
        try await connection.close()
        try await listener.close()
    }

    @Test("both families answer: IPv6 wins, IPv4 is never needed")
    func ipv6Preferred() async throws {
        let listener = try await TOUListener.bind(host: nil, port: 0, configuration: EndToEndTests.serverConfiguration())
        let port = try #require(listener.localAddress.port)
        let configuration = EndToEndTests.clientConfiguration()
        let accepted = Task {
            var iterator = listener.connections.makeAsyncIterator()
            return await iterator.next()
        }
        // A delay no loopback handshake needs, even beside other tests: IPv4 is never started.
        let connection = try await TOUConnection.connect(
            to: [try Self.address("::1", port), try Self.address("127.0.0.1", port)], host: "localhost", port: port,
            configuration: configuration, context: try configuration.makeClientContext(), initialData: nil,
            attemptDelay: .seconds(3))
        #expect(connection.remoteAddress.ipAndPort == "[::1]:\(port)")
        let serverSide = try #require(await accepted.value)
        async let serverClosed: Void? = try? serverSide.close()
        try await connection.close()
        _ = await serverClosed
        try await listener.close()
        #expect(await listener.counters.sessionsAccepted == 1)
    }

    /// Two paths of 600 ms round trip to one listener, the second attempt 240 ms after the first:
    /// the second's SYN reaches the server (at 1,140 ms) before the first completes (1,200 ms) and
    /// wins, and the second is abandoned (it would complete at 1,440 ms). The margin is wide
    /// because tests run beside this one can hold up either handshake for tens of milliseconds.
    @Test("the request given to connect reaches the server once, though a losing attempt's SYN reached it too")
    func requestServedOnce() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0, configuration: EndToEndTests.serverConfiguration())
        let port = try #require(listener.localAddress.port)
        let relays = try (0..<2).map { _ in try DelayRelay(listenerPort: UInt16(port), oneWayDelayMilliseconds: 300) }
        defer { for relay in relays { relay.stop() } }
        let received = LockedBox<[Int]>([])
        let server = Task {
            await withTaskGroup(of: Void.self) { group in
                for await connection in listener.connections {
                    group.addTask {
                        var bytes = 0
                        do { for try await chunk in connection.inbound { bytes += chunk.readableBytes } } catch {}
                        received.withLock { $0.append(bytes) }
                        try? await connection.close()
                    }
                }
            }
        }
        let configuration = EndToEndTests.clientConfiguration()
        let connection = try await TOUConnection.connect(
            to: relays.map { try! Self.address("127.0.0.1", Int($0.port)) }, host: "localhost", port: port,
            configuration: configuration, context: try configuration.makeClientContext(),
            initialData: ByteBuffer(string: "request"), attemptDelay: .milliseconds(240))
        // A later attempt that wins while the first one's SYN is under way can serve the request
        // twice (as TCP Fast Open can); this scenario is the first attempt winning.
        #expect(connection.remoteAddress.port == Int(relays[0].port), "the second attempt won")
        try await connection.finishWriting()
        // The abandoned attempt's session at the listener ends with the client's reset.
        for _ in 0..<300 where received.withLock({ $0.count }) < 2 {
            try await Task.sleep(for: .milliseconds(10))
        }
        try await connection.close()
        try await listener.close()
        await server.value
        let perConnection = received.withLock { $0 }
        print("bytes per accepted connection: \(perConnection)")
        #expect(perConnection.filter { $0 > 0 } == [7], "bytes per accepted connection: \(perConnection)")
    }

    @Test("IPv6 refused (nothing listening): IPv4 is tried as soon as IPv6 fails, not after the delay")
    func ipv6RefusedFallsBack() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0,
                                                  configuration: EndToEndTests.serverConfiguration())
        let port = try #require(listener.localAddress.port)
        let configuration = EndToEndTests.clientConfiguration()
        let accepted = Task {
            var iterator = listener.connections.makeAsyncIterator()
            return await iterator.next()
        }
        // A delay far longer than the test: only the IPv6 failure (ICMP port unreachable) starts IPv4.
        let connection = try await TOUConnection.connect(
            to: [try Self.address("::1", port), try Self.address("127.0.0.1", port)], host: "localhost", port: port,
            configuration: configuration, context: try configuration.makeClientContext(), initialData: nil,
            attemptDelay: .seconds(3600))
        #expect(connection.remoteAddress.ipAndPort == "127.0.0.1:\(port)")
        let serverSide = try #require(await accepted.value)
        async let serverClosed: Void? = try? serverSide.close()
        try await connection.close()
        _ = await serverClosed
        try await listener.close()
    }

    @Test("an unreachable IPv6 address does not spoil the saved session: IPv4 resumes it")
    func unreachableFamilyKeepsTheSession() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0,
                                                  configuration: EndToEndTests.serverConfiguration())
        let port = try #require(listener.localAddress.port)
        let configuration = EndToEndTests.clientConfiguration()
        let context = try configuration.makeClientContext()
        let serverSides = Task {
            var iterator = listener.connections.makeAsyncIterator()
            for _ in 0..<2 {
                guard let connection = await iterator.next() else { return }
                for try await _ in connection.inbound {}
                try await connection.close()
            }
        }
        var resumed: [Bool] = []
        for _ in 0..<2 {
            let connection = try await TOUConnection.connect(
                to: [try Self.address("::1", port), try Self.address("127.0.0.1", port)], host: "localhost", port: port,
                configuration: configuration, context: context, initialData: nil, attemptDelay: .seconds(3600))
            resumed.append(connection.isResumed)
            try await connection.finishWriting()
            try await connection.close()
        }
        try await serverSides.value
        try await listener.close()
        #expect(resumed == [false, true])
    }

    @Test("every address fails: the most telling error (untrusted) is thrown, not the unreachable one")
    func allFail() async throws {
        let listener = try await TOUListener.bind(host: "127.0.0.1", port: 0,
                                                  configuration: EndToEndTests.serverConfiguration())
        let port = try #require(listener.localAddress.port)
        let configuration = EndToEndTests.clientConfiguration(ca: "other-ca.pem")
        await #expect {
            _ = try await TOUConnection.connect(
                to: [try Self.address("::1", port), try Self.address("127.0.0.1", port)], host: "localhost",
                port: port, configuration: configuration, context: try configuration.makeClientContext(),
                initialData: nil)
        } throws: { error in
            guard case .untrustedCertificate = error as? TOUError else { return false }
            return true
        }
        try await listener.close()
    }

    @Test("cancelling a Happy Eyeballs connect cancels every attempt")
    func cancelled() async throws {
        let silent = try SilentIPv6Socket()
        let silentV4 = try RawUDPSocket()
        defer { silentV4.close() }
        var configuration = EndToEndTests.clientConfiguration()
        configuration.handshakeTimeout = .seconds(600)
        let context = try configuration.makeClientContext()
        let addresses = [try Self.address("::1", Int(silent.port)), try Self.address("127.0.0.1", Int(silentV4.port))]
        let attempt = Task {
            try await TOUConnection.connect(to: addresses, host: "localhost", port: 6080, configuration: configuration,
                                            context: context, initialData: nil, attemptDelay: .milliseconds(10))
        }
        // Both attempts are under way once the IPv4 one has sent its ClientHello.
        var heard = false
        for _ in 0..<500 where !heard { heard = pollReadable([silentV4], milliseconds: 20)[0] }
        #expect(heard)
        attempt.cancel()
        let result = await attempt.result
        #expect(throws: CancellationError.self) { try result.get() }
        var open = Self.socketsConnected(toIPv6LoopbackPort: silent.port) + CancellationTests.socketsConnected(toPort: silentV4.port)
        for _ in 0..<250 where open != 0 {
            try await Task.sleep(for: .milliseconds(20))
            open = Self.socketsConnected(toIPv6LoopbackPort: silent.port) + CancellationTests.socketsConnected(toPort: silentV4.port)
        }
        #expect(open == 0)
    }
}
