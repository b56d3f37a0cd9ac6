import CommandLineSupport
import Dispatch
import FoundationEssentials
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import TOUDTLS

#if canImport(Glibc)
import Glibc
#endif

/// A kernel TCP connection as the tunnel sees it: reads are backpressured (the stream asks the
/// socket for more only while fewer than a few chunks wait) and finishing the writer half-closes.
typealias TCPStream = NIOAsyncChannel<ByteBuffer, ByteBuffer>

/// Tunnel mode: `-l --tcp-connect` relays TOU connections to a TCP service, `--tcp-listen`
/// carries local TCP connections over TOU. Each pair is relayed on its own, so one that fails
/// never touches the others.
struct TunnelRunner: Sendable {
    let command: CatCommand
    private let nextID = NIOLockedValueBox(0)
    /// Relays in progress, reset when the process is told to stop.
    private let active = ActiveRelays()

    init(command: CatCommand) {
        self.command = command
    }

    func run() async -> ExitCode32 {
        let signalSources = resetOnTermination()
        defer { signalSources.forEach { $0.cancel() } }
        do {
            if let service = command.tcpService {
                return try await serveTOU(relayingTo: service)
            } else if let local = command.tcpListenAddress {
                try await acceptTCP(on: local)
                return .success
            }
            return .usage
        } catch {
            CommandLineTool.printToStandardError("toudtls-cat: \(describe(error))")
            return exitCode(for: error)
        }
    }

    /// SIGTERM and SIGINT reset every relayed connection before exiting: left to the kernel, the
    /// local TCP connections would end with a FIN, which reads as a complete stream, and the TOU
    /// peers would only notice on their next retransmission or idle timeout.
    private func resetOnTermination() -> [DispatchSourceSignal] {
        [SIGTERM, SIGINT].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [active, command] in
                Task {
                    let count = await active.resetAll()
                    if command.verbose {
                        CommandLineTool.printToStandardError("toudtls-cat: terminated; reset \(count) open connection(s)")
                    }
                    exit(128 + number)
                }
            }
            source.resume()
            return source
        }
    }

    private func newID() -> Int {
        nextID.withLockedValue { $0 += 1; return $0 }
    }

    private func log(_ message: String) {
        CommandLineTool.printToStandardError("toudtls-cat: \(message)")
    }

    private func verbose(_ message: @autoclosure () -> String) {
        if command.verbose { log(message()) }
    }

    // MARK: Listener side: TOU in, TCP out

    private func serveTOU(relayingTo service: TCPAddress) async throws -> ExitCode32 {
        let listener = try await TOUListener.bind(host: command.host, port: command.port,
                                                  configuration: Self.relayConfiguration(command), workers: command.workers ?? TOUListener.defaultWorkers)
        if command.verbose {
            // The readiness line scripts wait for, as without a tunnel.
            CommandLineTool.printToStandardError("listening on \(listener.localAddress.ipAndPort)")
            log("relaying each TOU connection to tcp \(service)")
        }
        guard command.keepOpen else {
            for await connection in listener.connections {
                // One connection only: stop admitting others while this one is relayed.
                let closing = Task { try? await listener.close() }
                let end = await relay(accepted: connection, to: service)
                await closing.value
                return end.exitCode
            }
            throw TOUError.closed
        }
        await withDiscardingTaskGroup { group in
            for await connection in listener.connections {
                group.addTask { _ = await relay(accepted: connection, to: service) }
            }
        }
        return .success
    }

    private func relay(accepted connection: TOUConnection, to service: TCPAddress) async -> TunnelEnd {
        let id = newID()
        let started = ContinuousClock.now
        let from = "tou \(connection.remoteAddress.ipAndPort)"
            + (connection.peerCertificateSubject.map { " (\($0))" } ?? "")
        let tcp: TCPStream
        do {
            // On the TOU connection's loop: the relay then moves bytes without a thread switch.
            tcp = try await ClientBootstrap(group: connection.eventLoop)
                .channelOption(.allowRemoteHalfClosure, value: true)
                .channelOption(.tcpOption(.tcp_nodelay), value: 1)
                .connectTimeout(.seconds(10))
                .connect(host: service.host, port: service.port) { channel in
                    channel.eventLoop.makeCompletedFuture { try Self.wrap(channel) }
                }
        } catch {
            // The client's TCP connection ends with a reset: the service is not there.
            await connection.abort()
            log("#\(id) from \(from): cannot connect to tcp \(service): \(describe(error)); reset the TOU connection")
            return .notOpened(.unreachable)
        }
        verbose("#\(id) open: \(from) -> tcp \(service)")
        active.add(id, tcp: tcp.channel, tou: connection)
        let end = await Relay.run(tcp: tcp, tou: connection)
        active.remove(id)
        let summary = "#\(id) closed: \(end.summary(towardTOU: "to tou", towardTCP: "to tcp", since: started))"
        if command.verbose {
            log(summary)
        } else if !command.keepOpen, end.exitCode != .success {
            // Without -k the exit status reports this connection: say why it is not 0.
            log(summary)
        }
        return end
    }

    /// Tunnel connections on SwiftNIO's loops, the TCP channels' own: a relayed chunk then crosses
    /// no thread (SwiftNIO's bootstraps cannot open channels on the native I/O's loops).
    static func relayConfiguration(_ command: CatCommand) -> TOUConfiguration {
        var configuration = command.makeConfiguration()
        configuration.datagramIO = .nio
        return configuration
    }

    // MARK: Client side: TCP in, TOU out

    private func acceptTCP(on local: TCPAddress) async throws {
        let configuration = Self.relayConfiguration(command)
        // Bad trust roots or own certificate fail now (exit 2), not at the first connection.
        try configuration.checkClient()
        let remoteHost = command.host ?? "localhost"
        let remotePort = command.port
        let server: NIOAsyncChannel<TCPStream, Never>
        do {
            server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .serverChannelOption(.backlog, value: 256)
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                .bind(host: local.host, port: local.port) { channel in
                    channel.eventLoop.makeCompletedFuture { try Self.wrap(channel) }
                }
        } catch {
            throw TOUError.socketError("cannot listen on tcp \(local): \(Relay.describe(error))")
        }
        let bound = server.channel.localAddress?.ipAndPort ?? "\(local)"
        if command.verbose {
            CommandLineTool.printToStandardError("listening on tcp \(bound)")
            log("relaying each TCP connection to tou \(remoteHost) \(remotePort)")
        }
        try await server.executeThenClose { inbound in
            try await withThrowingDiscardingTaskGroup { group in
                for try await tcp in inbound {
                    group.addTask {
                        await carry(tcp, to: remoteHost, port: remotePort, configuration: configuration)
                    }
                }
            }
        }
    }

    private func carry(_ tcp: TCPStream, to host: String, port: Int, configuration: TOUConfiguration) async {
        let id = newID()
        let started = ContinuousClock.now
        let from = "tcp \(tcp.channel.remoteAddress?.ipAndPort ?? "?")"
        // One UDP socket per connection: TOUConnection.connect opens its own.
        let connection: TOUConnection
        do {
            connection = try await TOUConnection.connect(host: host, port: port, configuration: configuration)
        } catch {
            await Relay.reset(tcp)
            log("#\(id) from \(from): cannot open a TOU connection to \(host) \(port): \(describe(error)); reset the tcp connection")
            return
        }
        verbose("#\(id) open: \(from) -> tou \(connection.remoteAddress.ipAndPort)"
                + (connection.cipherSuite.map { " with \($0)" } ?? " in plain mode")
                + (connection.isResumed ? ", session resumed" : ""))
        active.add(id, tcp: tcp.channel, tou: connection)
        let end = await Relay.run(tcp: tcp, tou: connection)
        active.remove(id)
        verbose("#\(id) closed: \(end.summary(towardTOU: "to tou", towardTCP: "to tcp", since: started))")
    }

    // MARK: Both

    static func wrap(_ channel: Channel) throws -> TCPStream {
        try TCPStream(wrappingChannelSynchronously: channel,
                      configuration: .init(isOutboundHalfClosureEnabled: true))
    }

    private func describe(_ error: Error) -> String { Relay.describe(error) }
}

/// The pairs being relayed, by connection number.
final class ActiveRelays: Sendable {
    private let relays = NIOLockedValueBox<[Int: (tcp: Channel, tou: TOUConnection)]>([:])

    func add(_ id: Int, tcp: Channel, tou: TOUConnection) {
        relays.withLockedValue { $0[id] = (tcp, tou) }
    }

    func remove(_ id: Int) {
        relays.withLockedValue { $0[id] = nil }
    }

    /// Resets both sides of every pair; returns how many there were.
    func resetAll() async -> Int {
        let all = relays.withLockedValue { $0 }
        for (tcp, tou) in all.values {
            await tou.abort()
            await Relay.resetSocket(tcp)
        }
        return all.count
    }
}

/// How a relayed pair ended, with its bytes each way.
enum TunnelEnd: Sendable {
    /// Both directions carried their FIN and the TOU connection closed cleanly.
    case finished(toTOU: Int, toTCP: Int)
    /// One side failed or was reset; the other was reset in turn.
    case reset(toTOU: Int, toTCP: Int, reason: String, code: ExitCode32)
    /// The far side could not be opened.
    case notOpened(ExitCode32)

    var exitCode: ExitCode32 {
        switch self {
        case .finished: return .success
        case .reset(_, _, _, let code), .notOpened(let code): return code
        }
    }

    func summary(towardTOU: String, towardTCP: String, since start: ContinuousClock.Instant) -> String {
        let elapsed = ContinuousClock.now - start
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let duration = TextFormatting.fixed(seconds, places: 3) + " s"
        switch self {
        case .finished(let toTOU, let toTCP):
            return "\(toTOU) bytes \(towardTOU), \(toTCP) bytes \(towardTCP), \(duration), finished both ways"
        case .reset(let toTOU, let toTCP, let reason, _):
            return "\(toTOU) bytes \(towardTOU), \(toTCP) bytes \(towardTCP), \(duration), reset: \(reason)"
        case .notOpened:
            return "not opened, \(duration)"
        }
    }
}

/// Relays one TCP connection and one TOU connection to each other until both directions end.
enum Relay {
    /// How one direction ended: its peer's FIN, or a failure on the side named.
    private enum DirectionEnd: Sendable {
        case finished(Int)
        case tcpFailed(Int, String, ExitCode32)
        case touFailed(Int, String, ExitCode32)

        var bytes: Int {
            switch self {
            case .finished(let bytes), .tcpFailed(let bytes, _, _), .touFailed(let bytes, _, _): return bytes
            }
        }
    }

    /// Each direction awaits every write before it reads more, so a slow reader on one side
    /// holds back the writer on the other: TOU's send buffer, NIO's channel writability and the
    /// inbound stream's watermarks are the only queues.
    static func run(tcp: TCPStream, tou: TOUConnection) async -> TunnelEnd {
        // TOU reads and writes complete on its loop without a hop when the tasks run there.
        await withTaskExecutorPreference(tou.taskExecutor) {
            await relay(tcp: tcp, tou: tou)
        }
    }

    private static func relay(tcp: TCPStream, tou: TOUConnection) async -> TunnelEnd {
        let channel = tcp.channel
        let ends: (toTOU: DirectionEnd, toTCP: DirectionEnd, firstFailure: DirectionEnd?)
        do {
            ends = try await tcp.executeThenClose { inbound, outbound in
                await withTaskGroup(of: (Bool, DirectionEnd).self) { group in
                    group.addTask {
                        var bytes = 0
                        do {
                            for try await chunk in inbound {
                                bytes += chunk.readableBytes
                                do {
                                    try await tou.write(chunk)
                                } catch {
                                    return (true, touFailure(bytes, error))
                                }
                            }
                        } catch {
                            return (true, tcpFailure(bytes, error))
                        }
                        do {
                            try await tou.finishWriting()
                        } catch {
                            return (true, touFailure(bytes, error))
                        }
                        return (true, .finished(bytes))
                    }
                    group.addTask {
                        var bytes = 0
                        do {
                            for try await chunk in tou.inbound {
                                bytes += chunk.readableBytes
                                do {
                                    try await outbound.write(chunk)
                                } catch {
                                    return (false, tcpFailure(bytes, error))
                                }
                            }
                        } catch {
                            return (false, touFailure(bytes, error))
                        }
                        outbound.finish()
                        return (false, .finished(bytes))
                    }
                    var toTOU: DirectionEnd?
                    var toTCP: DirectionEnd?
                    // The first failure is the cause; the reset it triggers fails the other direction too.
                    var firstFailure: DirectionEnd?
                    while let (isToTOU, end) = await group.next() {
                        if isToTOU { toTOU = end } else { toTCP = end }
                        guard firstFailure == nil else { continue }
                        switch end {
                        case .finished: break
                        case .tcpFailed:
                            firstFailure = end
                            await tou.abort()
                        case .touFailed:
                            firstFailure = end
                            await resetSocket(channel)
                        }
                    }
                    return (toTOU!, toTCP!, firstFailure)
                }
            }
        } catch {
            await tou.abort()
            return .reset(toTOU: 0, toTCP: 0, reason: "tcp: \(describe(error))", code: .other)
        }
        switch ends.firstFailure {
        case .tcpFailed(_, let reason, let code):
            return .reset(toTOU: ends.toTOU.bytes, toTCP: ends.toTCP.bytes, reason: "tcp: \(reason)", code: code)
        case .touFailed(_, let reason, let code):
            return .reset(toTOU: ends.toTOU.bytes, toTCP: ends.toTCP.bytes, reason: "tou: \(reason)", code: code)
        case .finished, nil:
            break
        }
        // Both FINs went through: wait for our data to be acknowledged and the session to end.
        do {
            try await tou.close()
        } catch {
            return .reset(toTOU: ends.toTOU.bytes, toTCP: ends.toTCP.bytes, reason: "tou: \(describe(error))",
                          code: exitCode(for: error))
        }
        return .finished(toTOU: ends.toTOU.bytes, toTCP: ends.toTCP.bytes)
    }

    /// One short clause for a log line: "connection refused", not NIO's nested error dump.
    static func describe(_ error: Error) -> String {
        switch error {
        case let error as TOUError:
            return error.description
        case let error as IOError:
            return String(cString: strerror(error.errnoCode)).lowercased()
        case let error as NIOConnectionError:
            // Several addresses (a name with IPv6 and IPv4): say which failed how.
            if error.connectionErrors.count == 1 { return describe(error.connectionErrors[0].error) }
            if !error.connectionErrors.isEmpty {
                return error.connectionErrors.map { "\($0.target.ipAndPort): \(describe($0.error))" }.joined(separator: ", ")
            }
            if error.dnsAError != nil || error.dnsAAAAError != nil { return "\(error.host) does not resolve" }
            return "no address to connect to"
        case let error as ChannelError:
            if case .connectTimeout = error { return "connection timed out" }
            return "\(error)"
        default:
            return "\(error)"
        }
    }

    private static func touFailure(_ bytes: Int, _ error: Error) -> DirectionEnd {
        .touFailed(bytes, describe(error), exitCode(for: error))
    }

    private static func tcpFailure(_ bytes: Int, _ error: Error) -> DirectionEnd {
        let code: ExitCode32 = (error as? IOError)?.errnoCode == ECONNRESET ? .reset : .other
        return .tcpFailed(bytes, describe(error), code)
    }

    /// Closes with SO_LINGER 0, so the kernel sends RST: the application sees its peer fail,
    /// not a clean end of stream.
    static func resetSocket(_ channel: Channel) async {
        if let provider = channel as? SocketOptionProvider {
            try? await provider.setSoLinger(linger(l_onoff: 1, l_linger: 0)).get()
        }
        try? await channel.close()
    }

    /// Resets a TCP connection that will never be relayed.
    static func reset(_ tcp: TCPStream) async {
        await resetSocket(tcp.channel)
        try? await tcp.executeThenClose { _, _ in }
    }
}
