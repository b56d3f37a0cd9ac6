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
    static let chunkSize = 128 << 10

    /// The next chunk of stdin, or nil at end of file.
    func read() async throws -> ByteBuffer? {
        try await withCheckedThrowingContinuation { continuation in
            inputQueue.async {
                var buffer = ByteBufferAllocator().buffer(capacity: Self.chunkSize)
                while true {
                    let count = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: Self.chunkSize) { pointer in
                        let result = Glibc.read(0, pointer.baseAddress, pointer.count)
                        return result > 0 ? result : 0
                    }
                    if count > 0 {
                        continuation.resume(returning: buffer)
                        return
                    }
                    let error = errno
                    if error == EINTR { continue }
                    // read returned 0 (EOF) or failed: either way stdin is done.
                    continuation.resume(returning: nil)
                    return
                }
            }
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

/// One line on stderr.
func printError(_ message: String) {
    var line = message
    line.append("\n")
    var bytes = Array(line.utf8)
    var offset = 0
    while offset < bytes.count {
        let written = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress! + offset, $0.count - offset) }
        if written <= 0 { return }
        offset += written
    }
}
