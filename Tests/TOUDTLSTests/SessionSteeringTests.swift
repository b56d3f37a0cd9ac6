import NIOCore
import Testing
import TOUWire
@testable import TOUDTLS

/// The listener's reuseport steering program, run over GUE headers by an interpreter of the few
/// classic BPF instructions it uses (the kernel's own runs in ListenerWorkersTests and
/// ClientEndpointTests).
@Suite("Steering program")
struct SessionSteeringTests {
    static let hash: UInt32 = 0xFFFF_FFFF

    /// What the program returns for `packet` (the UDP payload); nil if it runs off its end or
    /// loads past the packet.
    static func run(_ program: [SessionSteering.Instruction], on packet: [UInt8]) -> UInt32? {
        var a: UInt32 = 0
        var pc = 0
        var steps = 0
        while pc >= 0, pc < program.count, steps < 100 {
            let instruction = program[pc]
            pc += 1
            steps += 1
            switch instruction.code {
            case 0x30:
                guard Int(instruction.k) < packet.count else { return nil }
                a = UInt32(packet[Int(instruction.k)])
            case 0x54: a &= instruction.k
            case 0x94: a %= instruction.k
            case 0x05: pc += Int(instruction.k)
            case 0x45: pc += Int((a & instruction.k) != 0 ? instruction.jumpIfTrue : instruction.jumpIfFalse)
            case 0x15: pc += Int(a == instruction.k ? instruction.jumpIfTrue : instruction.jumpIfFalse)
            case 0x06: return instruction.k
            case 0x16: return a
            default: return nil
            }
        }
        return nil
    }

    /// A header and 16 bytes of payload after it.
    static func packet(_ header: GUEHeader) -> [UInt8] {
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        header.write(into: &buffer)
        buffer.writeRepeatingByte(0xEE, count: 16)
        return Array(buffer.readableBytesView)
    }

    @Test("a datagram with D goes to the worker D's first byte names, whatever else the header holds", arguments: [1, 2, 4])
    func destinationDecides(workers: Int) {
        let program = SessionSteering.program(workers: workers)
        for first in [UInt64(0), 1, 3, 200] {
            let destination = first << 56 | 0x00AB_CDEF_0123_4567
            for header in [GUEHeader.secure(source: 0x1111_2222_3333_4455, destination: destination),
                           .secure(source: nil, destination: destination),
                           .plain(source: 0x1111_2222_3333_4455, destination: destination),
                           .plain(source: nil, destination: destination)] {
                #expect(Self.run(program, on: Self.packet(header)) == UInt32(first), "\(header)")
            }
        }
    }

    @Test("a new attempt (S, no D) goes to S's last byte modulo the workers, the same for each of its datagrams", arguments: [1, 2, 3, 4])
    func sourceSpreadsAttempts(workers: Int) {
        let program = SessionSteering.program(workers: workers)
        var seen = Set<UInt32>()
        for last in UInt64(0)..<UInt64(16) {
            let source = 0x0102_0304_0506_0700 | last
            for header in [GUEHeader.secure(source: source, destination: nil), .plain(source: source, destination: nil)] {
                let index = Self.run(program, on: Self.packet(header))
                #expect(index == UInt32(last) % UInt32(workers), "\(header)")
                if let index { seen.insert(index) }
            }
        }
        #expect(seen.count == workers)
    }

    @Test("a header with neither S nor D is left to the kernel's hash")
    func neitherLeavesTheHash() {
        let program = SessionSteering.program(workers: 2)
        #expect(Self.run(program, on: Self.packet(.secure(source: nil, destination: nil))) == Self.hash)
        #expect(Self.run(program, on: Self.packet(.plain(source: nil, destination: nil))) == Self.hash)
    }
}
