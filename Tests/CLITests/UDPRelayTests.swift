import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A bare UDP socket on 127.0.0.1 for driving the relay in tests.
final class UDPTestSocket {
    let fd: Int32
    let port: UInt16

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw UDPRelayError.system("socket", errno) }
        self.fd = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard ok else {
            let code = errno
            close(fd)
            throw UDPRelayError.system("bind", code)
        }
        port = UInt16(bigEndian: address.sin_port)
        var size: Int32 = 4 << 20
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8], to port: UInt16) {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        _ = bytes.withUnsafeBytes { raw in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, raw.baseAddress, raw.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
    }

    /// The next datagram and its source port, or nil when none comes within `timeout` seconds.
    func receive(timeout: TimeInterval) -> (bytes: [UInt8], sourcePort: UInt16)? {
        var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&descriptor, 1, Int32(timeout * 1000)) > 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 65536)
        var source = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let count = buffer.withUnsafeMutableBytes { raw in
            withUnsafeMutablePointer(to: &source) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    recvfrom(fd, raw.baseAddress, raw.count, 0, $0, &length)
                }
            }
        }
        guard count >= 0 else { return nil }
        return (Array(buffer[0..<count]), UInt16(bigEndian: source.sin_port))
    }

    /// Everything that arrives until `quiet` seconds pass with nothing new.
    func receiveAll(quiet: TimeInterval = 0.3) -> [[UInt8]] {
        var all: [[UInt8]] = []
        while let next = receive(timeout: quiet) { all.append(next.bytes) }
        return all
    }
}

private func numbered(_ index: Int) -> [UInt8] {
    withUnsafeBytes(of: UInt32(index).bigEndian) { Array($0) } + [UInt8](repeating: UInt8(index & 0xFF), count: 60)
}

private func number(_ bytes: [UInt8]) -> Int {
    bytes.prefix(4).reduce(0) { $0 << 8 | Int($1) }
}

@Suite("UDP relay", .serialized)
struct UDPRelayTests {
    @Test("without impairment every datagram passes in order, both ways, from the relay's own port")
    func transparent() throws {
        let target = try UDPTestSocket()
        let client = try UDPTestSocket()
        let relay = try UDPRelay(targetPort: target.port)
        defer { relay.stop() }
        for index in 0..<300 { client.send(numbered(index), to: relay.port) }
        var sources: Set<UInt16> = []
        var received: [Int] = []
        while let next = target.receive(timeout: 0.5) {
            received.append(number(next.bytes))
            sources.insert(next.sourcePort)
        }
        #expect(received == Array(0..<300))
        #expect(sources == [relay.upstreamPort])
        #expect(relay.upstreamPort != client.port)
        target.send([1, 2, 3], to: relay.upstreamPort)
        let answer = try #require(client.receive(timeout: 2))
        #expect(answer.bytes == [1, 2, 3])
        #expect(answer.sourcePort == relay.port)
        // A stranger writing to the relay's upstream socket is not passed to the client.
        let stranger = try UDPTestSocket()
        stranger.send([9], to: relay.upstreamPort)
        #expect(client.receive(timeout: 0.3) == nil)
    }

    func lossyRun(seed: UInt64) throws -> (received: [Int], stats: RelayDirectionStats) {
        let target = try UDPTestSocket()
        let client = try UDPTestSocket()
        let relay = try UDPRelay(targetPort: target.port, toTarget: RelayImpairment(lossPercent: 30), seed: seed)
        defer { relay.stop() }
        for index in 0..<1000 {
            client.send(numbered(index), to: relay.port)
            // Pace a little so the kernel never drops on the way into the relay.
            if index % 50 == 49 { Thread.sleep(forTimeInterval: 0.005) }
        }
        let received = target.receiveAll().map(number)
        relay.stop()
        return (received, relay.stats.toTarget)
    }

    @Test("seeded loss: about the asked share is lost, the same seed loses the same datagrams")
    func seededLoss() throws {
        let first = try lossyRun(seed: 42)
        let again = try lossyRun(seed: 42)
        let other = try lossyRun(seed: 7)
        #expect(first.stats.received == 1000)
        #expect(first.stats.lost + first.stats.forwarded == 1000)
        #expect((230...370).contains(first.stats.lost), "\(first.stats)")
        #expect(first.received.count == first.stats.forwarded)
        #expect(first.received == again.received)
        #expect(first.received != other.received)
        #expect(first.received == first.received.sorted(), "loss alone does not reorder")
    }

    @Test("duplication, reordering and delay")
    func duplicateReorderDelay() throws {
        let target = try UDPTestSocket()
        let client = try UDPTestSocket()
        let relay = try UDPRelay(targetPort: target.port,
                                 toTarget: RelayImpairment(duplicatePercent: 100, reorderPercent: 20,
                                                           reorderExtraDelay: 0.02, delay: 0.05),
                                 seed: 3)
        defer { relay.stop() }
        let start = Date()
        client.send(numbered(0), to: relay.port)
        let first = try #require(target.receive(timeout: 2))
        #expect(Date().timeIntervalSince(start) >= 0.045, "the delay is applied")
        for index in 1..<200 { client.send(numbered(index), to: relay.port) }
        let received = [number(first.bytes)] + target.receiveAll().map(number)
        let stats = relay.stats.toTarget
        #expect(received.count == 400, "\(stats)")
        #expect(Dictionary(grouping: received, by: { $0 }).values.allSatisfy { $0.count == 2 })
        #expect(stats.reordered > 0)
        #expect(received != received.sorted(), "some datagrams were overtaken")
    }

    @Test("the queue is bounded: beyond the limit datagrams are dropped and counted")
    func boundedQueue() throws {
        let target = try UDPTestSocket()
        let client = try UDPTestSocket()
        let relay = try UDPRelay(targetPort: target.port,
                                 toTarget: RelayImpairment(delay: 0.3, queueLimit: 10))
        defer { relay.stop() }
        for index in 0..<50 { client.send(numbered(index), to: relay.port) }
        let received = target.receiveAll(quiet: 0.6).map(number)
        #expect(received == Array(0..<10))
        #expect(relay.stats.toTarget.overflowed == 40)
    }

    @Test("rebind() moves the upstream side to a new port and forgets the old one, like a NAT")
    func rebinds() throws {
        let target = try UDPTestSocket()
        let client = try UDPTestSocket()
        let relay = try UDPRelay(targetPort: target.port)
        defer { relay.stop() }
        client.send([1], to: relay.port)
        let before = try #require(target.receive(timeout: 2))
        let newPort = try relay.rebind()
        #expect(newPort != before.sourcePort && newPort == relay.upstreamPort)
        client.send([2], to: relay.port)
        let after = try #require(target.receive(timeout: 2))
        #expect(after.bytes == [2] && after.sourcePort == newPort)
        target.send([3], to: before.sourcePort)
        #expect(client.receive(timeout: 0.3) == nil, "the old mapping is gone")
        target.send([4], to: newPort)
        #expect(client.receive(timeout: 2)?.bytes == [4])
    }

    @Test("stop() returns promptly and frees the port")
    func stops() throws {
        let target = try UDPTestSocket()
        let relay = try UDPRelay(targetPort: target.port, toTarget: RelayImpairment(delay: 5))
        let client = try UDPTestSocket()
        client.send([1], to: relay.port)
        let start = Date()
        relay.stop()
        relay.stop()
        #expect(Date().timeIntervalSince(start) < 1)
        #expect(target.receive(timeout: 0.1) == nil)
    }
}
