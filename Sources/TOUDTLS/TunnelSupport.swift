import NIOCore

extension TOUConfiguration {
    /// Reads and checks what a client connection would use (settings, trust roots, own
    /// certificate and key, pins) without connecting. A tool that connects later, once per
    /// incoming request (a tunnel), calls this at start so a bad file fails at once.
    /// - Throws: `TOUError.invalidConfiguration` or `.unreadableFile`.
    public func checkClient() throws(TOUError) {
        try validate()
        if security == .dtls { _ = try makeClientContext() }
    }
}

extension TOUConnection {
    /// The event loop this connection runs on. Channels that exchange data with it (a relayed
    /// TCP connection, say) run with the fewest thread switches when opened on this loop and
    /// driven from tasks under `taskExecutor`.
    public var eventLoop: EventLoop { endpoint.loop }
}
