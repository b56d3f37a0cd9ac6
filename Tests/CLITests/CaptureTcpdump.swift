import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// tcpdump writing every UDP datagram of one port on loopback to a pcap file, started before any
/// traffic and stopped (SIGINT, then SIGTERM, then SIGKILL) even when a test fails.
final class TcpdumpCapture: @unchecked Sendable {
    enum Failure: Error, CustomStringConvertible {
        case notStarted(String)
        var description: String {
            switch self { case .notStarted(let why): "tcpdump did not start capturing: \(why)" }
        }
    }

    static let candidatePaths = ["/usr/bin/tcpdump", "/usr/sbin/tcpdump", "/sbin/tcpdump", "/usr/local/sbin/tcpdump",
                                 "/usr/local/bin/tcpdump"]

    /// Why a capture cannot run here, or nil when it can: tcpdump missing, or not allowed to capture.
    static let unavailableReason: String? = {
        guard let path = executablePath else {
            return "tcpdump is not installed (Debian package: tcpdump)"
        }
        // Capturing needs CAP_NET_RAW; ask tcpdump itself rather than guess from the uid.
        let probe = Process()
        probe.executableURL = URL(fileURLWithPath: path)
        probe.arguments = ["-i", "lo", "-c", "1", "-n", "--immediate-mode", "-w", "/dev/null", "udp port 9"]
        let errors = Pipe()
        probe.standardError = errors
        probe.standardOutput = FileHandle.nullDevice
        do { try withDefaultSignalMask { try probe.run() } } catch { return "tcpdump at \(path) cannot be run: \(error)" }
        // It either fails at once (no permission, no lo) or sits waiting for a packet.
        let deadline = Date().addingTimeInterval(3)
        while probe.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        if probe.isRunning {
            kill(probe.processIdentifier, SIGKILL)
            probe.waitUntilExit()
            return nil
        }
        let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return "tcpdump may not capture on lo here (needs root or CAP_NET_RAW): "
            + text.trimmingCharacters(in: .whitespacesAndNewlines)
    }()

    static var executablePath: String? {
        candidatePaths.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    let file: URL
    private let process = Process()
    private let errorData = LockedData()
    private let errorPipe = Pipe()

    /// Starts capturing `udp port PORT` on lo into a fresh file and returns once tcpdump says it is listening.
    init(port: Int, timeout: TimeInterval = 10) throws {
        guard let path = Self.executablePath else { throw Failure.notStarted("tcpdump is not installed") }
        file = FileManager.default.temporaryDirectory.appendingPathComponent("toudtls-\(UUID().uuidString).pcap")
        process.executableURL = URL(fileURLWithPath: path)
        // -U: write each packet as it comes, so the file is whole when we stop; -s 0: whole packets;
        // --immediate-mode: packets still waiting in a TPACKET_V3 block when SIGINT comes would be lost;
        // -B: a large kernel buffer (KiB) so a fast loopback transfer is not dropped by the capture.
        process.arguments = ["-i", "lo", "-n", "-U", "--immediate-mode", "-s", "0", "-B", "131072", "-w", file.path, "udp port \(port)"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = errorPipe
        process.standardInput = FileHandle.nullDevice
        let errorData = self.errorData
        errorPipe.fileHandleForReading.readabilityHandler = { handle in errorData.append(handle.availableData) }
        try withDefaultSignalMask { try process.run() }
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if errorOutput.contains("listening on") { return }
            if !process.isRunning { break }
            Thread.sleep(forTimeInterval: 0.02)
        }
        stop()
        throw Failure.notStarted(errorOutput.isEmpty ? "no \"listening on\" within \(timeout) s" : errorOutput)
    }

    var errorOutput: String { String(decoding: errorData.value, as: UTF8.self) }

    /// Packets the kernel dropped before tcpdump saw them, from its closing statistics (nil if not printed).
    var packetsDroppedByKernel: Int? {
        guard let line = errorOutput.split(separator: "\n").first(where: { $0.contains("dropped by kernel") }),
              let number = line.split(separator: " ").first else { return nil }
        return Int(number)
    }

    /// Stops tcpdump gently so it flushes and prints its statistics; harder if it does not go.
    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGINT)
            for signal in [SIGTERM, SIGKILL] {
                let deadline = Date().addingTimeInterval(3)
                while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
                if !process.isRunning { break }
                kill(process.processIdentifier, signal)
            }
        }
        if process.processIdentifier != 0 { process.waitUntilExit() }
        errorPipe.fileHandleForReading.readabilityHandler = nil
        errorData.append(errorPipe.fileHandleForReading.readDataToEndOfFile())
    }

    /// Stops the capture if still running and removes the file.
    func discard() {
        stop()
        try? FileManager.default.removeItem(at: file)
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}
