import ArgumentParser
import CommandLineSupport

/// `toudtls-bench`: the in-process benchmark (`all`, the default) and the separate-process client and
/// server subcommands that bench/compare drives to compare toudtls with TLS over kernel TCP.
@main
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "toudtls-bench",
        abstract: "Measure toudtls on loopback: bulk MB/s, 1-byte request/response, connection setup.",
        discussion: """
            Subcommands other than `all` print progress on stderr and one JSON object per line on stdout.
            Start `serve` first; it prints {"listening":PORT,"pid":PID}. Then run rr, many, idle or
            handshakes against --port PORT.
            """,
        version: toudtlsVersion,
        subcommands: [All.self, Serve.self, RequestResponse.self, Many.self, Idle.self, Handshakes.self],
        defaultSubcommand: All.self
    )

    /// Usage errors exit 2 and name what is wrong; help and --version exit 0.
    static func main() async {
        await CommandLineTool.run(CommandLineTool.parse(Bench.self), root: Bench.self)
    }
}
