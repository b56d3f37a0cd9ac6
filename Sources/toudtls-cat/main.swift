import ArgumentParser
import CommandLineSupport
import FoundationEssentials
import Logging
import NIOCore
import TOUDTLS

#if canImport(Glibc)
import Glibc
#endif

/// Exit codes the outside world relies on (listed in `--help` and the README).
enum ExitCode32: Int32 {
    case success = 0, other = 1, usage = 2, authentication = 3, unreachable = 4, reset = 5
}

struct CatCommand: ParsableCommand, ArgumentChecking {
    static let configuration = CommandConfiguration(
        commandName: "toudtls-cat",
        abstract: "netcat over TCP-in-DTLS-in-GUE (TOU): stdin to the peer, the peer to stdout.",
        usage: """
            toudtls-cat [options] HOST PORT
            toudtls-cat -l [options] [HOST] PORT
            toudtls-cat -l [-k] --tcp-connect HOST:PORT [options] [HOST] PORT
            toudtls-cat --tcp-listen [ADDR:]PORT [options] HOST PORT
            """,
        discussion: """
            HOST is a name or an IP address; an IPv6 address may be in brackets ([::1]).
            At stdin EOF it sends FIN and keeps receiving until the peer's FIN.

            Tunnel mode carries unmodified TCP applications over TOU (stdin and stdout are not used). Server side, in front of a service on port 8080:
              toudtls-cat -l -k --cert server.pem --key server.key \\
                --tcp-connect 127.0.0.1:8080 4433
            Client side, where applications connect to 127.0.0.1:8443:
              toudtls-cat --ca ca.pem --tcp-listen 8443 server.example 4433
            Each TCP connection accepted by --tcp-listen gets its own TOU connection (and UDP socket); the listener relays each TOU connection to a new TCP connection to --tcp-connect. Bytes, half-close (FIN) and resets are carried both ways; a connection that cannot be opened (service down, handshake refused) is reset at once with a one-line message. -v logs each connection's open and close with its bytes each way and duration. Without -k the listener relays one connection and exits with its status (4: the service is down). SIGTERM or SIGINT resets every open connection, then exits.

            Client: without --ca the server is verified against the system trust store, like curl.
            A HOST with IPv6 and IPv4 addresses gets both tried (IPv6 first, IPv4 250 ms later,
            Happy Eyeballs); the first to complete its handshake is used. A peer that stops
            acknowledging for --timeout seconds (default 30) ends the connection with exit 4.

            Exit status:
              0  both directions finished
              1  anything else: port in use, socket error, truncated or closed session
              2  bad usage, or our own files unreadable or unusable
              3  handshake or authentication failure
              4  the peer is unreachable, its name does not resolve, or it timed out
              5  the peer reset the connection
            """,
        version: toudtlsVersion
    )

    @Flag(name: [.short, .customLong("listen")], help: "Listen on UDP [HOST] PORT (default: all addresses); serve one connection.")
    var listen = false

    @Flag(name: [.short, .customLong("keep-open")], help: "With -l: keep serving connections until killed.")
    var keepOpen = false

    @Option(name: .customLong("ca"), help: ArgumentHelp(
        "PEM trust anchors for the peer's certificate. A client without it trusts the system store "
            + "(OpenSSL's default paths; SSL_CERT_FILE and SSL_CERT_DIR override them), as curl does.",
        valueName: "FILE"))
    var caFile: String?

    @Option(name: .customLong("cert"), help: ArgumentHelp("Own certificate chain (PEM); required with -l.", valueName: "FILE"))
    var certFile: String?

    @Option(name: .customLong("key"), help: ArgumentHelp("Own private key (PEM); required with -l.", valueName: "FILE"))
    var keyFile: String?

    @Option(name: .customLong("server-name"), help: ArgumentHelp("Name the server certificate must carry (default: HOST).", valueName: "NAME"))
    var serverName: String?

    @Option(name: .customLong("pin"), help: ArgumentHelp("Client: the server's public key must have this SHA-256 (repeatable).", valueName: "sha256:BASE64"))
    var pins: [String] = []

    @Flag(name: .customLong("require-client-cert"), help: "With -l: the client must present a certificate trusted by --ca.")
    var requireClientCert = false

    @Option(name: .customLong("session-file"), help: ArgumentHelp(
        "Client: resume the DTLS session saved in FILE if it is there and still good, and save the new one to FILE (mode 0600).",
        valueName: "FILE"))
    var sessionFile: String?

    @Flag(name: .customLong("always-cookie"), help: "With -l: ask every new client for a cookie first (a round trip more), even when not under load.")
    var alwaysCookie = false

    @Option(name: .customLong("workers"), help: ArgumentHelp(
        "With -l: UDP sockets on the port (SO_REUSEPORT), each with its own event loop; datagrams reach their session's by its ID (default: one per core).",
        valueName: "N"))
    var workers: Int?

    @Flag(name: .customLong("plain"), help: "No DTLS: cleartext TCP in GUE, for debugging; both ends must say it.")
    var plain = false

    @Option(name: .customLong("mtu"), help: ArgumentHelp("Path MTU to assume.", valueName: "N"))
    var mtu: Int = 1500

    @Flag(name: .customLong("no-offload"), help: "One datagram per send and receive call: no UDP GSO/GRO (a capture on lo then shows each datagram).")
    var noOffload = false

    @Option(name: .customLong("tcp-connect"), help: ArgumentHelp(
        "With -l: relay each TOU connection to a new TCP connection to HOST:PORT (tunnel mode).",
        valueName: "HOST:PORT"))
    var tcpConnect: String?

    @Option(name: .customLong("tcp-listen"), help: ArgumentHelp(
        "Client: accept TCP on [ADDR:]PORT (default 127.0.0.1) and carry each connection over its own TOU connection to HOST PORT (tunnel mode).",
        valueName: "[ADDR:]PORT"))
    var tcpListen: String?

    @Flag(name: [.short, .customLong("verbose")], help: """
        Progress on stderr: about once a second while stderr is a terminal (bytes, rate, RTT, \
        retransmissions), a one-line summary at the end; with -l prints "listening on ADDR:PORT" once ready.
        """)
    var verbose = false

    // MARK: Dead-peer detection and statistics

    @Option(name: .customLong("timeout"), help: ArgumentHelp(
        "Fail (exit 4, \"timed out\") once sent data stays unacknowledged this long; 0 turns it off (TCP's retry limit, minutes).",
        valueName: "SECONDS"))
    var timeoutSeconds: Double = 30

    @Option(name: .customLong("keepalive"), help: ArgumentHelp(
        "Probe an idle connection after SECONDS of silence (keeps NAT mappings and the peer's idle timeout at bay); an unanswered probe fails it after --timeout. Default: no probes (25 s in tunnel mode).",
        valueName: "SECONDS"))
    var keepAliveSeconds: Double?

    @Option(name: .customLong("stats-json"), help: ArgumentHelp(
        "Write the connection's final counters (TCP, DTLS, path, drops) as JSON to FILE.", valueName: "FILE"))
    var statsJSONFile: String?

    @Argument(help: ArgumentHelp("[HOST] PORT", valueName: "HOST-PORT"))
    var positional: [String] = []

    var host: String?
    var port: Int = 0
    /// Tunnel mode: the TCP service (-l) or the local TCP address to accept on (client).
    var tcpService: TCPAddress?
    var tcpListenAddress: TCPAddress?

    /// Not `validate()`: see `ArgumentChecking`.
    mutating func checkArguments() throws {
        switch (listen, positional.count) {
        case (false, 2):
            host = positional[0]
            port = try Self.parsePort(positional[1])
        case (true, 1):
            port = try Self.parsePort(positional[0], allowZero: true)
        case (true, 2):
            host = positional[0]
            port = try Self.parsePort(positional[1], allowZero: true)
        case (false, _):
            throw ValidationError("expected HOST PORT")
        case (true, _):
            throw ValidationError("expected [HOST] PORT with -l")
        }
        if keepOpen && !listen { throw ValidationError("-k/--keep-open needs -l") }
        if let tcpConnect {
            if !listen { throw ValidationError("--tcp-connect needs -l (the client side of a tunnel uses --tcp-listen)") }
            tcpService = try TCPAddress.parse(tcpConnect, option: "--tcp-connect", hostRequired: true)
        }
        if let tcpListen {
            if listen { throw ValidationError("--tcp-listen is for the client side; with -l use --tcp-connect") }
            tcpListenAddress = try TCPAddress.parse(tcpListen, option: "--tcp-listen", hostRequired: false)
            if sessionFile != nil {
                throw ValidationError("--session-file is for one connection; a tunnel resumes sessions between its connections by itself")
            }
        }
        if requireClientCert && !listen { throw ValidationError("--require-client-cert needs -l") }
        if alwaysCookie && !listen { throw ValidationError("--always-cookie needs -l") }
        if workers != nil && !listen { throw ValidationError("--workers needs -l") }
        if let workers, !(1...255).contains(workers) { throw ValidationError("--workers must be within 1...255") }
        if sessionFile != nil && (listen || plain) { throw ValidationError("--session-file is for a DTLS client") }
        if !pins.isEmpty && (listen || plain) { throw ValidationError("--pin is for a DTLS client") }
        if !(576...65_535).contains(mtu) { throw ValidationError("--mtu must be within 576...65535") }
        if !(0...86_400).contains(timeoutSeconds) { throw ValidationError("--timeout must be within 0...86400 seconds") }
        if let keepAliveSeconds, !(0.1...86_400).contains(keepAliveSeconds) {
            throw ValidationError("--keepalive must be within 0.1...86400 seconds")
        }
        if statsJSONFile != nil && keepOpen { throw ValidationError("--stats-json is for one connection: drop -k") }
        if plain {
            if caFile != nil || certFile != nil || keyFile != nil || requireClientCert {
                throw ValidationError("--plain has no certificates: drop --ca, --cert, --key and --require-client-cert")
            }
        } else if listen {
            if certFile == nil || keyFile == nil { throw ValidationError("-l needs --cert FILE and --key FILE") }
            if requireClientCert && caFile == nil { throw ValidationError("--require-client-cert needs --ca FILE") }
        } else {
            if (certFile == nil) != (keyFile == nil) { throw ValidationError("--cert and --key go together") }
        }
    }

    /// A listener may ask for port 0 (any free port; -v prints which).
    static func parsePort(_ text: String, allowZero: Bool = false) throws -> Int {
        guard let port = Int(text), ((allowZero ? 0 : 1)...65_535).contains(port) else {
            throw ValidationError("invalid port \"\(text)\" (expected \(allowZero ? 0 : 1)-65535)")
        }
        return port
    }

    func makeConfiguration() -> TOUConfiguration {
        var configuration: TOUConfiguration
        if plain {
            configuration = .plain
        } else if listen {
            configuration = .server(certificateChain: .pemFile(certFile ?? ""), privateKey: .pemFile(keyFile ?? ""),
                                    clientTrustRoots: caFile.map { .pemFile($0) },
                                    requireClientCertificate: requireClientCert)
        } else {
            configuration = .client(trustRoots: caFile.map { .pemFile($0) } ?? .system, serverName: serverName,
                                    certificateChain: certFile.map { .pemFile($0) },
                                    privateKey: keyFile.map { .pemFile($0) })
        }
        configuration.pinnedPublicKeys = pins
        configuration.pathMTU = mtu
        configuration.segmentationOffload = !noOffload
        configuration.alwaysRequireCookie = alwaysCookie
        configuration.userTimeout = .nanoseconds(Int64(timeoutSeconds * 1e9))
        configuration.keepAliveInterval = keepAliveSeconds.map { .nanoseconds(Int64($0 * 1e9)) }
        if tcpService != nil || tcpListenAddress != nil {
            // A tunnel forwards what the application's own TCP already sent: holding small
            // segments back for coalescing (Nagle) would only add a round trip to each exchange.
            configuration.noDelay = true
            // An application's idle TCP connection (a pooled database client, say) must outlive
            // TOU's idle timeout and NAT mappings, as it would over the kernel's TCP.
            if keepAliveSeconds == nil { configuration.keepAliveInterval = .seconds(25) }
        }
        if verbose {
            var logger = Logger(label: "toudtls")
            logger.logLevel = .info
            configuration.logger = logger
        }
        return configuration
    }
}

/// A TCP address from the command line: "HOST:PORT", "[IPV6]:PORT" or, where the host is optional, "PORT".
struct TCPAddress: Sendable, Codable, CustomStringConvertible {
    var host: String
    var port: Int

    var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Without a host (allowed when `hostRequired` is false) the host is 127.0.0.1 and port 0
    /// (any free port) is allowed.
    static func parse(_ text: String, option: String, hostRequired: Bool) throws -> TCPAddress {
        let expected = hostRequired ? "HOST:PORT" : "[ADDR:]PORT"
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw ValidationError("\(option): invalid address \"\(text)\" (expected \(expected), an IPv6 address in brackets)")
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else if let colon = text.lastIndex(of: ":") {
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.contains(":") {
                throw ValidationError("\(option): put an IPv6 address in brackets: [ADDR]:PORT")
            }
        } else if !hostRequired {
            host = "127.0.0.1"
            portText = Substring(text)
        } else {
            throw ValidationError("\(option): invalid address \"\(text)\" (expected \(expected))")
        }
        guard !host.isEmpty else { throw ValidationError("\(option): missing host in \"\(text)\" (expected \(expected))") }
        let lowest = hostRequired ? 1 : 0
        guard let port = Int(portText), (lowest...65_535).contains(port) else {
            throw ValidationError("\(option): invalid port \"\(portText)\" (expected \(lowest)-65535)")
        }
        return TCPAddress(host: String(host), port: port)
    }
}

func exitCode(for error: Error) -> ExitCode32 {
    guard let error = error as? TOUError else { return .other }
    switch error {
    case .invalidConfiguration, .unreadableFile: return .usage
    case .handshakeFailed, .untrustedCertificate, .nameMismatch, .peerCertificateMissing, .pinMismatch:
        return .authentication
    case .unreachable, .timedOut: return .unreachable
    case .connectionReset: return .reset
    case .truncated, .protocolError, .keyUsageLimitReached, .closed, .socketError: return .other
    }
}

// Help, --version and usage errors (unknown options included) exit here: 0 or 2.
let parsed = CommandLineTool.parse(CatCommand.self)
guard let command = parsed as? CatCommand else {
    // `--help` and `help` parse as ArgumentParser's help command, which prints the usage.
    await CommandLineTool.run(parsed, root: CatCommand.self)
}

LoggingSystem.bootstrap { label in StreamLogHandler.standardError(label: label) }
signal(SIGPIPE, SIG_IGN)

let runner = CatRunner(command: command)
let code = await runner.run()
exit(code.rawValue)
