import DatagramIO
import NIOCore
import NIOPosix

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
    /// A SwiftNIO event loop for channels that exchange data with this connection (a relayed TCP
    /// connection, say). With `TOUConfiguration.datagramIO` `.nio` it is the connection's own
    /// loop: such channels, driven from tasks under `taskExecutor`, then move data without a
    /// thread switch. With `.native` (the default) the connection runs on a loop SwiftNIO's
    /// bootstraps do not accept, so this is one of SwiftNIO's own, and data crosses threads.
    public var eventLoop: EventLoop {
        endpoint.loop is IOLoop ? MultiThreadedEventLoopGroup.singleton.next() : endpoint.loop
    }
}
