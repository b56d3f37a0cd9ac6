import NIOCore

/// What happened on a `DTLSConnection`, in order; fetched with `pollEvent()`.
public enum DTLSEvent: Sendable, Equatable {
    case handshakeCompleted
    case closeNotifyReceived
    case failed(DTLSError)
}

/// Life cycle of a `DTLSConnection`.
///
/// `.closed` means a close_notify was sent or received. After only *receiving* one, application
/// data can still be written (OpenSSL allows it); after sending one, it cannot.
public enum DTLSConnectionState: Sendable, Equatable {
    case handshaking
    case established
    case closed
    case failed
}

/// The outcome of `DTLSContext.listen`.
public enum DTLSListenResult {
    /// Send this HelloVerifyRequest back to the datagram's source; no state was kept.
    case helloVerifyRequest(ByteBuffer)
    /// The ClientHello carried an acceptable cookie: a server connection that has processed it.
    /// Its first flight (or, if it already failed, its alert) is waiting in `pollDatagram()`.
    case accepted(DTLSConnection)
    /// Not a usable ClientHello; nothing to send.
    case dropped(String)
}
