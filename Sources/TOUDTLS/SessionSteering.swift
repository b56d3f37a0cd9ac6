import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// The classic BPF program that steers a listener's datagrams among its workers' sockets
/// (SO_ATTACH_REUSEPORT_CBPF): a datagram with D goes to the socket whose index is D's first
/// byte (the worker its SID names, see `SessionID.onWorker`), wherever its source address moved;
/// one without D (a new attempt) keeps the kernel's hash. The program runs on the UDP payload.
enum SessionSteering {
    /// One classic BPF instruction (struct sock_filter).
    struct Instruction {
        var code: UInt16
        var jumpIfTrue: UInt8
        var jumpIfFalse: UInt8
        var k: UInt32
    }

    // Opcodes (linux/filter.h): load byte absolute, AND, jumps, returns.
    private static let loadByte: UInt16 = 0x30, and: UInt16 = 0x54, jumpIfSet: UInt16 = 0x45
    private static let jumpIfEqual: UInt16 = 0x15, returnConstant: UInt16 = 0x06, returnA: UInt16 = 0x16

    /// The program. D's offset is 4 + 4 (T) + 8 (S) as the flags say; the worker byte is D's first.
    /// An index the group does not have (the hash fallback's 0xFFFFFFFF among them) leaves the
    /// choice to the kernel's hash.
    static let program: [Instruction] = [
        Instruction(code: loadByte, jumpIfTrue: 0, jumpIfFalse: 0, k: 3),        // 0: flags, low byte
        Instruction(code: jumpIfSet, jumpIfTrue: 1, jumpIfFalse: 0, k: 0x80),     // 1: D? -> 3
        Instruction(code: returnConstant, jumpIfTrue: 0, jumpIfFalse: 0, k: 0xFFFF_FFFF),  // 2: no D: hash
        Instruction(code: loadByte, jumpIfTrue: 0, jumpIfFalse: 0, k: 2),        // 3: flags, high byte
        Instruction(code: and, jumpIfTrue: 0, jumpIfFalse: 0, k: 0x03),          // 4: T<<1 | S
        Instruction(code: jumpIfEqual, jumpIfTrue: 0, jumpIfFalse: 2, k: 3),     // 5: T and S -> 6, else 8
        Instruction(code: loadByte, jumpIfTrue: 0, jumpIfFalse: 0, k: 16),       // 6
        Instruction(code: returnA, jumpIfTrue: 0, jumpIfFalse: 0, k: 0),         // 7
        Instruction(code: jumpIfEqual, jumpIfTrue: 0, jumpIfFalse: 2, k: 2),     // 8: T alone -> 9, else 11
        Instruction(code: loadByte, jumpIfTrue: 0, jumpIfFalse: 0, k: 8),        // 9
        Instruction(code: returnA, jumpIfTrue: 0, jumpIfFalse: 0, k: 0),         // 10
        Instruction(code: jumpIfEqual, jumpIfTrue: 0, jumpIfFalse: 2, k: 1),     // 11: S alone -> 12, else 14
        Instruction(code: loadByte, jumpIfTrue: 0, jumpIfFalse: 0, k: 12),       // 12
        Instruction(code: returnA, jumpIfTrue: 0, jumpIfFalse: 0, k: 0),         // 13
        Instruction(code: loadByte, jumpIfTrue: 0, jumpIfFalse: 0, k: 4),        // 14: D alone
        Instruction(code: returnA, jumpIfTrue: 0, jumpIfFalse: 0, k: 0),         // 15
    ]

    /// struct sock_fprog: the program's length and where it is (the kernel copies it).
    struct Program: @unchecked Sendable {
        var length: UInt16
        var instructions: UnsafeRawPointer
    }

    static let attachReuseportCBPF: Int32 = 51  // SO_ATTACH_REUSEPORT_CBPF (asm-generic/socket.h)

    /// Attaches the program to the reuseport group of `endpoint`'s socket (any member will do).
    static func attach(to endpoint: TOUEndpoint) async throws {
        let instructions = UnsafeMutablePointer<Instruction>.allocate(capacity: program.count)
        instructions.initialize(from: program, count: program.count)
        defer { instructions.deallocate() }
        let pointer = UncheckedPointer(UnsafeRawPointer(instructions))
        try await endpoint.loop.flatSubmit { () -> EventLoopFuture<Void> in
            guard let socket = endpoint.socket else {
                return endpoint.loop.makeFailedFuture(ChannelError.ioOnClosedChannel)
            }
            return socket.attachReuseportProgram(pointer.value, count: program.count)
        }.get()
    }

    /// The program's memory, read by the kernel on the loop while `attach` waits for it.
    private struct UncheckedPointer: @unchecked Sendable {
        let value: UnsafeRawPointer
        init(_ value: UnsafeRawPointer) { self.value = value }
    }
}
