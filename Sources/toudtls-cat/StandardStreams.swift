import Dispatch
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// Blocking stdin/stdout I/O on private dispatch queues, so that a slow pipe or a regular file
/// (which epoll refuses) never blocks Swift's cooperative threads.
final class StandardStreams: Sendable {
    private let inputQueue = DispatchQueue(label: "toudtls-cat.stdin")
    private let outputQueue = DispatchQueue(label: "toudtls-cat.stdout")
    /// Large chunks: each one costs a hop between threads, so bulk moves in few of them.
    static let chunkSize = 1 << 20

    /// Confined to `inputQueue`: EOF seen while filling a chunk, reported by the next read.
    private let inputEnded = InputEnded()

    private final class InputEnded: @unchecked Sendable {
        var value = false
    }

    /// The next chunk of stdin, or nil at end of file. Blocks for the first bytes only, then takes
    /// whatever else is already waiting (a pipe hands over 64 KiB at a time), so a stream moves in
    /// fewer, larger chunks.
    func read() async throws -> ByteBuffer? {
        await withCheckedContinuation { continuation in
            inputQueue.async { [inputEnded] in
                var buffer = ByteBufferAllocator().buffer(capacity: Self.chunkSize)
                Self.fill(&buffer, waitForFirstBytes: true, ended: inputEnded)
                // A short read (a typed line) goes out in a right-sized copy: TCP keeps the buffer
                // until the peer acknowledges it, and a line should not hold a whole chunk.
                if buffer.readableBytes > 0, buffer.readableBytes < Self.chunkSize / 4 {
                    buffer = ByteBuffer(buffer.readableBytesView)
                }
                continuation.resume(returning: buffer.readableBytes > 0 ? buffer : nil)
            }
        }
    }

    /// What stdin holds right now, without waiting (at most `maximum` bytes): nil when nothing is
    /// there yet. End of file is remembered for the next `read`.
    func readAvailableNow(maximum: Int) async -> ByteBuffer? {
        await withCheckedContinuation { continuation in
            inputQueue.async { [inputEnded] in
                var buffer = ByteBufferAllocator().buffer(capacity: maximum)
                Self.fill(&buffer, waitForFirstBytes: false, ended: inputEnded)
                continuation.resume(returning: buffer.readableBytes > 0 ? buffer : nil)
            }
        }
    }

    /// Reads stdin into `buffer` until it is full, stdin has nothing more ready, or it ends (then
    /// `ended` is set); blocks for the first bytes only with `waitForFirstBytes`. On `inputQueue`.
    private static func fill(_ buffer: inout ByteBuffer, waitForFirstBytes: Bool, ended: InputEnded) {
        while !ended.value, buffer.writableBytes > 0 {
            if buffer.readableBytes > 0 || !waitForFirstBytes {
                var descriptor = pollfd(fd: 0, events: Int16(POLLIN), revents: 0)
                guard poll(&descriptor, 1, 0) == 1 else { return }
            }
            var result = 0
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 0) { pointer in
                result = Glibc.read(0, pointer.baseAddress, pointer.count)
                return max(result, 0)
            }
            if result > 0 { continue }
            if result < 0, errno == EINTR { continue }
            // read returned 0 (EOF) or failed: either way stdin is done.
            ended.value = true
        }
    }

    /// Writes all of `buffer` to stdout.
    func write(_ buffer: ByteBuffer) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
            outputQueue.async {
                var failure: Int32 = 0
                buffer.withUnsafeReadableBytes { bytes in
                    var offset = 0
                    while offset < bytes.count {
                        let written = Glibc.write(1, bytes.baseAddress! + offset, bytes.count - offset)
                        if written < 0 {
                            if errno == EINTR { continue }
                            failure = errno
                            return
                        }
                        offset += written
                    }
                }
                if failure != 0 {
                    continuation.resume(throwing: OutputError(code: failure))
                } else {
                    continuation.resume()
                }
            }
        }
    }

    struct OutputError: Error, CustomStringConvertible {
        var code: Int32
        var description: String { "cannot write to stdout: \(String(cString: strerror(code)))" }
    }
}
