import DTLS
import NIOCore

extension TOUConnection {
    /// RFC 8305's recommended Connection Attempt Delay.
    static let attemptDelay: TimeAmount = .milliseconds(250)

    /// Happy Eyeballs (RFC 8305) over `addresses`, already in the order to try: one attempt
    /// (DTLS and TCP handshakes) at a time, the next `attemptDelay` after the last began or at
    /// once when one fails; the first to complete wins, and the others are cancelled (an attempt
    /// abandoned mid-handshake leaves no socket; one that completed too is reset). Throws the
    /// most telling failure once all have failed: an authentication failure before others.
    ///
    /// `initialData` rides on the first attempt's SYN only: a SYN's data reaches the server's
    /// application even if the client abandons that attempt a moment later, so a request on every
    /// attempt's SYN would often be served twice. A later attempt that wins gets it as its first
    /// write (a duplicate remains possible only if the first attempt's SYN reached the server
    /// before a later attempt won, as with TCP Fast Open).
    static func connect(to addresses: [SocketAddress], host: String, port: Int, configuration: TOUConfiguration,
                        context: DTLSContext?, initialData: ByteBuffer?,
                        attemptDelay: TimeAmount = attemptDelay, loop: EventLoop? = nil) async throws -> TOUConnection {
        if addresses.count == 1 {
            return try await attempt(addresses[0], host: host, port: port, configuration: configuration,
                                     context: context, initialData: initialData, loop: loop)
        }
        enum Outcome: Sendable {
            /// `first`: the first attempt, which carried `initialData` on its SYN.
            case connected(TOUConnection, first: Bool)
            case failed(any Error)
            /// The delay after attempt `index` began has passed.
            case delayPassed(index: Int)
        }
        return try await withThrowingTaskGroup(of: Outcome.self) { group in
            var started = 0
            var running = 0
            var failures: [any Error] = []
            func startNext() {
                let index = started
                let remote = addresses[index]
                let data = index == 0 ? initialData : nil
                started += 1
                running += 1
                group.addTask {
                    do {
                        return .connected(try await attempt(remote, host: host, port: port, configuration: configuration,
                                                            context: context, initialData: data, loop: loop),
                                          first: index == 0)
                    } catch {
                        return .failed(error)
                    }
                }
                if started < addresses.count {
                    group.addTask {
                        try? await Task.sleep(nanoseconds: UInt64(max(0, attemptDelay.nanoseconds)))
                        return .delayPassed(index: index)
                    }
                }
            }
            /// Cancels what is left; attempts that completed meanwhile are reset, not leaked.
            func abandonTheRest() async throws {
                group.cancelAll()
                while let other = try await group.next() {
                    if case .connected(let loser, _) = other { await loser.abort() }
                }
            }
            startNext()
            while let outcome = try await group.next() {
                switch outcome {
                case .connected(let winner, let first):
                    try await abandonTheRest()
                    if !first, let initialData, initialData.readableBytes > 0 {
                        do {
                            try await winner.write(initialData)
                        } catch {
                            await winner.abort()
                            throw error
                        }
                    }
                    return winner
                case .failed(let error):
                    running -= 1
                    failures.append(error)
                    if Task.isCancelled {
                        try await abandonTheRest()
                        throw CancellationError()
                    }
                    if started < addresses.count {
                        startNext()
                    } else if running == 0 {
                        group.cancelAll()
                        throw failures.first { ($0 as? TOUError)?.isAuthenticationFailure == true } ?? failures[0]
                    }
                case .delayPassed(let index):
                    // Only the delay of the latest attempt starts another.
                    if index == started - 1, started < addresses.count, !Task.isCancelled { startNext() }
                }
            }
            throw CancellationError()
        }
    }
}
