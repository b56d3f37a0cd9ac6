import NIOCore

/// What a NIO channel built on a connection (TOUNIO's `TOUChannel`) hears from the connection's
/// core, on the connection's event loop, in place of the promises `TOUConnection`'s async API
/// waits on. Reading and writing go through the same core, so both share one implementation of
/// the stream, its backpressure and its closing.
package protocol TOUConnectionObserver: AnyObject {
    /// Bytes, the end of the stream or a failure may be ready for `readOnLoop`.
    func connectionReadable()
    /// Queued writes shrank: TCP took bytes from them (see `queuedWriteBytes`).
    func connectionWritesDrained()
    /// The session ended: cleanly (both FINs exchanged and acknowledged) or with the error.
    /// Bytes may still wait to be read.
    func connectionEnded(_ outcome: Result<Void, TOUError>)
}

/// The synchronous interface of a connection for code already on its event loop (TOUNIO). Each
/// call drives the session afterwards (datagrams out, timer re-armed), as the async API does.
extension TOUConnection {
    /// On the loop. Held weakly; a connection that has already ended tells a new observer at once.
    package func setObserverOnLoop(_ observer: (any TOUConnectionObserver)?) {
        core.observer = observer
        if let observer, let outcome = core.outcome { observer.connectionEnded(outcome) }
    }

    /// On the loop: up to `maximumBytes` in-order bytes, nil for the end of the stream, or the
    /// failure; nil if nothing is ready yet (the observer hears when something is). Taking bytes
    /// out of TCP is what reopens its receive window: not reading holds the peer back.
    package func readOnLoop(maximumBytes: Int) -> Result<ByteBuffer?, TOUError>? {
        var result: Result<ByteBuffer?, TOUError>?
        endpoint.withCore(core) { core, now in result = core.readWithoutWaiting(maximumBytes: maximumBytes, now: now) }
        return result
    }

    /// On the loop: queues `writes` in order behind what already waits; each promise completes once
    /// TCP has taken its bytes (or fails with the connection). The segments leave together at the end.
    package func writeOnLoop<Writes: Sequence>(_ writes: Writes) where Writes.Element == (ByteBuffer, EventLoopPromise<Void>?) {
        endpoint.withCore(core) { core, now in
            for (buffer, promise) in writes {
                core.write(buffer, promise: promise, now: now, transmit: false)
            }
            core.transmit(now: now)
        }
    }

    /// Bytes written but not yet taken by TCP (whose send buffer is full).
    package var queuedWriteBytes: Int { core.pendingWriteBytes }

    /// Bytes TCP holds that nobody has read yet (at most its receive buffer).
    package var bufferedInboundBytes: Int { core.session.readableBytes }

    /// TCP's receive buffer as it is now (auto-tuning grows it from the configured size).
    package var receiveBufferLimit: Int { core.session.tcp?.stats.receiveBufferSize ?? 0 }

    /// On the loop: FIN after everything queued; reading goes on.
    package func finishWritingOnLoop() {
        endpoint.withCore(core) { core, now in core.finishWriting(now: now) }
    }

    /// On the loop: `close()` without waiting. FIN after what is queued, inbound bytes discarded,
    /// reset after `configuration.closeTimeout`; `promise` (if any) completes with the outcome.
    package func closeOnLoop(promise: EventLoopPromise<Void>?) {
        let endpoint = self.endpoint
        endpoint.withCore(core) { core, now in
            core.close(promise: promise, timeout: endpoint.configuration.closeTimeout, loop: endpoint.loop, now: now) {
                endpoint.withCore(core) { core, now in
                    core.session.abort(now: now, error: .timedOut("the peer did not finish closing"))
                }
            }
        }
    }

    /// The configuration's TCP_NODELAY, fixed for the connection's life.
    package var noDelay: Bool { endpoint.configuration.noDelay }
}
