import NIOCore
import TCPEngine

/// What one simulated application did and saw.
public struct EndpointResult: Sendable {
    /// Bytes the application was scripted to send; nil for an unbounded bulk sender.
    public var bytesToSend: Int?
    public var bytesWritten = 0
    /// Bytes read from the connection (sent by the peer).
    public var bytesReceived = 0
    /// Offset in the received stream of the first byte that differed from what the peer sent.
    public var firstMismatchOffset: Int?
    public var peerFinished = false
    /// Virtual time since the start of the run.
    public var connectedAt: TimeAmount?
    /// When the peer's FIN arrived (every byte before it was read).
    public var peerFinishedAt: TimeAmount?
    public var closeReason: TCPCloseReason?
    public var closedAt: TimeAmount?
    /// The engine's counters at the end of the run (nil if the engine never existed).
    public var stats: TCPStats?
    public var state: TCPState?

    public init(bytesToSend: Int?) { self.bytesToSend = bytesToSend }
}

/// An application on one end: writes its scripted bytes, then finishes writing; reads and
/// verifies everything the peer sends.
struct SimulatedApplication {
    var connection: TCPConnection?
    var result: EndpointResult
    /// Where this side's outgoing stream starts in the pattern, and where the peer's does.
    let sendOrigin: Int
    let receiveOrigin: Int
    let writeChunk: Int
    let readChunk: Int
    let start: NIODeadline
    private var finished = false

    init(bytesToSend: Int?, sendOrigin: Int, receiveOrigin: Int, writeChunk: Int, readChunk: Int, start: NIODeadline) {
        self.result = EndpointResult(bytesToSend: bytesToSend)
        self.sendOrigin = sendOrigin
        self.receiveOrigin = receiveOrigin
        self.writeChunk = max(1, writeChunk)
        self.readChunk = max(1, readChunk)
        self.start = start
    }

    /// Moves data between the application and the engine. Returns true if anything happened
    /// (an event, bytes read), which counts as progress for stall detection.
    mutating func pump(now: NIODeadline) -> Bool {
        // Taken out, not copied, so the engine's buffers stay uniquely referenced (no CoW copies).
        guard var connection = connection.take() else { return false }
        defer { self.connection = connection }
        var progressed = false
        write(into: &connection)
        while let event = connection.pollEvent() {
            progressed = true
            switch event {
            case .connected:
                result.connectedAt = now - start
            case .peerFinished:
                result.peerFinished = true
                result.peerFinishedAt = now - start
            case .closed(let reason):
                result.closeReason = reason
                result.closedAt = now - start
            case .readable, .writable:
                break
            }
        }
        while let chunk = connection.read(maximumBytes: readChunk) {
            progressed = true
            if result.firstMismatchOffset == nil,
                !PayloadPattern.matches(chunk, origin: receiveOrigin, position: result.bytesReceived)
            {
                result.firstMismatchOffset = result.bytesReceived
            }
            result.bytesReceived += chunk.readableBytes
        }
        // Reading may have freed window and events may have freed send space.
        write(into: &connection)
        return progressed
    }

    private mutating func write(into connection: inout TCPConnection) {
        guard !finished else { return }
        while connection.sendBufferFreeSpace > 0 {
            var length = min(writeChunk, connection.sendBufferFreeSpace)
            if let total = result.bytesToSend { length = min(length, total - result.bytesWritten) }
            guard length > 0 else { break }
            let chunk = PayloadPattern.slice(origin: sendOrigin, position: result.bytesWritten, length: length)
            let accepted = connection.write(chunk)
            result.bytesWritten += accepted
            if accepted < chunk.readableBytes { break }
        }
        if let total = result.bytesToSend, result.bytesWritten >= total {
            connection.finishWriting()
            finished = true
        }
    }

    /// Runs `body` on the engine in place, if there is one.
    mutating func withConnection(_ body: (inout TCPConnection) -> Void) {
        guard var taken = connection.take() else { return }
        body(&taken)
        connection = taken
    }

    func snapshot() -> EndpointResult {
        var snapshot = result
        snapshot.stats = connection?.stats
        snapshot.state = connection?.state
        return snapshot
    }
}
