import DequeModule
import NIOConcurrencyHelpers
import NIOCore

/// The event-loop side of one connection: its session plus the application's waiting reads,
/// writes and closes. Touched on the endpoint's loop only.
///
/// `@exclusivity(unchecked)` marks the stored properties touched for every datagram: no access
/// to them overlaps an inout access (the debug-build checks found none), and the runtime checks
/// took about 5% of a bulk receiver's CPU (perf: their share fell from 9.6% to 4.8%).
final class ConnectionCore: @unchecked Sendable {  // confined to the endpoint's loop
    let session: TOUSession
    /// Listener sessions are reachable by (address, port, S) until established.
    var admissionKey: PeerKey?
    /// The session's timer: a scheduled callback (no promise per arming), reusing one handler.
    @exclusivity(unchecked) var timer: NIOScheduledCallback?
    var timerHandler: SessionTimer?
    var knownAddressChanges = 0
    @exclusivity(unchecked) var timerDeadline: NIODeadline?
    /// Queued on the endpoint to answer at the end of the current read batch.
    @exclusivity(unchecked) var awaitingBatchEnd = false

    var connectPromise: EventLoopPromise<TOUConnection>?
    @exclusivity(unchecked) private var pendingWrites: Deque<(buffer: ByteBuffer, promise: EventLoopPromise<Void>?)> = []
    /// Bytes in `pendingWrites`: what waits for room in TCP's send buffer (a channel's writability).
    @exclusivity(unchecked) private(set) var pendingWriteBytes = 0
    /// A NIO channel built on this connection (TOUNIO): told when to read, when writes drained and
    /// when the connection ended, instead of waiting on promises.
    weak var observer: (any TOUConnectionObserver)?
    @exclusivity(unchecked) private var pendingRead: PendingRead?
    /// Read on every drive (`completeCloseIfLingering`); completed from a copy, never while
    /// being appended to.
    @exclusivity(unchecked) private var closePromises: [EventLoopPromise<Void>] = []
    /// `waitUntilEnded` callers: completed with the outcome, whoever ends the connection.
    private var endPromises: [EventLoopPromise<Void>] = []
    private var closeTimer: Scheduled<Void>?
    @exclusivity(unchecked) private var writeSideClosed = false
    @exclusivity(unchecked) private var finishAfterPendingWrites = false
    @exclusivity(unchecked) private var peerFinished = false
    @exclusivity(unchecked) private var discardInbound = false
    @exclusivity(unchecked) private(set) var outcome: Result<Void, TOUError>?

    /// Largest chunk handed to one `inbound` iteration.
    static let readChunk = 1 << 20

    /// Readable from any thread for `TOUConnection.remoteAddress`.
    let peerAddress: NIOLockedValueBox<SocketAddress>

    init(session: TOUSession) {
        self.session = session
        self.peerAddress = NIOLockedValueBox(session.peerAddress)
    }

    // MARK: Application requests (on the loop)

    /// `transmit: false` leaves what TCP took unsent until `transmit(now:)`, so that a batch of
    /// writes (a channel's flush) leaves as full segments.
    func write(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?, now: NIODeadline, transmit: Bool = true) {
        var rest = buffer
        if let result = writeWithoutWaiting(&rest, now: now, transmit: transmit) {
            switch result {
            case .success: promise?.succeed(())
            case .failure(let error): promise?.fail(error)
            }
            return
        }
        pendingWrites.append((rest, promise))
        pendingWriteBytes += rest.readableBytes
        serviceWrites(now: now)
    }

    /// Sends what writes with `transmit: false` left in TCP.
    func transmit(now: NIODeadline) {
        session.pump(now: now)
    }

    /// The fast path of a write from the loop itself: takes all of `buffer` if nothing waits
    /// ahead of it and TCP has room. Nil means it must wait: the rest is left in `buffer`.
    func writeWithoutWaiting(_ buffer: inout ByteBuffer, now: NIODeadline, transmit: Bool = true) -> Result<Void, TOUError>? {
        if let error = failureForWrites { return .failure(error) }
        guard pendingWrites.isEmpty else { return nil }
        guard buffer.readableBytes > 0 else { return .success(()) }
        let taken = session.write(buffer, now: now, transmit: transmit)
        if taken >= buffer.readableBytes { return .success(()) }
        buffer.moveReaderIndex(forwardBy: taken)
        return nil
    }

    /// The fast path of a read from the loop itself: bytes already here, or the end, without waiting.
    /// Nil means nothing is ready yet.
    func readWithoutWaiting(maximumBytes: Int = readChunk, now: NIODeadline) -> Result<ByteBuffer?, TOUError>? {
        guard pendingRead == nil, !discardInbound else { return nil }
        return readyRead(maximumBytes: maximumBytes, now: now)
    }

    /// What a read gets now: bytes, the end of the stream (nil), or the failure; nil if it must wait.
    private func readyRead(maximumBytes: Int = readChunk, now: NIODeadline) -> Result<ByteBuffer?, TOUError>? {
        if let data = session.read(maximumBytes: maximumBytes, now: now) { return .success(data) }
        if peerFinished || isCleanlyFinished { return .success(nil) }
        if case .failure(let error) = outcome { return .failure(error) }
        return nil
    }

    func finishWriting(now: NIODeadline) {
        guard !writeSideClosed else { return }
        writeSideClosed = true
        if pendingWrites.isEmpty {
            session.finishWriting(now: now)
        } else {
            finishAfterPendingWrites = true
        }
    }

    func read(promise: EventLoopPromise<ByteBuffer?>, now: NIODeadline) {
        read(.promise(promise), now: now)
    }

    /// A read from a task already on the loop: its continuation waits here, with no promise, future
    /// or callback between the receive path and the task. `token` names it for `cancel`.
    func read(continuation: UnsafeContinuation<ByteBuffer?, Error>, token: WaiterToken, now: NIODeadline) {
        read(.continuation(continuation, token), now: now)
    }

    /// The task waiting on `waiter` (a write's, read's or close's promise future, or a read's
    /// token) was cancelled: if that operation still waits, it ends with `CancellationError` and
    /// the connection is reset (RST to the peer; other operations then fail with
    /// `TOUError.closed`), since a partly written or partly read stream cannot be resumed. An
    /// operation that already completed is left alone.
    func cancel(_ waiter: ObjectIdentifier, now: NIODeadline) {
        if let index = pendingWrites.firstIndex(where: { $0.promise.map { ObjectIdentifier($0.futureResult) } == waiter }) {
            let write = pendingWrites.remove(at: index)
            pendingWriteBytes -= write.buffer.readableBytes
            write.promise?.fail(CancellationError())
        } else if let read = pendingRead, read.identifier == waiter {
            pendingRead = nil
            read.complete(.failure(CancellationError()))
        } else if let index = closePromises.firstIndex(where: { ObjectIdentifier($0.futureResult) == waiter }) {
            closePromises.remove(at: index).fail(CancellationError())
        } else {
            return
        }
        session.abort(now: now, error: .closed)
    }

    private func read(_ waiter: PendingRead, now: NIODeadline) {
        if pendingRead != nil {
            let error = TOUError.protocolError("only one task may read a connection's inbound bytes at a time")
            waiter.complete(.failure(error))
            return
        }
        pendingRead = waiter
        serviceRead(now: now)
    }

    /// Graceful close: FIN after what is queued, drop further inbound bytes, and complete once the
    /// session has ended under the closing rules; after `timeout` the connection is reset.
    func close(promise: EventLoopPromise<Void>?, timeout: TimeAmount, loop: EventLoop,
               now: NIODeadline, onTimeout: @escaping () -> Void) {
        if let outcome {
            promise?.completeWith(outcome.mapError { $0 as Error })
            return
        }
        if let promise { closePromises.append(promise) }
        discardInbound = true
        finishWriting(now: now)
        serviceRead(now: now)
        if closeTimer == nil {
            closeTimer = loop.assumeIsolated().scheduleTask(in: timeout) { onTimeout() }
        }
        completeCloseIfLingering()
    }

    /// A close is complete once TCP is in TIME-WAIT: all we sent is acknowledged and the peer's
    /// stream has ended. The session lingers on by itself to acknowledge a resent FIN and to
    /// trade close_notify (the closing rules); nobody needs to wait for that.
    func completeCloseIfLingering() {
        guard !closePromises.isEmpty, session.tcp?.state == .timeWait else { return }
        closeTimer?.cancel()
        closeTimer = nil
        for promise in closePromises { promise.succeed(()) }
        closePromises.removeAll()
    }

    /// Completes `promise` with the outcome once the connection has ended (at once if it has).
    func whenEnded(_ promise: EventLoopPromise<Void>) {
        if let outcome {
            promise.completeWith(outcome.mapError { $0 as Error })
        } else {
            endPromises.append(promise)
        }
    }

    // MARK: Session events

    func handle(_ event: SessionEvent, now: NIODeadline) {
        switch event {
        case .established:
            break  // the endpoint creates the public connection
        case .readable:
            serviceRead(now: now)
            observer?.connectionReadable()
        case .writable:
            serviceWrites(now: now)
        case .peerFinished:
            peerFinished = true
            serviceRead(now: now)
            observer?.connectionReadable()
        case .finished(let error):
            finish(error.map { .failure($0) } ?? .success(()), now: now)
        }
    }

    private func finish(_ result: Result<Void, TOUError>, now: NIODeadline) {
        guard outcome == nil else { return }
        outcome = result
        closeTimer?.cancel()
        closeTimer = nil
        let writeError = failureForWrites ?? .closed
        pendingWriteBytes = 0
        while let (_, promise) = pendingWrites.popFirst() {
            promise?.fail(writeError)
        }
        serviceRead(now: now)
        for promise in closePromises {
            promise.completeWith(result.mapError { $0 as Error })
        }
        closePromises.removeAll()
        for promise in endPromises {
            promise.completeWith(result.mapError { $0 as Error })
        }
        endPromises.removeAll()
        if let connectPromise {
            self.connectPromise = nil
            connectPromise.fail(result.failureValue ?? .closed)
        }
        observer?.connectionEnded(result)
    }

    private var isCleanlyFinished: Bool {
        if case .success = outcome { return true }
        return false
    }

    private var failureForWrites: TOUError? {
        if case .failure(let error) = outcome { return error }
        if outcome != nil || writeSideClosed { return .closed }
        return nil
    }

    private func serviceWrites(now: NIODeadline) {
        let before = pendingWriteBytes
        while var head = pendingWrites.first {
            let taken = session.write(head.buffer, now: now)
            pendingWriteBytes -= min(taken, head.buffer.readableBytes)
            if taken >= head.buffer.readableBytes {
                pendingWrites.removeFirst()
                head.promise?.succeed(())
                continue
            }
            head.buffer.moveReaderIndex(forwardBy: taken)
            pendingWrites[pendingWrites.startIndex] = head
            break
        }
        if pendingWrites.isEmpty && finishAfterPendingWrites {
            finishAfterPendingWrites = false
            session.finishWriting(now: now)
        }
        if pendingWriteBytes < before { observer?.connectionWritesDrained() }
    }

    private func serviceRead(now: NIODeadline) {
        if discardInbound {
            while session.read(maximumBytes: Self.readChunk, now: now) != nil {}
        }
        guard let waiter = pendingRead, let result = readyRead(now: now) else { return }
        pendingRead = nil
        waiter.complete(result.mapError { $0 as Error })
    }
}

/// Who waits for a read: a promise (a caller off the loop) or a task's continuation (on the loop).
enum PendingRead {
    case promise(EventLoopPromise<ByteBuffer?>)
    case continuation(UnsafeContinuation<ByteBuffer?, Error>, WaiterToken)

    func complete(_ result: Result<ByteBuffer?, Error>) {
        switch self {
        case .promise(let promise): promise.completeWith(result)
        case .continuation(let continuation, _): continuation.resume(with: result)
        }
    }

    /// What a cancellation names this read by.
    var identifier: ObjectIdentifier {
        switch self {
        case .promise(let promise): return ObjectIdentifier(promise.futureResult)
        case .continuation(_, let token): return ObjectIdentifier(token)
        }
    }
}

/// Names a waiting read that has no promise, for cancellation.
final class WaiterToken: Sendable {}

/// Fires a session's timer on the endpoint's loop; one per connection, reused for every arming.
final class SessionTimer: NIOScheduledCallbackHandler {
    private weak var core: ConnectionCore?
    private let fire: (ConnectionCore) -> Void

    init(core: ConnectionCore, fire: @escaping (ConnectionCore) -> Void) {
        self.core = core
        self.fire = fire
    }

    func handleScheduledCallback(eventLoop: some EventLoop) {
        if let core { fire(core) }
    }
}

extension Result {
    var failureValue: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}
