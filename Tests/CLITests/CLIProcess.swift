import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Runs a built tool (toudtls-cat unless told otherwise) as a subprocess, as a user would.
struct CLIProcess {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    static var certs: String { packageRoot.appendingPathComponent("certs").path }

    /// The executables sit next to the test bundle in the build directory; an absolute path is
    /// taken as it is (`/bin/sh`).
    static func executable(_ tool: String = "toudtls-cat") -> URL {
        if tool.hasPrefix("/") { return URL(fileURLWithPath: tool) }
        let candidates = [
            Bundle.main.bundleURL.appendingPathComponent(tool),
            Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent(tool),
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(tool),
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent(tool),
            packageRoot.appendingPathComponent(".build/debug/\(tool)"),
        ]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0.path) } ?? candidates[0]
    }

    let process = Process()
    let stdout = Pipe()
    let stderr = Pipe()
    private let outputData = LockedData()
    private let errorData = LockedData()

    /// `toudtls-cat -l -v ARGUMENTS`, once it has said where it listens; with its port.
    static func readyListener(_ arguments: [String], stdin: URL? = nil) throws -> (CLIProcess, Int) {
        let listener = try CLIProcess(["-l", "-v"] + arguments, stdin: stdin)
        #expect(listener.waitForError(containing: "listening on"), "listener: \(listener.errorOutput)")
        do {
            return (listener, try #require(listener.listeningPort))
        } catch {
            listener.terminate()
            throw error
        }
    }

    /// `toudtls-bench serve --port 0 ... EXTRA` and its first line (`listening`, `pid`), once it
    /// printed it (empty if it never did: the caller's `#require` says so with its output).
    static func benchServe(_ extra: [String] = []) throws -> (CLIProcess, hello: [String: Any]) {
        let server = try CLIProcess(["serve", "--port", "0", "--certs", certs] + extra, tool: "toudtls-bench")
        for _ in 0..<1500 {
            if let line = server.outputText.split(separator: "\n").first,
               let hello = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] {
                return (server, hello)
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
        return (server, [:])
    }

    /// With `closeStdout`, the reading end of stdout is closed at once, so the process's writes
    /// to stdout fail (EPIPE) as they would after `| head -c 0`.
    /// `environment` is added to (and overrides) the test process's own environment; `stdinPipe`
    /// (instead of `stdin`) feeds the process from another process or the test.
    init(_ arguments: [String], tool: String = "toudtls-cat", stdin: URL? = nil, closeStdout: Bool = false,
         environment: [String: String] = [:], stdinPipe: Pipe? = nil) throws {
        process.executableURL = Self.executable(tool)
        process.arguments = arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        process.standardOutput = stdout
        process.standardError = stderr
        if let stdinPipe {
            process.standardInput = stdinPipe
        } else if let stdin {
            process.standardInput = try FileHandle(forReadingFrom: stdin)
        } else {
            process.standardInput = FileHandle.nullDevice
        }
        let outputData = self.outputData
        let errorData = self.errorData
        stdout.fileHandleForReading.readabilityHandler = { handle in outputData.append(handle.availableData) }
        stderr.fileHandleForReading.readabilityHandler = { handle in errorData.append(handle.availableData) }
        // Test worker threads block most signals and children inherit the mask: start with none
        // blocked, as a shell would, so terminate() works.
        try withDefaultSignalMask { try process.run() }
        if closeStdout {
            stdout.fileHandleForReading.readabilityHandler = nil
            try stdout.fileHandleForReading.close()
        }
    }

    /// Waits for exit (killing the process after `timeout` seconds) and returns the exit code.
    @discardableResult
    func wait(timeout: TimeInterval = 60) -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.02)
        }
        if process.isRunning {
            // SIGKILL: no signal mask or handler can keep a hung child from ending the wait.
            kill(process.processIdentifier, SIGKILL)
        }
        process.waitUntilExit()
        // Drain what is left in the pipes.
        stdout.fileHandleForReading.readabilityHandler = nil
        stderr.fileHandleForReading.readabilityHandler = nil
        outputData.append((try? stdout.fileHandleForReading.readToEnd()) ?? Data())
        errorData.append(stderr.fileHandleForReading.readDataToEndOfFile())
        return process.terminationStatus
    }

    func terminate() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }

    var output: Data { outputData.value }
    var outputText: String { String(decoding: outputData.value, as: UTF8.self) }
    var errorOutput: String { String(decoding: errorData.value, as: UTF8.self) }

    /// Waits until stderr shows `text` (e.g. "listening on").
    func waitForError(containing text: String, timeout: TimeInterval = 30) -> Bool {
        waitFor(text, in: { $0.errorOutput }, timeout: timeout)
    }

    /// Waits until stdout shows `text`: another process's log line or report comes when that
    /// process gets to it, not when the event that causes it is seen elsewhere.
    func waitForOutput(containing text: String, timeout: TimeInterval = 30) -> Bool {
        waitFor(text, in: { $0.outputText }, timeout: timeout)
    }

    private func waitFor(_ text: String, in stream: (CLIProcess) -> String, timeout: TimeInterval) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if stream(self).contains(text) { return true }
            if !process.isRunning { return stream(self).contains(text) }
            Thread.sleep(forTimeInterval: 0.02)
        }
        return false
    }

    /// The last line on stdout, a JSON object (toudtls-bench and toudtls-netsim end with their figures so).
    func lastJSONObject() throws -> [String: Any] {
        let line = try #require(outputText.split(separator: "\n").last, "nothing on stdout; stderr: \(errorOutput)")
        return try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "\(line)")
    }

    /// The port printed by `-v` in "listening on ADDR:PORT".
    var listeningPort: Int? {
        guard let line = errorOutput.split(separator: "\n").first(where: { $0.contains("listening on") }),
              let portText = line.split(separator: ":").last else { return nil }
        return Int(portText.trimmingCharacters(in: .whitespaces))
    }
}

final class LockedData: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    func append(_ more: Data) { lock.lock(); data.append(more); lock.unlock() }
    var value: Data { lock.lock(); defer { lock.unlock() }; return data }
}

/// A temporary file of random bytes, removed by the caller.
func makeRandomFile(bytes: Int) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("toudtls-\(UUID().uuidString).bin")
    let random = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/dev/urandom"))
    defer { try? random.close() }
    let data = try random.read(upToCount: bytes) ?? Data()
    try data.write(to: url)
    return url
}
