import Foundation
import NIOCore

/// The deterministic bytes connection `index` sends in `many`: a pseudo-random table of prime
/// length read from a per-connection starting point, so a lost, duplicated, reordered or misdirected
/// chunk shows up as a mismatch, and checking costs a memcmp per run.
struct EchoPattern: Sendable {
    /// Prime, so the period never lines up with chunk or segment sizes.
    static let period = 65_521
    /// The table twice over: any run of up to `period` bytes from any start is contiguous.
    static let table: [UInt8] = {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        var bytes = [UInt8](repeating: 0, count: period)
        for index in 0..<period {
            // splitmix64
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            bytes[index] = UInt8(truncatingIfNeeded: z ^ (z >> 31))
        }
        return bytes + bytes
    }()

    private var position: Int

    init(connection index: Int) {
        position = (index &* 7_919) % Self.period
    }

    /// Appends the next `count` bytes of the stream to `buffer`.
    mutating func append(_ count: Int, to buffer: inout ByteBuffer) {
        var remaining = count
        while remaining > 0 {
            let run = min(remaining, Self.period)
            Self.table.withUnsafeBytes { table in
                _ = buffer.writeBytes(UnsafeRawBufferPointer(rebasing: table[position..<(position + run)]))
            }
            position = (position + run) % Self.period
            remaining -= run
        }
    }

    /// Whether `chunk` is the next stretch of the stream; advances past it either way.
    mutating func matches(_ chunk: ByteBuffer) -> Bool {
        chunk.withUnsafeReadableBytes { received in
            var intact = true
            var offset = 0
            while offset < received.count {
                let run = min(received.count - offset, Self.period)
                let equal = Self.table.withUnsafeBytes { table in
                    memcmp(received.baseAddress! + offset, table.baseAddress! + position, run) == 0
                }
                if !equal { intact = false }
                position = (position + run) % Self.period
                offset += run
            }
            return intact
        }
    }
}
