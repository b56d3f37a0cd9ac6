import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Sends one UDP datagram to [::1]:port from an ephemeral port.
private func sendIPv6(_ bytes: [UInt8], to port: UInt16) throws {
    let fd = socket(AF_INET6, Int32(SOCK_DGRAM.rawValue), 0)
    guard fd >= 0 else { throw UDPRelayError.system("socket", errno) }
    defer { close(fd) }
    var address = sockaddr_in6()
    address.sin6_family = sa_family_t(AF_INET6)
    address.sin6_port = port.bigEndian
    address.sin6_addr = in6addr_loopback
    let sent = bytes.withUnsafeBytes { raw in
        withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(fd, raw.baseAddress, raw.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
            }
        }
    }
    guard sent == bytes.count else { throw UDPRelayError.system("sendto", errno) }
}

/// The reader against files the real tcpdump wrote, so the capture tests rest on a checked parser.
@Suite("pcap files from the real tcpdump",
       .enabled(if: TcpdumpCapture.unavailableReason == nil,
                Comment(rawValue: "skipped: \(TcpdumpCapture.unavailableReason ?? "")")))
struct PcapTcpdumpTests {
    @Test("IPv4 and IPv6 datagrams on lo come back byte for byte, with their ports and sizes")
    func roundTrip() throws {
        let receiver = try UDPTestSocket()
        let sender = try UDPTestSocket()
        let capture = try TcpdumpCapture(port: Int(receiver.port))
        defer { capture.discard() }
        let small: [UInt8] = Array(0..<200)
        let large = (0..<1472).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        sender.send(small, to: receiver.port)
        sender.send(large, to: receiver.port)
        try sendIPv6(small, to: receiver.port)
        // Traffic on another port must stay out of the file.
        let other = try UDPTestSocket()
        sender.send([1, 2, 3], to: other.port)
        #expect(receiver.receive(timeout: 2)?.bytes == small)
        #expect(receiver.receive(timeout: 2)?.bytes == large)
        Thread.sleep(forTimeInterval: 0.2)
        capture.stop()
        #expect(capture.packetsDroppedByKernel == 0, "\(capture.errorOutput)")
        let file = try PcapFile(contentsOf: capture.file)
        let datagrams = try file.udpDatagrams()
        try #require(datagrams.count == 3, "link type \(file.linkType): \(datagrams.map(\.payload.count)) \(capture.errorOutput)")
        #expect(datagrams.map(\.payload) == [small, large, small])
        #expect(datagrams.map(\.isIPv6) == [false, false, true])
        #expect(datagrams[0].sourcePort == sender.port && datagrams[0].destinationPort == receiver.port)
        #expect(datagrams[0].source == "127.0.0.1" && datagrams[2].destination == "0:0:0:0:0:0:0:1")
        #expect(datagrams[1].ipPacketLength == 1500, "1472 bytes of payload fill an Ethernet MTU exactly")
        #expect(datagrams[2].ipPacketLength == 40 + 8 + 200)
    }
}
