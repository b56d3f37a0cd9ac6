import Foundation
import NIOCore
import NIOPosix
import TOUDTLS

/// Configurations with the repository's certificates (certs/), as the TOUDTLS tests use them.
enum TestSetup {
    static let certs = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("certs").path

    static var server: TOUConfiguration {
        .server(certificateChain: .pemFile("\(certs)/server.pem"), privateKey: .pemFile("\(certs)/server.key"))
    }

    static var client: TOUConfiguration {
        .client(trustRoots: .pemFile("\(certs)/ca.pem"), serverName: "localhost")
    }

    static var group: MultiThreadedEventLoopGroup { .singleton }
}

/// Bytes that are a function of their stream offset (offset % 251), so a receiver checks every
/// byte without a copy. A chunk of `cycle` bytes starts every multiple of 251 the same way.
enum Pattern {
    static let cycle = 251 * 261  // 65,511 bytes
    static let buffer: ByteBuffer = {
        var buffer = ByteBufferAllocator().buffer(capacity: cycle + 251)
        for index in 0..<(cycle + 251) { buffer.writeInteger(UInt8(index % 251)) }
        return buffer
    }()

    /// `count` bytes (at most `cycle`) of the stream from `offset`: a slice, no copy.
    static func chunk(offset: Int, count: Int) -> ByteBuffer {
        buffer.getSlice(at: offset % 251, length: min(count, cycle))!
    }

    /// Whether `data` is the stream's bytes from `offset`.
    static func matches(_ data: ByteBuffer, offset: Int) -> Bool {
        var rest = data
        var position = offset
        while rest.readableBytes > 0 {
            let length = min(rest.readableBytes, cycle)
            let expected = chunk(offset: position, count: length)
            guard rest.readSlice(length: length) == expected else { return false }
            position += length
        }
        return true
    }
}
