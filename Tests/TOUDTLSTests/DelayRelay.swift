import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A UDP relay between one client and a listener on loopback that holds every datagram for the same
/// fixed delay each way (a path whose round trip is twice that) and records what it forwarded, when,
/// and on which one-way trip ("leg") of the exchange.
///
/// The leg is counted causally, like a Lamport clock: a datagram arriving from one side is on the leg
/// after the last one the relay had delivered to that side (the client's first datagrams are on leg 1).
/// With a delay far above CPU time that is the number of one-way trips on the path that led to it,
/// whatever the machine's load, so a test can count round trips without asserting on time.
final class DelayRelay: @unchecked Sendable {
    struct Forwarded: Sendable {
        var toClient: Bool
        /// UDP payload bytes.
        var size: Int
        /// Monotonic nanoseconds (`DelayRelay.now()`) when the relay received and forwarded it.
        var arrived: UInt64
        var forwarded: UInt64
        var leg: Int
    }

    private struct Held {
        var due: UInt64
        var bytes: [UInt8]
        var arrived: UInt64
        var leg: Int
    }

    let delayNanoseconds: UInt64
    let listenerPort: UInt16
    private let clientFacing: RawUDPSocket
    private let serverFacing: RawUDPSocket
    private let log = LockedBox<[Forwarded]>([])
    private let stopped = LockedBox(false)
    private var thread: HelperThread?

    /// The port a client connects to.
    var port: UInt16 { clientFacing.port }
    /// Everything forwarded so far, in the order it was forwarded.
    var forwarded: [Forwarded] { log.current }

    init(listenerPort: UInt16, oneWayDelayMilliseconds: Int) throws {
        delayNanoseconds = UInt64(oneWayDelayMilliseconds) * 1_000_000
        self.listenerPort = listenerPort
        clientFacing = try RawUDPSocket(receiveBuffer: 1 << 20)
        serverFacing = try RawUDPSocket(receiveBuffer: 1 << 20)
        thread = HelperThread(name: "delay-relay") { [self] in run() }
    }

    /// The relay's clock (CLOCK_MONOTONIC), for a test to place its own observations among the records.
    static func now() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
    }

    /// Ends the relay; its thread closes the sockets it polls as it leaves.
    func stop() {
        stopped.withLock { $0 = true }
        thread?.join()
        thread = nil
    }

    private func run() {
        // One delay for every datagram: each direction's queue stays in arrival order.
        var towardServer: [Held] = []
        var towardClient: [Held] = []
        var clientPort: UInt16?
        var lastLegDelivered = (client: 0, server: 0)
        while !stopped.current {
            let current = Self.now()
            while let first = towardServer.first, first.due <= current {
                towardServer.removeFirst()
                serverFacing.send(first.bytes, toPort: listenerPort)
                lastLegDelivered.server = max(lastLegDelivered.server, first.leg)
                record(first, toClient: false, at: current)
            }
            while let first = towardClient.first, first.due <= current {
                towardClient.removeFirst()
                if let clientPort { clientFacing.send(first.bytes, toPort: clientPort) }
                lastLegDelivered.client = max(lastLegDelivered.client, first.leg)
                record(first, toClient: true, at: current)
            }
            let nextDue = [towardServer.first?.due, towardClient.first?.due].compactMap { $0 }.min()
            let wait = nextDue.map { $0 > current ? Int32(min(20, ($0 - current + 999_999) / 1_000_000)) : 0 } ?? 20
            let ready = pollReadable([clientFacing, serverFacing], milliseconds: wait)
            let arrived = Self.now()
            if ready[0] {
                while let (bytes, from) = clientFacing.receive(maximum: 65_536) {
                    clientPort = from
                    towardServer.append(Held(due: arrived + delayNanoseconds, bytes: bytes, arrived: arrived,
                                             leg: lastLegDelivered.client + 1))
                }
            }
            if ready[1] {
                while let (bytes, _) = serverFacing.receive(maximum: 65_536) {
                    towardClient.append(Held(due: arrived + delayNanoseconds, bytes: bytes, arrived: arrived,
                                             leg: lastLegDelivered.server + 1))
                }
            }
        }
        clientFacing.close()
        serverFacing.close()
    }

    private func record(_ held: Held, toClient: Bool, at time: UInt64) {
        log.withLock {
            $0.append(Forwarded(toClient: toClient, size: held.bytes.count, arrived: held.arrived, forwarded: time,
                                leg: held.leg))
        }
    }
}
