#if os(Linux)
import NIOCore
import TOUWire

/// IPv4 or IPv6 addresses of one TCP flow as seen by the engine, and the wrapping of its
/// segments in real IP headers with the standard pseudo-header checksum (RFC 9293 3.1,
/// RFC 8200 8.1), for handing them to the kernel through a TUN device.
struct LinuxInteropFlow {
    enum Family { case v4, v6 }
    let family: Family
    /// The engine's address and the kernel's, 4 or 16 bytes each.
    let engineAddress: [UInt8]
    let kernelAddress: [UInt8]
    private var identification: UInt16 = 0

    init(family: Family, engineAddress: [UInt8], kernelAddress: [UInt8]) {
        self.family = family
        self.engineAddress = engineAddress
        self.kernelAddress = kernelAddress
    }

    enum PacketError: Error, Equatable {
        case notForUs
        case malformed(String)
        case badIPChecksum
        case badTCPChecksum
    }

    /// The engine's segment as an IP packet from the engine to the kernel.
    mutating func wrap(_ segment: TCPSegment) -> ByteBuffer {
        let tcpLength = segment.headerLength + segment.payload.readableBytes
        var packet = ByteBufferAllocator().buffer(capacity: 40 + tcpLength)
        switch family {
        case .v4:
            identification &+= 1
            packet.writeMultipleIntegers(
                UInt8(0x45), UInt8(0), UInt16(20 + tcpLength), identification, UInt16(0x4000), UInt8(64), UInt8(6),
                UInt16(0))
            packet.writeBytes(engineAddress)
            packet.writeBytes(kernelAddress)
            let headerSum = packet.withUnsafeReadableBytes { InternetChecksum.accumulate($0, into: 0) }
            packet.setInteger(~InternetChecksum.fold(headerSum), at: 10)
        case .v6:
            packet.writeMultipleIntegers(UInt32(0x6000_0000), UInt16(tcpLength), UInt8(6), UInt8(64))
            packet.writeBytes(engineAddress)
            packet.writeBytes(kernelAddress)
        }
        let tcpStart = packet.writerIndex
        segment.write(into: &packet, checksum: .zero)
        let sum = packet.withUnsafeReadableBytes { raw in
            InternetChecksum.accumulate(
                UnsafeRawBufferPointer(rebasing: raw[tcpStart...]),
                into: pseudoHeaderSum(source: engineAddress, destination: kernelAddress, tcpLength: tcpLength))
        }
        packet.setInteger(~InternetChecksum.fold(sum), at: tcpStart + 16)
        return packet
    }

    /// The TCP segment in an IP packet from the kernel to the engine, with both checksums
    /// verified. Packets of other flows or protocols (MLD, router solicitations) are `.notForUs`.
    func unwrap(_ packet: ByteBuffer) throws(PacketError) -> TCPSegment {
        guard let first = packet.getInteger(at: packet.readerIndex, as: UInt8.self) else {
            throw .malformed("empty packet")
        }
        let tcp: ByteBuffer
        switch (first >> 4, family) {
        case (4, .v4):
            let headerLength = Int(first & 0x0F) * 4
            guard headerLength >= 20, packet.readableBytes >= headerLength,
                let total = packet.getInteger(at: packet.readerIndex + 2, as: UInt16.self),
                Int(total) <= packet.readableBytes, Int(total) >= headerLength,
                let fragment = packet.getInteger(at: packet.readerIndex + 6, as: UInt16.self),
                let proto = packet.getInteger(at: packet.readerIndex + 9, as: UInt8.self),
                let source = packet.getBytes(at: packet.readerIndex + 12, length: 4),
                let destination = packet.getBytes(at: packet.readerIndex + 16, length: 4)
            else { throw .malformed("short IPv4 header") }
            guard proto == 6, source == kernelAddress, destination == engineAddress else { throw .notForUs }
            guard fragment & 0x3FFF == 0 else { throw .malformed("fragmented") }
            let headerSum = packet.withUnsafeReadableBytes { raw in
                InternetChecksum.accumulate(UnsafeRawBufferPointer(rebasing: raw[0..<headerLength]), into: 0)
            }
            guard InternetChecksum.fold(headerSum) == 0xFFFF else { throw .badIPChecksum }
            guard let slice = packet.getSlice(at: packet.readerIndex + headerLength, length: Int(total) - headerLength)
            else { throw .malformed("IPv4 length") }
            tcp = slice
        case (6, .v6):
            guard packet.readableBytes >= 40,
                let payloadLength = packet.getInteger(at: packet.readerIndex + 4, as: UInt16.self),
                let nextHeader = packet.getInteger(at: packet.readerIndex + 6, as: UInt8.self),
                let source = packet.getBytes(at: packet.readerIndex + 8, length: 16),
                let destination = packet.getBytes(at: packet.readerIndex + 24, length: 16)
            else { throw .malformed("short IPv6 header") }
            guard nextHeader == 6, source == kernelAddress, destination == engineAddress else { throw .notForUs }
            guard let slice = packet.getSlice(at: packet.readerIndex + 40, length: Int(payloadLength)) else {
                throw .malformed("IPv6 payload length")
            }
            tcp = slice
        default:
            throw .notForUs
        }
        let sum = tcp.withUnsafeReadableBytes { raw in
            InternetChecksum.accumulate(
                raw, into: pseudoHeaderSum(source: kernelAddress, destination: engineAddress, tcpLength: tcp.readableBytes))
        }
        guard InternetChecksum.fold(sum) == 0xFFFF else { throw .badTCPChecksum }
        do {
            return try TCPSegment.parse(tcp, checksum: .zero)
        } catch {
            throw .malformed("TCP: \(error)")
        }
    }

    /// The pseudo-header's contribution: addresses, protocol 6 and the TCP length (IPv4's
    /// 16-bit length and IPv6's 32-bit one sum alike).
    private func pseudoHeaderSum(source: [UInt8], destination: [UInt8], tcpLength: Int) -> UInt64 {
        var sum = UInt64(6) &+ UInt64(tcpLength & 0xFFFF) &+ UInt64(tcpLength >> 16)
        (source + destination).withUnsafeBytes { sum = InternetChecksum.accumulate($0, into: sum) }
        return sum
    }
}
#endif
