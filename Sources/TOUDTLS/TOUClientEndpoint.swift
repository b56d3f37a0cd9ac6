import DTLS
import NIOCore

/// One UDP socket that many client connections share, as a listener's socket serves many peers:
/// each `connect` starts a session on it, told apart from the others by its session ID. A client
/// with many connections (a proxy, a load generator) then pays one socket, and per wakeup one
/// `recvmmsg` and one `sendmmsg` for all of them, where `TOUConnection.connect` gives each its
/// own socket and system calls.
///
/// What differs from `TOUConnection.connect`: the socket is bound, not connected to one peer, so
/// the kernel reports no ICMP port unreachable and an attempt to a closed port ends with the
/// handshake timeout; and only addresses of the socket's family are tried (no Happy Eyeballs).
public final class TOUClientEndpoint: Sendable {
    let endpoint: TOUEndpoint
    let configuration: TOUConfiguration
    /// The bound address (the port the kernel picked, with port 0).
    public let localAddress: SocketAddress

    private init(endpoint: TOUEndpoint, configuration: TOUConfiguration, localAddress: SocketAddress) {
        self.endpoint = endpoint
        self.configuration = configuration
        self.localAddress = localAddress
    }

    /// Binds a UDP socket on `host` (an address; an IPv6 one may be in brackets, and then only
    /// IPv6 peers are reachable) and `port` (0: any) for connections made with `configuration`.
    /// - Throws: `TOUError` (configuration, certificates, or the socket).
    public static func bind(host: String = "0.0.0.0", port: Int = 0,
                            configuration: TOUConfiguration) async throws -> TOUClientEndpoint {
        try configuration.validate()
        guard (0...65_535).contains(port) else {
            throw TOUError.invalidConfiguration("port \(port) is outside 0...65535")
        }
        let context: DTLSContext? = configuration.security == .dtls ? try configuration.makeClientContext() : nil
        let address: SocketAddress
        do {
            address = try AddressText.resolve(host, port: port)
        } catch {
            throw TOUError.socketError(error.message)
        }
        let endpoint = TOUEndpoint(loop: TOUConnection.nextLoop(configuration.datagramIO), role: .client,
                                   configuration: configuration, dtlsContext: context, shared: true)
        do {
            let socket = try await TOUListener.bindSocket(endpoint, to: address, fallbackToIPv4: false, shared: false)
            guard let local = socket.localAddress else { throw TOUError.socketError("the socket has no local address") }
            return TOUClientEndpoint(endpoint: endpoint, configuration: configuration, localAddress: local)
        } catch {
            endpoint.closeSocketIfOpen()
            throw error
        }
    }

    /// Connects to `host`:`port` through this endpoint's socket, as `TOUConnection.connect` does
    /// through a socket of its own (see there for `initialData` and cancellation). `host` is a
    /// name or an address of the socket's family.
    /// - Throws: `TOUError` (`.closed` once `close` was called), or `CancellationError`.
    public func connect(host: String, port: Int, initialData: ByteBuffer? = nil) async throws -> TOUConnection {
        try TOUConnection.checkConnect(port: port, initialData: initialData, configuration: configuration)
        try Task.checkCancellation()
        let remote: SocketAddress
        do {
            let family = localAddress.protocol
            guard let address = try AddressText.resolveAll(host, port: port).first(where: { $0.protocol == family }) else {
                let name = family == .inet6 ? "IPv6" : "IPv4"
                throw TOUError.unreachable("\(host) has no \(name) address, and this endpoint's socket "
                                           + "(\(localAddress.ipAndPort)) reaches only \(name) peers")
            }
            remote = address
        } catch let error as AddressText.Failure {
            throw TOUError.unreachable(error.message)
        }
        // A failed attempt ends its session; the socket stays for the others.
        return try await TOUConnection.handshake(on: endpoint, once: endpoint.loop.makeSucceededVoidFuture(),
                                                 to: remote, host: host, port: port, configuration: configuration,
                                                 initialData: initialData) {}
    }

    /// Runs tasks on the endpoint's event loop, where all its connections run: code under
    /// `withTaskExecutorPreference(taskExecutor)` connects, reads and writes without a thread switch.
    public var taskExecutor: any TaskExecutor { endpoint.taskExecutor }

    /// Dropping the endpoint closes it as `close()` does, without waiting: its connections run
    /// on, and the socket closes after the last of them.
    deinit {
        _ = endpoint.stopAcceptingOnLoop()
    }

    /// Connects no more (`connect` throws `TOUError.closed`) and ends attempts still in their
    /// handshakes; returns once the last connection has ended and the socket is closed.
    public func close() async throws {
        try await endpoint.stopAcceptingOnLoop().get()
    }

    /// The socket's counters, including datagrams dropped by reason.
    public var counters: TOUEndpointCounters {
        get async {
            (try? await endpoint.loop.submit { [endpoint] in endpoint.counters }.get()) ?? TOUEndpointCounters()
        }
    }
}
