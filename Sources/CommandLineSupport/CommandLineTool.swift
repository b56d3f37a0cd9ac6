import ArgumentParser

#if canImport(Glibc)
import Glibc
#endif

/// The package version every tool prints for `--version`.
public let toudtlsVersion = "0.1.0"

/// Parsing and failure reporting shared by the tools: `--help`, `-h` and `help [SUBCOMMAND]` print
/// the usage on stdout and exit 0, `--version` prints the package version, and every usage error
/// (an unknown option included) is one line naming it on stderr and exit 2 rather than
/// ArgumentParser's 64, the code scripts and the README rely on.
public enum CommandLineTool {
    public static let usageExitCode: Int32 = 2

    /// The parsed and checked command, which may be ArgumentParser's own help command (run it
    /// with `run`). Help, version and usage errors end the process here.
    public static func parse<Root: ParsableCommand>(
        _ root: Root.Type, arguments: [String] = Array(CommandLine.arguments.dropFirst())
    ) -> ParsableCommand {
        var arguments = arguments
        // ArgumentParser knows `help` only in a tool with subcommands; the others take it as a value.
        if root.configuration.subcommands.isEmpty, arguments == ["help"] { arguments = ["--help"] }
        let command: ParsableCommand
        do {
            command = try root.parseAsRoot(arguments)
        } catch {
            exit(root, withError: error)
        }
        guard var checked = command as? ArgumentChecking else { return command }
        do {
            try checked.checkArguments()
        } catch {
            exit(root, withError: error, in: type(of: command))
        }
        return checked
    }

    /// Runs a parsed command to completion, then exits (status 0, or as `exit(_:withError:)` says).
    public static func run<Root: ParsableCommand>(_ command: ParsableCommand, root: Root.Type) async -> Never {
        do {
            if var asynchronous = command as? AsyncParsableCommand {
                try await asynchronous.run()
            } else {
                var synchronous = command
                try synchronous.run()
            }
        } catch {
            exit(root, withError: error)
        }
        Glibc.exit(0)
    }

    /// Help and version requests print on stdout and exit 0; usage errors print the message and
    /// where to find the usage, exit 2; anything else prints its message, exit 1 (or the code an
    /// `ExitCode` error carries).
    public static func exit<Root: ParsableCommand>(_ root: Root.Type, withError error: Error,
                                                   in command: ParsableCommand.Type? = nil) -> Never {
        let name = root.configuration.commandName ?? "\(root)"
        let code = root.exitCode(for: error)
        if code == .success {
            print(root.fullMessage(for: error))
            Glibc.exit(0)
        }
        let message = root.message(for: error)
        if code == .validationFailure {
            printToStandardError("\(name): \(message)")
            printToStandardError(helpHint(root, for: error, in: command))
            Glibc.exit(usageExitCode)
        }
        if !message.isEmpty { printToStandardError("\(name): \(message)") }
        Glibc.exit(code.rawValue)
    }

    /// Where the usage of the command the error belongs to is: ArgumentParser's full text ends with
    /// "See 'TOOL [SUBCOMMAND] --help' ..." for its own errors; ours name the subcommand themselves.
    private static func helpHint<Root: ParsableCommand>(_ root: Root.Type, for error: Error,
                                                         in command: ParsableCommand.Type?) -> String {
        let name = root.configuration.commandName ?? "\(root)"
        if let command, command != root, let subcommand = command.configuration.commandName {
            return "See '\(name) \(subcommand) --help' for more information."
        }
        let line = root.fullMessage(for: error).split(separator: "\n").last { $0.contains("--help") }
        return line.map { String($0.drop { $0 == " " }) } ?? "See '\(name) --help' for more information."
    }

    /// One line on stderr, written at once (stderr is unbuffered, `print` is not).
    public static func printToStandardError(_ line: String) {
        var bytes = Array((line + "\n").utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress! + offset, $0.count - offset) }
            if written <= 0 { return }
            offset += written
        }
    }
}

/// A command whose arguments are checked once parsing has succeeded. ArgumentParser runs
/// `validate()` before it rejects unknown options, so a failed `validate()` hides them (the value
/// of a mistyped option taken for a positional argument, say); `checkArguments()` runs after.
public protocol ArgumentChecking: ParsableCommand {
    mutating func checkArguments() throws
}
