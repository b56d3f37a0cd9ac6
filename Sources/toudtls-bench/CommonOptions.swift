import ArgumentParser
import Foundation
import NIOCore
import TOUDTLS

/// Options every separate-process subcommand shares; the bench/compare harness passes them.
struct CommonOptions: ParsableArguments {
    @Option(help: "Address to bind (serve) or connect to (clients).")
    var host: String = "127.0.0.1"

    @Option(help: "UDP port: serve binds it (0: any, printed); clients require it.")
    var port: Int = 0

    @Flag(help: "No DTLS: cleartext TCP in GUE (isolates the cost of DTLS).")
    var plain = false

    @Option(help: "Directory holding ca.pem, server.pem and server.key.")
    var certs: String = "certs"

    @Option(help: "Path MTU to assume.")
    var mtu: Int = 1500

    @Option(help: "Per-connection receive buffer in bytes, which bounds the window advertised (default: the library's).")
    var receiveBufferSize: Int?

    @Option(help: "Per-connection send buffer in bytes (default: the library's).")
    var sendBufferSize: Int?

    @Option(help: ArgumentHelp("Datagram I/O layer: nio (SwiftNIO's DatagramChannel) or native (DatagramIO).",
                               visibility: .hidden))
    var io: TOUDatagramIO = .default

    @Option(help: "Client runs: fail if no connection makes progress for this many seconds.")
    var stallSeconds: Double = 30

    /// No session cache: every connect makes a full handshake unless a subcommand says otherwise
    /// (`handshakes --resume`), so that figures do not silently mix full and resumed handshakes.
    var clientConfiguration: TOUConfiguration {
        var configuration: TOUConfiguration = plain
            ? .plain
            : .client(trustRoots: .pemFile("\(certs)/ca.pem"), serverName: "localhost")
        applyCommon(to: &configuration)
        configuration.sessionCache = nil
        return configuration
    }

    /// The echo server's configuration, with admission limits raised so that a benchmark's burst of
    /// handshakes from one source address is measured rather than rate-limited.
    var serverConfiguration: TOUConfiguration {
        var configuration: TOUConfiguration = plain
            ? .plain
            : .server(certificateChain: .pemFile("\(certs)/server.pem"), privateKey: .pemFile("\(certs)/server.key"))
        applyCommon(to: &configuration)
        configuration.newSessionsPerSecondPerSource = 1e9
        configuration.newSessionBurstPerSource = 1e9
        configuration.maximumHalfOpenSessions = 8192
        configuration.maximumSessions = 100_000
        configuration.acceptBacklog = 4096
        return configuration
    }

    private func applyCommon(to configuration: inout TOUConfiguration) {
        configuration.noDelay = true
        configuration.pathMTU = mtu
        configuration.datagramIO = io
        if let receiveBufferSize { configuration.receiveBufferSize = receiveBufferSize }
        if let sendBufferSize { configuration.sendBufferSize = sendBufferSize }
    }

    func requirePort() throws {
        guard (1...65_535).contains(port) else {
            throw ValidationError("--port must name the server's port (1...65535)")
        }
    }
}

extension TOUDatagramIO: ExpressibleByArgument {}

/// Connects with at most `gate`'s permits of handshakes in flight; failures are logged and counted.
/// Through `shared`'s socket if given, else each on a socket of its own.
func connectThroughGate(_ gate: ConnectGate, options: CommonOptions, configuration: TOUConfiguration,
                        through shared: TOUClientEndpoint? = nil,
                        tally: Tally, watchdog: Watchdog) async -> TOUConnection? {
    await gate.acquire()
    let result: Result<TOUConnection, Error>
    do {
        if let shared {
            result = .success(try await shared.connect(host: options.host, port: options.port))
        } else {
            result = .success(try await TOUConnection.connect(host: options.host, port: options.port,
                                                              configuration: configuration))
        }
    } catch {
        result = .failure(error)
    }
    await gate.release()
    watchdog.progress()
    switch result {
    case .success(let connection):
        tally.add("connected")
        return connection
    case .failure(let error):
        tally.add("connect failures")
        if tally["connect failures"] <= 5 {
            Output.log("connect failed: \(error)")
        }
        return nil
    }
}

/// Opens `count` connections with at most `concurrency` handshakes in flight; returns those that
/// opened. With `sharing` endpoints, the connections take turns among their sockets.
func openConnections(_ count: Int, concurrency: Int, options: CommonOptions, sharing endpoints: [TOUClientEndpoint] = [],
                     tally: Tally, watchdog: Watchdog) async -> [TOUConnection] {
    let gate = ConnectGate(permits: concurrency)
    let configuration = options.clientConfiguration
    return await withTaskGroup(of: TOUConnection?.self) { group in
        for index in 0..<count {
            let shared = endpoints.isEmpty ? nil : endpoints[index % endpoints.count]
            group.addTask {
                await connectThroughGate(gate, options: options, configuration: configuration, through: shared,
                                         tally: tally, watchdog: watchdog)
            }
        }
        var opened: [TOUConnection] = []
        for await connection in group {
            if let connection { opened.append(connection) }
        }
        return opened
    }
}
