import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// The classic BPF program that steers a listener's datagrams among its workers' sockets
/// (SO_ATTACH_REUSEPORT_CBPF): a datagram with D goes to the socket whose index is D's first
/// byte (the worker its SID names, see `SessionID.onWorker`), wherever its source address moved;
/// a new attempt (S without D) to the socket its S's last byte names modulo the workers, so that
/// the attempts of one client socket shared by many connections (`TOUClientEndpoint`) spread over
/// the workers as those of many sockets do, and each attempt's retransmissions and cookie echo
/// reach the worker that saw it first; anything else keeps the kernel's hash. The program runs
/// on the UDP payload.
enum SessionSteering {
    /// One classic BPF instruction (struct sock_filter).
    struct Instruction {
        var code: UInt16
        var jumpIfTrue: UInt8
        var jumpIfFalse: UInt8
        var k: UInt32
    }

    // Opcodes (linux/filter.h): load byte absolute, AND, modulo, jumps, returns.
    private static let loadByte: UInt16 = 0x30, and: UInt16 = 0x54, modulo: UInt16 = 0x94, jump: UInt16 = 0x05
    private static let jumpIfSet: UInt16 = 0x45, jumpIfEqual: UInt16 = 0x15
    private static let returnConstant: UInt16 = 0x06, returnA: UInt16 = 0x16

    /// The program for `workers` sockets. The GUE header's optional fields follow its 4 bytes in
    /// the order T (4 bytes), S (8), D (8), as the flags say; the worker byte is D's first.
    /// An index the group does not have (the hash fallback's 0xFFFFFFFF among them) leaves the
    /// choice to the kernel's hash.
    static func program(workers: Int) -> [Instruction] {
        func op(_ code: UInt16, _ k: UInt32 = 0, _ jumpIfTrue: UInt8 = 0, _ jumpIfFalse: UInt8 = 0) -> Instruction {
            Instruction(code: code, jumpIfTrue: jumpIfTrue, jumpIfFalse: jumpIfFalse, k: k)
        }
        return [
            op(loadByte, 3),                   // 0: flags, low byte
            op(jumpIfSet, 0x80, 11, 0),        // 1: D? -> 13
            // No D: a new attempt if S is there.
            op(loadByte, 2),                   // 2: flags, high byte
            op(and, 0x03),                     // 3: T<<1 | S
            op(jumpIfEqual, 3, 0, 2),          // 4: T and S -> 5, else 7
            op(loadByte, 4 + 4 + 7),           // 5: S's last byte
            op(jump, 4),                       // 6: -> 11
            op(jumpIfEqual, 1, 0, 2),          // 7: S alone -> 8, else 10
            op(loadByte, 4 + 7),               // 8: S's last byte
            op(jump, 1),                       // 9: -> 11
            op(returnConstant, 0xFFFF_FFFF),   // 10: neither S nor D: hash
            op(modulo, UInt32(max(1, workers))),  // 11
            op(returnA),                       // 12
            // D: its first byte.
            op(loadByte, 2),                   // 13: flags, high byte
            op(and, 0x03),                     // 14: T<<1 | S
            op(jumpIfEqual, 3, 0, 2),          // 15: T and S -> 16, else 18
            op(loadByte, 4 + 4 + 8),           // 16
            op(returnA),                       // 17
            op(jumpIfEqual, 2, 0, 2),          // 18: T alone -> 19, else 21
            op(loadByte, 4 + 4),               // 19
            op(returnA),                       // 20
            op(jumpIfEqual, 1, 0, 2),          // 21: S alone -> 22, else 24
            op(loadByte, 4 + 8),               // 22
            op(returnA),                       // 23
            op(loadByte, 4),                   // 24: D alone
            op(returnA),                       // 25
        ]
    }

    /// struct sock_fprog: the program's length and where it is (the kernel copies it).
    struct Program: @unchecked Sendable {
        var length: UInt16
        var instructions: UnsafeRawPointer
    }

    static let attachReuseportCBPF: Int32 = 51  // SO_ATTACH_REUSEPORT_CBPF (asm-generic/socket.h)

    /// Attaches the program to the reuseport group of `endpoint`'s socket (any member will do).
    static func attach(to endpoint: TOUEndpoint) async throws {
        let steering = program(workers: endpoint.workers.count)
        let instructions = UnsafeMutablePointer<Instruction>.allocate(capacity: steering.count)
        instructions.initialize(from: steering, count: steering.count)
        defer { instructions.deallocate() }
        let pointer = UncheckedPointer(UnsafeRawPointer(instructions))
        try await endpoint.loop.flatSubmit { () -> EventLoopFuture<Void> in
            guard let socket = endpoint.socket else {
                return endpoint.loop.makeFailedFuture(ChannelError.ioOnClosedChannel)
            }
            return socket.attachReuseportProgram(pointer.value, count: steering.count)
        }.get()
    }

    /// The program's memory, read by the kernel on the loop while `attach` waits for it.
    private struct UncheckedPointer: @unchecked Sendable {
        let value: UnsafeRawPointer
        init(_ value: UnsafeRawPointer) { self.value = value }
    }
}
