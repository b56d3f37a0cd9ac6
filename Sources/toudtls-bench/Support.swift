import CommandLineSupport
import Foundation

/// One JSON value of an output line. Keys keep the order they are given in, as the contract shows them.
enum JSONValue: Sendable {
    case int(Int)
    case double(Double)
    case bool(Bool)
    case string(String)
    case ints([Int])

    var encoded: String {
        switch self {
        case .int(let value): return String(value)
        case .ints(let values): return "[" + values.map(String.init).joined(separator: ",") + "]"
        case .double(let value):
            // JSON has no NaN or infinity; a figure that cannot be computed is null.
            guard value.isFinite else { return "null" }
            return String(round2(value))
        case .bool(let value): return value ? "true" : "false"
        case .string(let value): return JSONValue.quote(value)
        }
    }

    static func quote(_ text: String) -> String { JSONDocument.quote(text) }
}

/// Output channels: exactly one JSON object per stdout line (the harness parses them), progress on stderr.
enum Output {
    private static let lock = NSLock()

    static func json(_ fields: [(String, JSONValue)]) {
        let body = fields.map { "\(JSONValue.quote($0.0)):\($0.1.encoded)" }.joined(separator: ",")
        write("{\(body)}\n", to: FileHandle.standardOutput)
    }

    static func line(_ text: String) {
        write(text + "\n", to: FileHandle.standardOutput)
    }

    static func log(_ message: String) {
        write("toudtls-bench: \(message)\n", to: FileHandle.standardError)
    }

    /// FileHandle writes are unbuffered, so every line is flushed as soon as it is written.
    private static func write(_ text: String, to handle: FileHandle) {
        lock.lock()
        defer { lock.unlock() }
        handle.write(Data(text.utf8))
    }
}

/// Monotonic nanoseconds.
func nowNanos() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

func elapsedSeconds(since start: UInt64, until end: UInt64 = nowNanos()) -> Double {
    Double(end &- start) / 1e9
}

func percentile(_ sorted: [Double], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return 0 }
    let index = min(sorted.count - 1, Int((Double(sorted.count - 1) * p).rounded()))
    return sorted[index]
}

func round2(_ value: Double) -> Double { (value * 100).rounded() / 100 }

func round6(_ value: Double) -> Double { (value * 1e6).rounded() / 1e6 }

enum BenchError: Error, CustomStringConvertible {
    case usage(String)
    case failed(String)

    var description: String {
        switch self {
        case .usage(let message), .failed(let message): return message
        }
    }
}

/// Each client connection owns a UDP socket, so a thousand of them need more than the usual 1024 fds.
func raiseFileLimit() {
    var limit = rlimit()
    #if os(Linux)
    let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    #else
    let resource = RLIMIT_NOFILE
    #endif
    guard getrlimit(resource, &limit) == 0 else { return }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max
        if setrlimit(resource, &limit) != 0 {
            Output.log("cannot raise the open-file limit to \(limit.rlim_max)")
        }
    }
}

/// Suspends until standard input reaches end of file, reading on a dispatch thread (the read blocks).
func waitForStandardInputEOF() async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        DispatchQueue.global().async {
            var scratch = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = scratch.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
                if count == 0 { break }
                if count < 0 && errno != EINTR { break }
            }
            continuation.resume()
        }
    }
}

/// Ends the process at once (ParsableCommand's own `exit` would shadow the C one).
func terminate(_ status: Int32) -> Never {
    Foundation.exit(status)
}
