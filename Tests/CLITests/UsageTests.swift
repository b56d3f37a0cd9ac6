import Foundation
import Testing

/// Help, version and usage errors of every tool, run as a user would.
@Suite("tool usage", .serialized)
struct UsageTests {
    static let helpRequests: [(tool: String, arguments: [String])] = [
        ("toudtls-cat", ["--help"]), ("toudtls-cat", ["-h"]), ("toudtls-cat", ["help"]),
        ("toudtls-bench", ["--help"]), ("toudtls-bench", ["-h"]), ("toudtls-bench", ["help", "serve"]),
        ("toudtls-bench", ["help", "rr"]), ("toudtls-bench", ["serve", "--help"]),
        ("toudtls-netsim", ["--help"]), ("toudtls-netsim", ["-h"]), ("toudtls-netsim", ["help"]),
    ]

    @Test("--help, -h and help [SUBCOMMAND] print the usage on stdout and exit 0", arguments: helpRequests)
    func help(tool: String, arguments: [String]) throws {
        let process = try CLIProcess(arguments, tool: tool)
        #expect(process.wait(timeout: 30) == 0, "\(tool) \(arguments): \(process.errorOutput)")
        #expect(process.outputText.contains("USAGE: \(tool)"), "\(tool) \(arguments): \(process.outputText)")
        #expect(process.errorOutput.isEmpty, "\(tool) \(arguments): \(process.errorOutput)")
    }

    @Test("toudtls-cat --help lists the exit codes")
    func exitCodesInHelp() throws {
        let process = try CLIProcess(["--help"])
        #expect(process.wait(timeout: 30) == 0)
        for line in ["0  both directions finished", "1  anything else", "2  bad usage", "3  handshake",
                     "4  the peer is unreachable", "5  the peer reset"] {
            #expect(process.outputText.contains(line), "missing \"\(line)\": \(process.outputText)")
        }
    }

    @Test("--version prints the package version and exits 0",
          arguments: [("toudtls-cat", ["--version"]), ("toudtls-bench", ["--version"]),
                      ("toudtls-bench", ["serve", "--version"]), ("toudtls-netsim", ["--version"])])
    func version(tool: String, arguments: [String]) throws {
        let process = try CLIProcess(arguments, tool: tool)
        #expect(process.wait(timeout: 30) == 0, "\(tool) \(arguments): \(process.errorOutput)")
        let text = process.outputText.trimmingCharacters(in: .whitespacesAndNewlines)
        let parts = text.split(separator: ".")
        #expect(parts.count == 3 && parts.allSatisfy { Int($0) != nil }, "\(tool) \(arguments): \"\(text)\"")
    }

    static let unknownOptions: [(tool: String, arguments: [String], option: String)] = [
        ("toudtls-cat", ["--bogus", "127.0.0.1", "5"], "--bogus"),
        // Its value must not be taken for HOST (--session-file exists now: an option that does not).
        ("toudtls-cat", ["--session-dir", "x", "127.0.0.1", "5"], "--session-dir"),
        // A mistyped option must not start a server without client authentication.
        ("toudtls-cat", ["-l", "--require-client-certs", "--cert", "\(CLIProcess.certs)/server.pem",
                         "--key", "\(CLIProcess.certs)/server.key", "--ca", "\(CLIProcess.certs)/ca.pem", "127.0.0.1", "0"],
         "--require-client-certs"),
        ("toudtls-cat", ["-x", "127.0.0.1", "5"], "-x"),
        ("toudtls-bench", ["--bogus"], "--bogus"),
        // rr needs --port; the unknown option is still what is reported.
        ("toudtls-bench", ["rr", "--bogus"], "--bogus"),
        ("toudtls-netsim", ["--bogus"], "--bogus"),
    ]

    @Test("an unknown option is an error that names it, exit 2", arguments: unknownOptions)
    func unknownOption(tool: String, arguments: [String], option: String) throws {
        let process = try CLIProcess(arguments, tool: tool)
        defer { process.terminate() }
        #expect(process.wait(timeout: 15) == 2, "\(tool) \(arguments): \(process.errorOutput)")
        let lines = process.errorOutput.split(separator: "\n")
        #expect(lines.first?.contains("Unknown option '\(option)'") == true, "\(tool) \(arguments): \(process.errorOutput)")
        #expect(lines.count == 2, "the error and where the usage is: \(process.errorOutput)")
        #expect(process.output.isEmpty)
    }
}
